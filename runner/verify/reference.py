"""TP equivalence as a run stage: this server's teacher-forced logprobs against a TP=1
reference that is recorded, given, or — in mode=check — launched here on a free port once the
main server has stopped (runner/verify/equivalence.py does the scoring and comparing)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from runner import logs
from runner.config.schema import Mode, RunnerConfig
from runner.launch import process
from runner.plan.build import Plan, make_plan
from runner.probe.hardware import HardwareProbe
from runner.record.manifest import RunFailed
from runner.verify import equivalence
from runner.verify.ready import wait_ready

log = logs.get("runner")


@dataclass(frozen=True)
class Equivalence:
    result: Dict[str, Any]  # verification.tp_equivalence
    reference_teardown: Optional[Dict[str, Any]] = None  # when a reference server was launched


@dataclass(frozen=True)
class Context:
    """What the stage needs of the earlier ones."""

    cfg: RunnerConfig
    plan: Plan
    probe: HardwareProbe
    hf_config: Optional[Dict[str, Any]]
    vllm: Optional[str]
    run_dir: Path
    api_key: Optional[str]


def check_equivalence(ctx: Context, stop_main: Callable[[], Any]) -> Equivalence:
    cfg, plan = ctx.cfg, ctx.plan
    if cfg.model.load_format == "dummy":
        return Equivalence({"skipped": "dummy weights are drawn per rank, so a TP=k model is not the TP=1 model"})
    if not (plan.model_path and os.path.isdir(plan.model_path)):
        return Equivalence({"skipped": "needs a local model directory to key the reference"})
    dtype = equivalence.effective_dtype(cfg.serve.dtype, ctx.hf_config or {})
    key = equivalence.reference_key(plan.model_path, dtype)
    t = time.time()
    candidate = equivalence.score(plan.url, plan.model_name, api_key=ctx.api_key, timeout=cfg.verify.request_timeout_s)
    if plan.world_size == 1:
        meta = {"run_dir": str(ctx.run_dir), "model": plan.model_path, "vllm": ctx.vllm}
        path = equivalence.save_reference(cfg.cache_dir, key, candidate, meta)
        return Equivalence({"role": "reference", "passed": True, "dtype": dtype, "key": key, "reference": str(path)})
    if cfg.verify.tp_reference:
        reference, source = json.loads(Path(os.path.expanduser(cfg.verify.tp_reference)).read_text()), "given"
    else:
        reference, source = equivalence.load_reference(cfg.cache_dir, key), "recorded"
    teardown = None
    if reference is None:
        if cfg.mode is not Mode.check:
            return Equivalence(
                {
                    "skipped": "no TP=1 reference is recorded for this model and dtype: run it once with "
                    "serve.tensor_parallel_size=1 verify.tp_equivalence=true (or mode=check, which launches one)"
                }
            )
        stop_main()  # the GPUs (or cores) are needed for the reference
        reference, teardown = reference_run(ctx, key)
        source = "launched"
    result = equivalence.compare(candidate, reference, dtype)
    result.update(
        role="candidate",
        reference_source=source,
        key=key,
        reference_key=reference.get("key"),
        seconds=round(time.time() - t, 2),
    )
    return Equivalence(result, teardown)


def reference_run(ctx: Context, key: str):
    """Start the same model at TP=1 on a free port, score it, stop it, record it.

    Returns (the reference, the reference server's teardown record). The reference server has
    a plan of its own, made from the config with TP=1: the main run's plan is not touched."""
    cfg = ctx.cfg
    serve = dataclasses.replace(cfg.serve, tensor_parallel_size=1, pipeline_parallel_size=1, port=process.free_port())
    ref_plan = make_plan(
        dataclasses.replace(cfg, serve=serve), ctx.probe, ctx.hf_config, ctx.vllm, os.environ, python=ctx.plan.argv[0]
    )
    log_path = ctx.run_dir / "reference-vllm.log"
    server = process.Server(ref_plan.argv, {**os.environ, **ref_plan.env}, log_path)
    log.info("reference started", pid=server.pid, tensor_parallel_size=1, log=str(log_path))
    try:
        ready = wait_ready(
            server, ref_plan.url, ref_plan.model_name, cfg.verify.ready_timeout_s, ctx.api_key, role="reference"
        )
        scored = equivalence.score(
            ref_plan.url, ref_plan.model_name, api_key=ctx.api_key, timeout=cfg.verify.request_timeout_s
        )
    except BaseException as exc:
        teardown = dataclasses.asdict(server.stop(cfg.launch.stop_grace_s))
        if isinstance(exc, RunFailed):  # the failed run's manifest still says how the reference ended
            exc.sections["reference_teardown"] = teardown
        raise
    teardown = dataclasses.asdict(server.stop(cfg.launch.stop_grace_s))
    meta = {"run_dir": str(ctx.run_dir), "model": ctx.plan.model_path, "vllm": ctx.vllm, "ready_s": ready.ready_s}
    path = equivalence.save_reference(cfg.cache_dir, key, scored, meta)
    found = equivalence.load_reference(cfg.cache_dir, key) or {**scored, "key": key, "path": str(path)}
    return found, teardown
