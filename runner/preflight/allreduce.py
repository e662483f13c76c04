"""The preflight all-reduce over the plan's devices before vLLM starts: runs
runner/preflight/collective.py as a script under the vLLM interpreter.

A hang or failure with P2P on that passes with NCCL_P2P_DISABLE=1 gives the launch that
fallback (a new LaunchSpec, with a note saying why); one that fails either way stops the run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from runner import logs
from runner.config.schema import LaunchConfig
from runner.launch import process
from runner.launch.spec import LaunchSpec
from runner.plan.build import Plan
from runner.record.manifest import RunFailed

SCRIPT = Path(__file__).resolve().with_name("collective.py")
log = logs.get("runner")


@dataclass(frozen=True)
class CollectiveCheck:
    record: Dict[str, Any]  # the manifest's ``collective`` section
    spec: LaunchSpec  # what to launch: the given one, or it with the fallback
    seconds: float
    failure: Optional[RunFailed] = None  # set when it failed either way: the run stops


def check_collective(plan: Plan, spec: LaunchSpec, cfg: LaunchConfig) -> CollectiveCheck:
    backend = "nccl" if plan.device == "cuda" else "gloo"

    def attempt(extra_env: Dict[str, str]) -> Dict[str, Any]:
        argv = [
            spec.python,
            str(SCRIPT),
            "--world",
            str(plan.world_size),
            "--backend",
            backend,
            "--size-mib",
            str(cfg.collective_size_mib),
            "--timeout-s",
            str(cfg.collective_timeout_s),
        ]
        env = {**os.environ, **spec.env, **extra_env}
        log.info("collective check", backend=backend, devices=list(plan.devices), **extra_env)
        result = process.run_json(argv, env, timeout=cfg.collective_timeout_s + 60)
        result["env"] = extra_env
        return result

    attempts: List[Dict[str, Any]] = [attempt({})]
    if (
        not attempts[0].get("ok")
        and plan.device == "cuda"
        and os.environ.get("NCCL_P2P_DISABLE") != "1"
        and spec.env.get("NCCL_P2P_DISABLE") != "1"
    ):
        attempts.append(attempt({"NCCL_P2P_DISABLE": "1"}))
    final = attempts[-1]
    devices = list(plan.devices)
    record = {"devices": devices, "attempts": attempts, "ok": bool(final.get("ok"))}
    seconds = round(sum(a.get("seconds", 0) for a in attempts), 2)
    if not final.get("ok"):
        failure = RunFailed(
            "preflight",
            f"{backend} all-reduce over devices {devices} failed: {attempts[0].get('error')}",
            "collective_failed",
            "check the GPUs' P2P path (nvidia-smi topo -p2p r); try hw.env.NCCL_P2P_DISABLE=1, "
            "or fewer GPUs (serve.tensor_parallel_size)",
        )
        return CollectiveCheck(record, spec, seconds, failure)
    log.info("collective ok", busbw_gbps=final.get("busbw_gbps"), median_ms=final.get("median_ms"))
    if len(attempts) == 1:
        return CollectiveCheck(record, spec, seconds)
    note = (
        f"NCCL_P2P_DISABLE=1: the all-reduce over {devices} failed with P2P ({attempts[0].get('error')}) "
        "and passed without it"
    )
    log.warning("plan", note=note)
    return CollectiveCheck(record, spec.with_env({"NCCL_P2P_DISABLE": "1"}, note), seconds)
