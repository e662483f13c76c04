"""Predicted performance for a planned run, from its manifest's records. Pure: no I/O.

The performance model (runner/plan/perf.py) needs the model's dimensions, the memory fit, the card's
facts, vLLM's batch defaults and the workload. A plan manifest (or the records it is built from) holds
all of them: ``model``, ``fit`` (with the fit table), ``hardware``, ``plan``, ``config``, ``versions``.
:func:`performance_section` predicts every TP size of the fit table that fits, at the most sequences
its server runs at once, and the chosen one at each of the bench group's concurrencies;
:func:`against_measured` puts a benchmark's figures next to those predictions with the error per
figure and its MAPE. mode=tune ranks candidates through :func:`predict_from_manifest`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict, List, Mapping, Optional, Sequence

from runner.plan import memory
from runner.plan.cards import CardFacts, card_facts
from runner.plan.perf import Calibration, Prediction, Workload, predict_from_fit

# what the bench results call the figures the model predicts: (prediction's key, bench result's key)
COMPARED = {
    "output_tokens_per_s": ("output_tokens_per_s", "output_throughput"),
    "ttft_ms": ("ttft_ms", "median_ttft_ms"),
    "tpot_ms": ("tpot_ms", "median_tpot_ms"),
}


def _gpu(manifest: Mapping[str, Any]) -> Mapping[str, Any]:
    """The probed first device; a profile's declared GPU when the plan was made without one (a
    rehearsal of a GPU profile on another machine)."""
    gpus = (manifest.get("hardware") or {}).get("gpus") or []
    devices = (manifest.get("plan") or {}).get("devices") or [0]
    if gpus:
        return next((g for g in gpus if g.get("index") == devices[0]), gpus[0])
    hw = (manifest.get("config") or {}).get("hw") or {}
    gib = hw.get("gpu_memory_gib")
    return {"name": hw.get("gpu_name"), "memory_total_bytes": int(float(gib) * 2**30) if gib else 0}


def interconnect(manifest: Mapping[str, Any]) -> Optional[str]:
    found = (manifest.get("placement") or {}).get("interconnect")
    found = found or ((manifest.get("config") or {}).get("hw") or {}).get("interconnect")
    return found if found in ("nvlink", "pcie") else None


def gpu_name(manifest: Mapping[str, Any]) -> Optional[str]:
    """The name of the plan's first device (NVML's, or the profile's declared GPU)."""
    name = _gpu(manifest).get("name")
    return str(name) if name else None


def card_of(manifest: Mapping[str, Any]):
    """The card facts for a plan manifest's first device (NoCardFacts on the CPU or an unknown card)."""
    config = manifest.get("config") or {}
    device = (manifest.get("plan") or {}).get("device") or "cuda"
    return card_facts(_gpu(manifest).get("name"), config.get("hw") or {}, device=device)


def serve_settings(manifest: Mapping[str, Any]) -> Dict[str, Any]:
    """The candidate's serve options with vLLM's defaults filled in where it left them unset."""
    serve = dict((manifest.get("config") or {}).get("serve") or {})
    plan = manifest.get("plan") or {}
    gpu = _gpu(manifest)
    defaults = memory.serve_defaults(int(gpu.get("memory_total_bytes") or 0), gpu.get("name"))
    for key in ("max_num_seqs", "max_num_batched_tokens"):
        if serve.get(key) is None:
            serve[key] = defaults.get(key)
    serve["pipeline_parallel_size"] = plan.get("pipeline_parallel_size") or serve.get("pipeline_parallel_size") or 1
    serve["tensor_parallel_size"] = plan.get("tensor_parallel_size") or serve.get("tensor_parallel_size")
    return serve


def predict_from_manifest(
    manifest: Mapping[str, Any],
    workload: Sequence[int],
    concurrencies: Sequence[int],
    calibration_data: Optional[Mapping[str, Any]] = None,
    fit: Optional[Mapping[str, Any]] = None,
) -> Prediction:
    """The prediction for the manifest's plan (or, with ``fit``, one row of its fit table) at
    ``workload`` = (input_len, output_len) and each concurrency."""
    card = card_of(manifest)
    cal = Calibration.from_file_data(calibration_data, card)
    fit = fit if fit is not None else (manifest.get("fit") or {})
    model = manifest.get("model") or {}
    serve = serve_settings(manifest)
    if fit.get("tensor_parallel_size"):
        serve["tensor_parallel_size"] = fit["tensor_parallel_size"]
    if not isinstance(card, CardFacts):
        return _unpredicted(card.reason, None, cal)
    if not fit or not model.get("hidden_size"):
        return _unpredicted("the plan has no memory fit or model shape", card.key, cal)
    shape = SimpleNamespace(**{**model, "num_experts": model.get("num_experts") or 1})
    return predict_from_fit(
        shape,
        fit,
        card,
        Workload(int(workload[0]), int(workload[1]), [int(c) for c in concurrencies]),
        serve=serve,
        calibration=cal,
        interconnect=interconnect(manifest),
        vllm_version=(manifest.get("versions") or {}).get("vllm"),
    )


def _unpredicted(reason: str, card: Optional[str], cal: Calibration) -> Prediction:
    return Prediction(False, reason, card, cal.source, cal.calibrated, None, None, [], [], {})


def _table_row(
    manifest: Mapping[str, Any], row: Mapping[str, Any], workload, calibration_data
) -> Optional[Dict[str, Any]]:
    """One fitting TP size at the most sequences its server runs at once."""
    first = predict_from_manifest(manifest, workload, [1], calibration_data, fit=row)
    if not first.predicted:  # e.g. PP > 1, which the model does not predict
        return None
    at = first.max_running or 1
    point = predict_from_manifest(manifest, workload, [at], calibration_data, fit=row).to_dict()["points"][0]
    return {"tensor_parallel_size": row["tensor_parallel_size"], **point}


def performance_section(
    manifest: Mapping[str, Any],
    workload: Sequence[int],
    concurrencies: Sequence[int],
    calibration_data: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """``performance`` of a manifest: the chosen plan at each concurrency, and every fitting TP size
    of the fit table at its most running sequences; or why nothing is predicted."""
    chosen = predict_from_manifest(manifest, workload, concurrencies, calibration_data)
    section: Dict[str, Any] = {
        "workload": {"input_len": int(workload[0]), "output_len": int(workload[1])},
        "predicted": chosen.predicted,
        "reason": chosen.reason,
        "card": chosen.card,
        "calibration": chosen.calibration,
        "calibrated": chosen.calibrated,
        "max_running": chosen.max_running,
        "points": chosen.to_dict()["points"],
        "table": [],
        "notes": list(chosen.notes),
    }
    # the fit table's sizes even when the chosen one is refused: what TP=2 or 4 would do instead
    if isinstance(card_of(manifest), CardFacts) and (manifest.get("model") or {}).get("hidden_size"):
        rows = ((manifest.get("fit") or {}).get("table")) or []
        table = [_table_row(manifest, r, workload, calibration_data) for r in rows if r.get("fits")]
        section["table"] = [r for r in table if r is not None]
    return section


def _error_pct(predicted: Optional[float], measured: Optional[float]) -> Optional[float]:
    if predicted is None or not measured:
        return None
    return round(100.0 * (predicted - measured) / measured, 2)


def against_measured(performance: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Each benchmark result next to the prediction at its concurrency: the figures, the error (%,
    predicted − measured over measured) and, per figure, the mean absolute error over the results."""
    by_c = {p["concurrency"]: p for p in performance.get("points") or []}
    rows: List[Dict[str, Any]] = []
    for result in results:
        point = by_c.get(result.get("concurrency"))
        if point is None:
            continue
        row: Dict[str, Any] = {"concurrency": result["concurrency"]}
        for name, (pkey, mkey) in COMPARED.items():
            row[f"predicted_{name}"] = point.get(pkey)
            row[f"measured_{name}"] = result.get(mkey)
            row[f"error_{name}_pct"] = _error_pct(point.get(pkey), result.get(mkey))
        rows.append(row)
    mape = {}
    for name in COMPARED:
        errors = [abs(r[f"error_{name}_pct"]) for r in rows if r[f"error_{name}_pct"] is not None]
        mape[f"{name}_mape_pct"] = round(sum(errors) / len(errors), 2) if errors else None
    return {"calibration": performance.get("calibration"), "rows": rows, **mape}
