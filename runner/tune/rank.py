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
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from runner.plan import forecast as forecast_
from runner.plan.perf import Calibration, PerfPoint, Prediction

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


# the manifest → card / serve settings helpers are the planner's (runner/plan/forecast.py)
card_of = forecast_.card_of
gpu_name = forecast_.gpu_name
serve_settings = forecast_.serve_settings


def predict_manifest(
    manifest: Mapping[str, Any],
    workload: Tuple[int, int],
    slo: Slo,
    calibration_data: Optional[Mapping[str, Any]] = None,
) -> Forecast:
    """A planned candidate's manifest (``model``, ``fit``, ``hardware``, ``plan``, ``config``) to its forecast."""
    first = forecast_.predict_from_manifest(manifest, workload, [1], calibration_data)
    if not first.predicted:
        return forecast(first, slo)
    return forecast(
        forecast_.predict_from_manifest(manifest, workload, concurrencies(first.max_running), calibration_data), slo
    )


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
    prediction = forecast_.predict_from_manifest(manifest, workload, [int(concurrency)], calibration_data)
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


def same_server(a: Mapping[str, Any], b: Mapping[str, Any]) -> Optional[int]:
    """The load up to which two measured candidates are one server, where their measured bests both
    lie below it, else None. They must differ only in ``serve.max_num_seqs``: below both caps on
    running sequences vLLM schedules them alike, so a gap between their bests there is the
    benchmark's noise, not the configuration (fp8 llama3-8b with max_num_seqs 64 and 256 on one H100,
    2026-12-06: best 5,409 at c=52 and 5,634 at c=56, one probe at c=56 measuring p99 TTFT 506.7 and
    485.1 ms against a 500 ms target)."""
    va, vb = dict(a.get("values") or {}), dict(b.get("values") or {})
    if CAP_KEY not in va or va.keys() != vb.keys() or va[CAP_KEY] == vb[CAP_KEY]:
        return None
    if any(va[k] != vb[k] for k in va if k != CAP_KEY):
        return None
    cap_a, cap_b = _running_cap(a), _running_cap(b)
    if cap_a is None or cap_b is None or not a.get("measured") or not b.get("measured"):
        return None
    if any((r.get("search") or {}).get("load", "concurrency") != "concurrency" for r in (a, b)):
        return None  # a request rate's best is no number of running sequences
    shared = min(cap_a, cap_b)
    loads = (float(a["measured"].get("load") or 0), float(b["measured"].get("load") or 0))
    return shared if max(loads) <= shared else None


def winner(ordered: Sequence[Mapping[str, Any]]) -> Tuple[Optional[str], List[str]]:
    """(the named winner, the other measured candidates tied with it). ``ordered`` is the launch order.
    Tied with the highest measured best: the bests within :data:`TIE_BAND` of it, and the candidates
    that are the same server as it at both their best loads (:func:`same_server`); the earliest
    launched of them is named."""
    measured = [r for r in ordered if r.get("state") == "measured" and r.get("measured")]
    if not measured:
        return None, []

    def score(r: Mapping[str, Any]) -> float:
        return float(r["measured"]["tokens_per_s_per_gpu"] or 0.0)

    top = max(measured, key=score)
    tied = [r["id"] for r in measured if score(r) >= score(top) * (1 - TIE_BAND) or same_server(top, r) is not None]
    return tied[0], tied[1:]


def tie_reasons(ordered: Sequence[Mapping[str, Any]], named: Optional[str]) -> Dict[str, str]:
    """Why each candidate :func:`winner` tied with the named one is a tie, by id."""
    measured = [r for r in ordered if r.get("state") == "measured" and r.get("measured")]
    by_id = {r["id"]: r for r in measured}
    if named not in by_id:
        return {}
    top = max(measured, key=lambda r: float(r["measured"]["tokens_per_s_per_gpu"] or 0.0))
    _, tied = winner(ordered)
    out = {}
    for cid in tied:
        # the highest itself is tied with the named one; any other is tied with the highest
        other = by_id[named] if cid == top["id"] else top
        shared = same_server(other, by_id[cid])
        out[cid] = (
            f"the same server as `{other['label']}` up to c={shared}, where both bests lie — they differ only "
            f"in {CAP_KEY} — so the gap is the benchmark's noise"
            if shared is not None
            else f"within {TIE_BAND:.0%} of `{other['label']}`, the benchmark's noise"
        )
    return out
