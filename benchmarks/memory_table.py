"""The memory model against what vLLM reported: one row per launch.

    .venv/bin/python benchmarks/memory_table.py docs/validation/*/*.manifest.json [--points OUT.json]

For each run's manifest, the planner is asked again, with today's model, for the same
config on the same GPUs (from the manifest's hardware section and vLLM version), and its
prediction is set beside vLLM's own start-up figures — read from the run's vllm.log
(`NAME.vllm.log` beside a copied manifest, or the run directory's) or, without a log, from
the manifest. --points writes the measured side as JSON for tests/plan/test_memory.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's runner, installed or not

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from runner.app import CONF_DIR  # noqa: E402
from runner.config.schema import register_configs  # noqa: E402
from runner.plan.build import make_plan  # noqa: E402
from runner.probe.hardware import Gpu, HardwareProbe  # noqa: E402
from runner.record import vllm_log  # noqa: E402

SERVE_KEYS = (
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "max_num_seqs",
    "max_num_batched_tokens",
    "kv_cache_dtype",
    "max_model_len",
    "quantization",
    "enforce_eager",
)


def point_from_manifest(path: Path) -> Optional[Dict[str, Any]]:
    manifest = json.loads(path.read_text())
    log = path.with_name(path.name.replace(".manifest.json", ".vllm.log"))
    if not log.is_file():
        log = Path(manifest.get("run_dir", "/nonexistent")) / "vllm.log"
    reported = (
        vllm_log.reported_figures(log.read_text(errors="replace"))
        if log.is_file()
        else manifest.get("vllm_reported") or {}
    )
    if "kv_cache_tokens" not in reported or manifest.get("mode") not in ("check", "serve"):
        return None
    config = manifest["config"]
    serve = config["serve"]
    overrides = ["hw=auto", f"model={config['model']['name']}", "model.load_format=dummy"]
    argv = manifest["plan"]["argv"]
    for key in SERVE_KEYS:
        value = serve.get(key)
        if value == "***redacted***":  # manifests before the redaction fix masked *_tokens keys
            flag = "--" + key.replace("_", "-")
            value = argv[argv.index(flag) + 1] if flag in argv else None
        if value is not None:
            overrides.append(f"serve.{key}={value}")
    chosen = manifest["plan"]["devices"]
    gpus = [g for g in manifest["hardware"]["gpus"] if g["index"] in chosen]
    return {
        "name": path.name.replace(".manifest.json", ""),
        "overrides": overrides,
        "gpu_name": gpus[0]["name"],
        "gpu_total_bytes": gpus[0]["memory_total_bytes"],
        "gpu_count": len(gpus),
        "vllm": manifest["versions"].get("vllm"),
        "measured": {
            "kv_cache_tokens": reported["kv_cache_tokens"],
            "kv_cache_gib": reported.get("kv_cache_gib"),
            "weights_gib": reported.get("model_loading_gib"),
            **{
                k: v
                for k, v in (reported.get("memory_profile") or {}).items()
                if k in ("activation_peak_gib", "non_torch_gib", "cuda_graph_gib", "requested_gib")
            },
        },
        "outcome": manifest.get("status") + (f" ({manifest['failure']['cause']})" if manifest.get("failure") else ""),
    }


def predict(point: Dict[str, Any]) -> Dict[str, Any]:
    """The planner's fit for the point, on a probe of exactly its GPUs."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        node = compose("config", overrides=[*point["overrides"], "mode=check", "cache_dir=/nonexistent"])
    cfg = OmegaConf.to_object(node)
    gpus = tuple(
        Gpu(
            index=i,
            name=point["gpu_name"],
            pci_bus_id=f"00000000:00:{6 + i:02x}.0",
            memory_total_bytes=point["gpu_total_bytes"],
            memory_free_bytes=point["gpu_total_bytes"],
            compute_capability=(9, 0),
        )
        for i in range(point["gpu_count"])
    )
    plan = make_plan(
        cfg,
        HardwareProbe(gpus=gpus, cpus_allowed=tuple(range(16)), source="nvml"),
        dict(cfg.model.hf_config),
        point["vllm"],
        {},
    )
    return plan.estimate["fit"]


def rows(points: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    out = []
    for point in points:
        fit = predict(point)
        measured = point["measured"]
        error = 100 * (fit["kv_cache_tokens"] - measured["kv_cache_tokens"]) / measured["kv_cache_tokens"]
        out.append({"point": point, "fit": fit, "error_pct": error})
    return out


def markdown(table: List[Dict[str, Any]]) -> str:
    lines = [
        "| run | model | TP | util | other options | KV tokens predicted | KV tokens vLLM | error "
        "| activation GiB pred / vLLM | weights GiB pred / vLLM | outcome |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        p, fit, m = row["point"], row["fit"], row["point"]["measured"]
        options = [
            o.split(".", 1)[1]
            for o in p["overrides"]
            if o.startswith("serve.")
            and not o.startswith(("serve.tensor_parallel_size", "serve.gpu_memory_utilization"))
        ]
        model = next(o.split("=", 1)[1] for o in p["overrides"] if o.startswith("model="))
        act = (
            f"{fit['activation_peak_gib']:.2f} / {m['activation_peak_gib']:.2f}"
            if "activation_peak_gib" in m
            else f"{fit['activation_peak_gib']:.2f} / —"
        )
        weights = f"{fit['weights_gib_per_gpu']:.2f} / {m['weights_gib']:.2f}" if m.get("weights_gib") else "—"
        lines.append(
            f"| {p['name']} | {model} | {fit['tensor_parallel_size']} | {fit['gpu_memory_utilization']:g} "
            f"| {', '.join(options) or '—'} | {fit['kv_cache_tokens']:,} | {m['kv_cache_tokens']:,} "
            f"| {row['error_pct']:+.2f} % | {act} | {weights} | {p['outcome']} |"
        )
    worst = max(abs(r["error_pct"]) for r in table)
    lines.append("")
    lines.append(
        f"{len(table)} points; largest KV-token error {worst:.2f} %; "
        f"card: {table[0]['point']['gpu_name']}; vLLM {table[0]['point']['vllm']}"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifests", nargs="+", type=Path)
    ap.add_argument("--points", type=Path, help="write the measured points (JSON) here")
    args = ap.parse_args()
    register_configs()
    points = [p for p in (point_from_manifest(m) for m in args.manifests) if p]
    # one row per distinct launch (a repeat of the same config on the same card adds nothing)
    seen, unique = set(), []
    for p in points:
        key = json.dumps([sorted(p["overrides"]), p["gpu_total_bytes"], p["vllm"], p["measured"]["kv_cache_tokens"]])
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if args.points:
        args.points.write_text(json.dumps(unique, indent=1) + "\n")
    print(markdown(rows(unique)))


if __name__ == "__main__":
    main()
