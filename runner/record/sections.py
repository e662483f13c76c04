"""Manifest sections made from the earlier stages' records: the hardware as probed, the model's
shape, the memory fit, the fit against what vLLM reported, and the plan as launched."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional

from runner.config.schema import RunnerConfig
from runner.plan.build import Plan
from runner.plan.shape import ModelShape
from runner.probe.hardware import HardwareProbe
from runner.record.redact import redact_argv, redact_env


def hardware_summary(probe: HardwareProbe, topology_matrix: Optional[str] = None) -> Dict[str, Any]:
    """topology_matrix: asked while vLLM loads (a launch's probe skips it); the probe's otherwise."""
    return {
        "source": probe.source,
        "gpus": [dataclasses.asdict(g) for g in probe.gpus],
        "driver_version": probe.driver_version,
        "cuda_driver_version": probe.cuda_driver_version,
        "cpus_allowed": len(probe.cpus_allowed),
        "inherited_cuda_visible_devices": probe.inherited_cuda_mask,
        "topology_matrix": topology_matrix if topology_matrix is not None else probe.topology_matrix,
        "links": {f"{a}-{b}": v for (a, b), v in sorted(probe.links.items())},
        "p2p": {f"{a}-{b}": v for (a, b), v in sorted(probe.p2p.items())},
        "numa_nodes": probe.numa_nodes,
        "notes": list(probe.notes),
    }


def fit_summary(plan: Plan) -> Optional[Dict[str, Any]]:
    """The memory plan for the chosen TP size, and the table over every TP size."""
    fit = plan.estimate.get("fit")
    if not fit:
        return None
    return fit | {"source": plan.estimate.get("memory_source"), "table": plan.estimate.get("fit_table", [])}


def fit_check(fit: Optional[Dict[str, Any]], reported: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """Predicted against what vLLM reported at start-up: the memory model's report card."""
    if not fit or "kv_cache_tokens" not in reported:
        return None
    measured = reported["kv_cache_tokens"]
    out: Dict[str, Any] = {
        "kv_cache_tokens": {
            "predicted": fit["kv_cache_tokens"],
            "measured": measured,
            "error_pct": round(100 * (fit["kv_cache_tokens"] - measured) / measured, 2) if measured else None,
        },
    }
    profile = reported.get("memory_profile") or {}
    for key, theirs in (
        ("requested_gib", "requested_gib"),
        ("weights_gib_per_gpu", "weights_gib"),
        ("activation_peak_gib", "activation_peak_gib"),
        ("non_torch_gib", "non_torch_gib"),
        ("kv_cache_gib", None),
    ):
        value = reported.get("kv_cache_gib") if theirs is None else profile.get(theirs)
        if value is not None:
            out[key] = {"predicted": fit[key], "measured": value}
    return out


def model_summary(cfg: RunnerConfig, plan: Plan, hf_config: Optional[dict]) -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "name": cfg.model.name,
        "source": cfg.model.source.value,
        "path": plan.model_path,
        "load_format": cfg.model.load_format,
    }
    if hf_config:
        shape = ModelShape.from_hf_config(hf_config)
        out.update(dataclasses.asdict(shape))
        out["parameters"] = shape.parameter_count()
    return out


def plan_record(plan: Plan, env: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The plan as launched (env: the launch's, when preflight added to the plan's), redacted."""
    record = plan.to_dict()
    record.pop("problems")
    record.pop("notes")
    record["argv"] = redact_argv(plan.argv)
    record["env"] = redact_env(plan.env if env is None else env)
    return record
