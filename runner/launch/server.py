"""Starting vLLM for a LaunchSpec, and the facts gathered while it loads.

The runtime-facts query (runner/preflight/runtime.py: versions, torch's CUDA and NCCL) and the
topology matrix (the probe's ``nvidia-smi topo -m``) are manifest-only: they are asked after
the spawn, while vLLM loads, so they never delay it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from runner import logs
from runner.launch import process
from runner.launch.pyenv import module_argv, with_runner_path
from runner.launch.spec import LaunchSpec
from runner.record.redact import redact_argv

log = logs.get("runner")


@dataclass(frozen=True)
class Launched:
    server: process.Server
    overhead_before_spawn_s: float  # from the interpreter's start: what the runner costs
    spawn_s: float  # from the run's start


def start_server(spec: LaunchSpec, run_dir: Path, echo: bool, process_start: float, run_start: float) -> Launched:
    env = {**os.environ, **spec.env}
    overhead = round(time.time() - process_start, 3)
    server = process.Server(spec.argv, env, Path(run_dir) / "vllm.log", echo=echo)
    spawned = round(time.time() - run_start, 3)
    log.info("vllm started", pid=server.pid, log=str(Path(run_dir) / "vllm.log"), argv=" ".join(redact_argv(spec.argv)))
    return Launched(server, overhead, spawned)


class RuntimeFacts:
    """``python -m runner.preflight.runtime`` under the vLLM interpreter, started now, read later."""

    def __init__(self, spec: LaunchSpec):
        env = with_runner_path({**os.environ, **spec.env})
        self._proc: Optional[subprocess.Popen] = subprocess.Popen(
            module_argv(spec.python, "runner.preflight.runtime"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._facts: Dict[str, Any] = {}

    def collect(self, timeout: float = 60) -> Dict[str, Any]:
        """Its answer (once; later calls return the same); an error is recorded, never raised:
        versions are informative and never fail a run."""
        if self._proc is None:
            return self._facts
        try:
            out, _ = self._proc.communicate(timeout=timeout)
            self._facts = json.loads(out.strip().splitlines()[-1])
        except Exception as e:
            self._facts = {"runtime_probe_error": repr(e)}
            self._proc.kill()
        self._proc = None
        return self._facts

    @property
    def facts(self) -> Dict[str, Any]:
        """What it answered, when collected; nothing before."""
        return self._facts
