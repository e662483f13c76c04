"""Entry point: ``python -m runner [overrides]`` (Hydra). Thin on purpose: configure logging,
compose, hand the config to ``run.execute``; everything else lives there."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import List

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner import logs
from runner.schema import register_configs

PROCESS_START = time.time()
_exit_codes: List[int] = []


def _process_start() -> float:
    try:  # the interpreter's own start, so the overhead figure includes imports
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return PROCESS_START


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


# An absolute path: under `python -m` Hydra would otherwise look for a Python package "conf".
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _job(cfg: DictConfig) -> None:
    from runner.run import execute

    # The first job's clock starts with the interpreter; a multirun's later jobs with themselves.
    started = _process_start() if not _exit_codes else time.time()
    code = execute(cfg, Path(HydraConfig.get().runtime.output_dir), started)
    _exit_codes.append(code)
    if HydraConfig.get().mode is RunMode.RUN:
        sys.exit(code)


def main() -> None:
    logs.configure()
    register_configs()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        _job()
    except SystemExit as e:
        # Hydra exits 1 when it cannot compose the config (unknown key, bad value): that is
        # bad input, which this tool answers with 2. Our own codes pass through untouched.
        if e.code == 1 and not _exit_codes:
            sys.exit(2)
        raise
    # multirun: every point ran; the sweep's code is its worst point's
    sys.exit(max(_exit_codes, default=0))
