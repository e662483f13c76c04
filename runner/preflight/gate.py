"""The preflight verdict: every problem found before anything starts, gathered once.

The model inspection's and the plan's problems, then — for a launch on this machine — the
machine's own (port, cache dir), the Ray cluster's for a multi-node run, and the doctor's
cheap checks. A missing interpreter is said once, by the inspection, not again as "no vLLM"."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from runner.config.schema import Mode, RunnerConfig
from runner.plan.build import Plan
from runner.plan.shape import ModelShape
from runner.probe.hardware import HardwareProbe
from runner.probe.versions import installed_vllm
from runner.problems import Problem
from runner.record.manifest import dist_version

if TYPE_CHECKING:
    from runner.preflight.doctor import Check


@dataclass(frozen=True)
class Preflight:
    problems: Tuple[Problem, ...]
    doctor_rows: Tuple[Check, ...] = ()
    cluster: Optional[Dict[str, Any]] = None  # the Ray cluster the run attaches to

    @property
    def ok(self) -> bool:
        return not self.problems


def run_preflight(
    cfg: RunnerConfig,
    plan: Plan,
    probe: HardwareProbe,
    shape: Optional[ModelShape],
    inspection_problems: Sequence[Problem],
    python: str,
    version: Optional[str],
    launching: bool,
) -> Preflight:
    said = {p.key for p in inspection_problems}
    problems = tuple(inspection_problems) + tuple(p for p in plan.problems if p.key not in said)
    if not launching:  # mode=plan may plan for a machine elsewhere: this one is not checked
        return Preflight(problems)
    # imported here: mode=plan checks nothing of this machine and does not pay for these modules
    from runner.preflight import machine
    from runner.preflight import ray as ray_preflight

    problems += tuple(machine.machine_problems(cfg))
    cluster = None
    if plan.cluster and cfg.hw.ray_address:
        # attach to the Ray cluster and count what it offers before vLLM asks for it
        cluster, found = ray_preflight.check_ray_cluster(
            str(cfg.hw.ray_address), plan.world_size, device=plan.device, expect_nodes=cfg.hw.nodes, python=python
        )
        problems += tuple(found)
    rows, failing = _doctor(cfg, plan, probe, python, version, shape, problems)
    return Preflight(problems + tuple(failing), tuple(rows), cluster)


def _doctor(
    cfg: RunnerConfig,
    plan: Plan,
    probe: HardwareProbe,
    python: str,
    version: Optional[str],
    shape: Optional[ModelShape],
    problems: Sequence[Problem],
) -> Tuple[List[Check], List[Problem]]:
    """The machine's own checks (the table of mode=doctor): (the table, the failing ones)."""
    from runner.preflight import doctor  # a launch's check only: see run_preflight

    architecture = shape.architecture if shape else None
    if cfg.mode is Mode.doctor and shutil.which(python):
        runtime = doctor.query_runtime(python, architecture, {**os.environ, **plan.env})
    else:  # every launch's preflight: package metadata only; importing vLLM takes seconds
        own = python == sys.executable
        runtime = {
            "vllm": version,
            "vllm_distribution": installed_vllm()[0] if own else None,
            "torch": dist_version("torch") if own else None,
        }
    rows = doctor.environment_checks(plan, probe, runtime, doctor.shm_bytes(), doctor.nofile_limits(), architecture)
    return doctor.table_rows(plan, probe, rows, problems), doctor.as_problems(rows)
