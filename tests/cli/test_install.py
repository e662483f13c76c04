"""The product as installed: tools/check_wheel.sh builds the wheel, installs it into a fresh
virtual environment (no editable install, no vLLM), and from another directory plans a team
recipe on a team hardware profile with the ``vllm-tp-runner`` console script. Needs pip's
index for the light dependencies, so it runs in the slow tier with the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_the_wheel_installs_and_plans_a_team_recipe_from_elsewhere(tmp_path):
    # nothing of this checkout on the import path: the installed wheel must stand alone
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHON"] = sys.executable
    out = subprocess.run(
        ["bash", str(REPO / "tools" / "check_wheel.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "the installed wheel planned the team recipe on the team profile" in out.stdout
