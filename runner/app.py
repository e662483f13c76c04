"""Entry point: ``python -m runner [overrides]`` (Hydra). Thin on purpose: configure logging,
compose, hand the config to ``run.execute``; everything else lives there."""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import List

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner import logs
from runner.config import hydra_startup
from runner.config.schema import register_configs

# Shipped inside the package, so an installed wheel has its configs. An absolute path: under
# `python -m` Hydra would otherwise look for a Python package "conf". A team's own directory
# is added on top with Hydra's --config-dir (docs/team-config.md).
CONF_DIR = str(Path(__file__).resolve().parent / "conf")
# runner.record.replay.ARG: that module is imported only when the command line replays a run
REPLAY_ARG = "replay="
# Modes that plan (and check the machine) and exit: no collection needed before the process ends.
PLAN_ONLY = ("plan", "doctor")
_exit_codes: List[int] = []
_job_started = False


class Interrupted(KeyboardInterrupt):
    """SIGTERM, delivered the way Ctrl-C is, so one code path stops vLLM for both."""

    signal_name = "SIGTERM"
    exit_code = 128 + signal.SIGTERM


def _process_start() -> float:
    # runner/__init__'s import, not the process's creation: a shell that sets up a virtual
    # environment and then execs Python would put that set-up into the runner's overhead.
    from runner import STARTED

    return STARTED


def _sigterm(signum, frame):
    raise Interrupted()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _job(cfg: DictConfig) -> None:
    global _job_started
    _job_started = True
    from runner.pipeline import execute

    # The first job's clock starts with the runner's code; a multirun's later jobs with themselves.
    started = _process_start() if not _exit_codes else time.time()
    sweep = HydraConfig.get().mode is RunMode.MULTIRUN
    if sweep or getattr(cfg.mode, "value", cfg.mode) not in PLAN_ONLY:
        gc.enable()  # a launch, a serve, a sweep's many points: collected as usual from here
    code = execute(cfg, Path(HydraConfig.get().runtime.output_dir), started, sweep=sweep)
    _exit_codes.append(code)
    if HydraConfig.get().mode is RunMode.RUN:
        sys.exit(code)


def _expand_replay() -> None:
    from runner.record import replay

    try:
        sys.argv[1:], notes = replay.expand_argv(sys.argv[1:])
    except replay.BadReplay as exc:
        from runner.pipeline import reject_before_compose

        sys.exit(reject_before_compose(exc, sys.argv[1:]))
    for note in notes:
        print(note, file=sys.stderr)


def main() -> None:
    # Start-up allocates a lot (imports, Hydra's config nodes, which hold cycles through their
    # parents) and frees little: the cyclic collector's passes were ~6 % of mode=plan's CPU time.
    # Off until the job knows it is more than one plan (_job), which then turns it back on.
    gc.disable()
    logs.configure()
    hydra_startup.install(sys.argv[1:])  # before anything is registered or composed
    register_configs()
    signal.signal(signal.SIGTERM, _sigterm)
    # Started in the background by a shell, Python inherits SIGINT ignored; kill -INT must
    # still stop vLLM the way Ctrl-C does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Let Hydra's composition errors reach us as exceptions: they are bad input (exit 2, one
    # line, a rejected manifest), not crashes.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if any(arg.startswith(REPLAY_ARG) for arg in sys.argv[1:]):  # else argv stays as it is
        _expand_replay()
    try:
        _job()
    except SystemExit:
        raise
    except Exception as exc:
        if _job_started:  # a bug of ours, not bad input: say so plainly
            traceback.print_exc()
            sys.exit(1)
        from runner.pipeline import reject_before_compose

        sys.exit(reject_before_compose(exc, sys.argv[1:]))
    # multirun: every point ran; the sweep's code is its worst point's
    sys.exit(max(_exit_codes, default=0))
