"""Ranking and pruning from the performance model's predictions. Pure: no I/O.

A candidate's *predicted best* is the highest output tokens/s per GPU among the concurrencies whose
predicted p99 TTFT and p99 TPOT (and end-to-end latency, when the SLO has one) meet the SLO. Candidates
are launched best-predicted first. After each measurement, a candidate still waiting is pruned when even
its prediction widened by the model's error cannot beat what was measured::

    predicted ≤ measured best × (1 − error)

The error is the calibration's own tok/s MAPE (never below :data:`ERROR_FLOOR`: the fit's in-sample
error understates a hold-out, and two runs of one configuration differ by up to 8 %), or
:data:`UNCALIBRATED_ERROR` for a card without a calibration. A card with no facts (the CPU) has no
predictions: candidates keep the space's order and nothing is pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from runner.plan import memory
from runner.plan.cards import CardFacts, card_facts
from runner.plan.perf import Calibration, PerfPoint, Prediction, Workload, predict_from_fit

UNCALIBRATED_ERROR = 0.25
ERROR_FLOOR = 0.10
MAX_CONCURRENCY = 1024  # where the predicted concurrencies stop when nothing caps them


@dataclass(frozen=True)
class Slo:
    ttft_p99_ms: float
    tpot_p99_ms: float
    e2e_p99_ms: Optional[float] = None

    def describe(self) -> str:
        parts = [f"p99 TTFT ≤ {self.ttft_p99_ms:g} ms", f"p99 TPOT ≤ {self.tpot_p99_ms:g} ms"]
        if self.e2e_p99_ms is not None:
            parts.append(f"p99 E2E ≤ {self.e2e_p99_ms:g} ms")
        return ", ".join(parts)


@dataclass(frozen=True)
class Forecast:
    """One candidate's prediction, reduced to what ranking needs (and the table shows)."""

    predicted: bool
    reason: Optional[str]  # why there is no prediction
    best_tokens_per_s_per_gpu: Optional[float]  # 0.0: predicted to meet the SLO at no concurrency
    best_concurrency: Optional[int]
    best_ttft_p99_ms: Optional[float] = None
    best_tpot_p99_ms: Optional[float] = None
    max_running: Optional[int] = None
    calibration: str = ""
    points: List[Dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "predicted": self.predicted,
            "reason": self.reason,
            "best_tokens_per_s_per_gpu": _r(self.best_tokens_per_s_per_gpu),
            "best_concurrency": self.best_concurrency,
            "best_ttft_p99_ms": _r(self.best_ttft_p99_ms),
            "best_tpot_p99_ms": _r(self.best_tpot_p99_ms),
            "max_running": self.max_running,
            "calibration": self.calibration,
            "points": self.points,
        }


def _r(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 3)


def concurrencies(cap: Optional[int]) -> List[int]:
    """1, 2, 4, … up to the cap, and the cap itself: the loads a bisection can land near."""
    top = cap if cap else MAX_CONCURRENCY
    out, c = [], 1
    while c < top:
        out.append(c)
        c *= 2
    out.append(top)
    return out


def point_meets(point: PerfPoint, slo: Slo) -> bool:
    if point.ttft_p99_ms > slo.ttft_p99_ms or point.tpot_p99_ms > slo.tpot_p99_ms:
        return False
    return slo.e2e_p99_ms is None or point.e2e_ms <= slo.e2e_p99_ms


def best_point(prediction: Prediction, slo: Slo) -> Optional[PerfPoint]:
    meeting = [p for p in prediction.points if point_meets(p, slo)]
    if not meeting:
        return None
    return max(meeting, key=lambda p: (p.output_tokens_per_s_per_gpu, p.concurrency))


def forecast(prediction: Prediction, slo: Slo) -> Forecast:
    if not prediction.predicted:
        return Forecast(False, prediction.reason, None, None, calibration=prediction.calibration)
    best = best_point(prediction, slo)
    points = prediction.to_dict()["points"]
    if best is None:
        return Forecast(True, None, 0.0, None, None, None, prediction.max_running, prediction.calibration, points)
    return Forecast(
        True,
        None,
        best.output_tokens_per_s_per_gpu,
        best.concurrency,
        best.ttft_p99_ms,
        best.tpot_p99_ms,
        prediction.max_running,
        prediction.calibration,
        points,
    )


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


def _interconnect(manifest: Mapping[str, Any]) -> Optional[str]:
    found = (manifest.get("placement") or {}).get("interconnect")
    found = found or ((manifest.get("config") or {}).get("hw") or {}).get("interconnect")
    return found if found in ("nvlink", "pcie") else None


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


def predict_manifest(
    manifest: Mapping[str, Any],
    workload: Tuple[int, int],
    slo: Slo,
    calibration_data: Optional[Mapping[str, Any]] = None,
) -> Forecast:
    """A planned candidate's manifest (``model``, ``fit``, ``hardware``, ``plan``, ``config``) to its forecast."""
    card = card_of(manifest)
    cal = Calibration.from_file_data(calibration_data, card)
    fit = manifest.get("fit") or {}
    model = manifest.get("model") or {}
    if not isinstance(card, CardFacts):
        return Forecast(False, card.reason, None, None, calibration=cal.source)
    if not fit or not model.get("hidden_size"):
        return Forecast(False, "the plan has no memory fit or model shape", None, None, calibration=cal.source)
    shape = SimpleNamespace(**{**model, "num_experts": model.get("num_experts") or 1})
    serve = serve_settings(manifest)
    inp, out = workload
    versions = manifest.get("versions") or {}

    def run(cs: Sequence[int]) -> Prediction:
        return predict_from_fit(
            shape,
            fit,
            card,
            Workload(inp, out, list(cs)),
            serve=serve,
            calibration=cal,
            interconnect=_interconnect(manifest),
            vllm_version=versions.get("vllm"),
        )

    first = run([1])
    return forecast(run(concurrencies(first.max_running)) if first.predicted else first, slo)


def error_margin(calibration_data: Optional[Mapping[str, Any]], card: Any) -> Tuple[float, str]:
    """(the relative error a prediction is widened by, where it comes from)."""
    cal = Calibration.from_file_data(calibration_data, card)
    mape = (cal.error or {}).get("output_tokens_per_s_mape_pct")
    if not cal.calibrated or mape is None:
        return UNCALIBRATED_ERROR, f"uncalibrated: stated {UNCALIBRATED_ERROR:.0%}"
    err = max(float(mape) / 100.0, ERROR_FLOOR)
    return err, f"calibration's tok/s MAPE {float(mape):.1f} % (floor {ERROR_FLOOR:.0%})"


def order(ids: Sequence[str], forecasts: Mapping[str, Forecast]) -> List[str]:
    """Launch order: predicted best first; candidates without a prediction after, in the space's order."""
    position = {cid: i for i, cid in enumerate(ids)}

    def key(cid: str):
        f = forecasts.get(cid)
        if f is None or not f.predicted:
            return (1, 0.0, position[cid])
        return (0, -(f.best_tokens_per_s_per_gpu or 0.0), position[cid])

    return sorted(ids, key=key)


def prune_reason(forecast_: Optional[Forecast], measured_best: Optional[float], err: float) -> Optional[str]:
    """Why a waiting candidate cannot beat the best measured one, or None (launch it)."""
    if forecast_ is None or not forecast_.predicted or measured_best is None or measured_best <= 0:
        return None
    predicted = forecast_.best_tokens_per_s_per_gpu or 0.0
    bound = measured_best * (1 - err)
    if predicted > bound:
        return None
    if predicted == 0.0:
        return f"pruned: predicted to meet the SLO at no concurrency; measured best {measured_best:.1f} tok/s/GPU"
    return (
        f"pruned: predicted {predicted:.1f} tok/s/GPU ≤ measured best {measured_best:.1f} × (1 − {err:.2f}) "
        f"= {bound:.1f}"
    )


def predicted_point(
    manifest: Mapping[str, Any],
    workload: Tuple[int, int],
    concurrency: int,
    calibration_data: Optional[Mapping[str, Any]] = None,
) -> Optional[Dict[str, Any]]:
    """The prediction at one concurrency (the measured best's), for the predicted-vs-measured columns."""
    card = card_of(manifest)
    fit, model = manifest.get("fit") or {}, manifest.get("model") or {}
    if not isinstance(card, CardFacts) or not fit or not model.get("hidden_size"):
        return None
    shape = SimpleNamespace(**{**model, "num_experts": model.get("num_experts") or 1})
    prediction = predict_from_fit(
        shape,
        fit,
        card,
        Workload(workload[0], workload[1], [int(concurrency)]),
        serve=serve_settings(manifest),
        calibration=Calibration.from_file_data(calibration_data, card),
        interconnect=_interconnect(manifest),
    )
    return prediction.to_dict()["points"][0] if prediction.predicted else None


# --------------------------------------------------------------------------- measured twins and ties
CAP_KEY = "serve.max_num_seqs"
# Measured bests closer than this are one result: two servers that are the same below the load they
# were measured at (fp8 llama3-8b with max_num_seqs 64 and 256 on one H200, both best at c=60) measured
# 9,937 and 9,871 tok/s/GPU, 0.7 % apart. The earlier launched (the better predicted) is named.
TIE_BAND = 0.02


def _running_cap(record: Mapping[str, Any]) -> Optional[int]:
    cap = record.get("max_running")
    return int(cap) if isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap > 0 else None


def twin_prune_reason(waiting: Mapping[str, Any], measured: Sequence[Mapping[str, Any]]) -> Optional[str]:
    """Why a waiting candidate cannot beat a measured one it differs from only in ``serve.max_num_seqs``
    (the cap on running sequences), or None. Below both caps the two servers are the same server. With a
    lower cap the waiting one only queues what the measured one ran, so it can do no better. With a
    higher cap it can do better only above the measured one's cap — and not where the measured one
    already missed the SLO at a load it ran whole (``lowest_failing`` ≤ its cap): the waiting one would
    run that load the same way. A measurement, not a prediction: it holds without card facts."""
    values = dict(waiting.get("values") or {})
    cap_b = _running_cap(waiting)
    if CAP_KEY not in values or cap_b is None:
        return None
    for twin in measured:
        other = dict(twin.get("values") or {})
        if twin.get("state") != "measured" or not twin.get("measured") or other.keys() != values.keys():
            continue
        if any(other[k] != values[k] for k in values if k != CAP_KEY) or other[CAP_KEY] == values[CAP_KEY]:
            continue
        cap_a = _running_cap(twin)
        failing = (twin.get("search") or {}).get("lowest_failing")
        if cap_a is None:
            continue
        best = twin["measured"]
        head = (
            f"pruned: as measured {twin['label']} ({best['tokens_per_s_per_gpu']:.1f} tok/s/GPU at c={best['load']:g})"
        )
        if cap_b <= cap_a:
            return f"{head} up to {cap_b} running sequences, and past them it only queues"
        if failing is not None and failing <= cap_a:
            return (
                f"{head}: that server missed the SLO at c={failing:g} with every client running, "
                f"as {CAP_KEY}={values[CAP_KEY]} would run them"
            )
    return None


def winner(ordered: Sequence[Mapping[str, Any]]) -> Tuple[Optional[str], List[str]]:
    """(the named winner, the other measured candidates tied with it). ``ordered`` is the launch order;
    among the measured bests within :data:`TIE_BAND` of the highest, the earliest launched is named."""
    scored = [
        (float(r["measured"]["tokens_per_s_per_gpu"] or 0.0), r["id"])
        for r in ordered
        if r.get("state") == "measured" and r.get("measured")
    ]
    if not scored:
        return None, []
    top = max(s for s, _ in scored)
    tied = [cid for s, cid in scored if s >= top * (1 - TIE_BAND)]
    return tied[0], tied[1:]
