"""The overhead clock starts with the runner's own code, not with the process: a wrapper that
works before it execs Python (a virtual-environment set-up) is not the runner's overhead."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_wrapper_that_sleeps_before_exec_is_not_counted(tmp_path):
    stamp = tmp_path / "before-exec"
    runner = shlex.join(
        [
            sys.executable,
            "-m",
            "runner",
            "mode=plan",
            "hw=pcie-2gpu",
            "model=llama3-8b",
            f"hydra.run.dir={tmp_path}/run",
        ]
    )
    # The same process throughout (exec): its creation time is before the sleep.
    wrapper = f"sleep 5; date +%s.%N > {shlex.quote(str(stamp))}; exec {runner}"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(["sh", "-c", wrapper], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    ended = time.time()
    assert out.returncode == 0, out.stderr
    before_exec = float(stamp.read_text())
    total = json.loads((tmp_path / "run" / "manifest.json").read_text())["timings"]["total_s"]
    # The clock's zero is total_s before the run finished, and the run finished before `ended`:
    # a zero at or after the exec keeps total_s within [exec, ended]; a zero at the process's
    # creation would add the 5 s sleep.
    assert total <= ended - before_exec + 0.001, (total, ended - before_exec)
