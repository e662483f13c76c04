"""Fit the performance model's efficiencies to the runner's own benchmark manifests.

::

    python -m runner.measure.calibrate outputs/SWEEP_DIR [more dirs or manifest.json files] -o calibration.json

Every ``manifest.json`` (or ``*.manifest.json``) found under the arguments that has ``bench.results``
becomes one point per concurrency: the model's dimensions (``model``), the layout (``plan``, ``fit``, and
what vLLM reported: its weights and KV-cache size are used where present, they are what ran), the card
(``hardware.gpus``, ``config.hw`` overrides), the workload (``bench.workload``) and the measured median
TTFT, median TPOT and output tokens/s. Points are grouped by card and each card's constants
(:data:`runner.plan.perf.Calibration.FITTED`, plus the all-reduce latency when a TP ≥ 2 point is among
them) are fitted by Gauss–Newton least squares on relative errors, with a weak pull towards the stated
defaults so that a single configuration still gives a well-posed fit. The file records, per card, the
constants, the points used, the vLLM version, the date and the fit's own error.

:func:`read_calibration` reads the file for the planner; :func:`evaluate` puts predictions next to
measurements (``benchmarks/perf_holdout.py`` uses it on points that were not fitted).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from runner.plan import memory
from runner.plan.cards import CardFacts, card_facts
from runner.plan.perf import Calibration, Layout, ModelDims, Workload, predict

GIB = 2**30
SCHEMA = 1
# What is compared, and the weight of each in the fit: throughput is what the planner ranks by.
METRICS = {"output_tokens_per_s": 2.0, "ttft_ms": 1.0, "tpot_ms": 1.0}
MEASURED_KEYS = {"output_tokens_per_s": "output_throughput", "ttft_ms": "median_ttft_ms", "tpot_ms": "median_tpot_ms"}
# Bounds of the fitted constants: physically possible values, so that a bad point cannot push the fit
# to nonsense (an efficiency above 1, a negative overhead).
BOUNDS = {
    "prefill_efficiency": (0.05, 1.0),
    "decode_efficiency": (0.2, 1.0),
    "step_overhead_ms": (0.0, 20.0),
    "layer_overhead_us": (0.0, 500.0),
    "sequence_overhead_us": (0.0, 500.0),
    "request_overhead_ms": (0.0, 200.0),
    "allreduce_latency_us": (0.5, 200.0),
}
PRIOR_WEIGHT = 0.05  # relative pull towards the defaults, per constant


@dataclass(frozen=True)
class BenchPoint:
    source: str
    label: str  # model, TP
    model: str
    card_name: str
    overrides: Mapping[str, Any]
    dims: ModelDims
    layout: Layout
    input_len: int
    output_len: int
    concurrency: int
    measured: Mapping[str, float]
    vllm: Optional[str]

    def card(self):
        return card_facts(self.card_name, self.overrides)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "source": self.source,
            "model": self.model,
            "tensor_parallel_size": self.layout.tensor_parallel_size,
            "input_len": self.input_len,
            "output_len": self.output_len,
            "concurrency": self.concurrency,
            "measured": {k: round(v, 3) for k, v in self.measured.items()},
        }


def find_manifests(paths: Iterable[str]) -> List[Path]:
    found: List[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(set(path.rglob("manifest.json")) | set(path.rglob("*.manifest.json"))))
    return found


def _get(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(key)
    return tree


def points_from_manifest(manifest: Mapping[str, Any], source: str = "") -> List[BenchPoint]:
    """One point per measured concurrency of a verified bench manifest; [] for anything else."""
    results = _get(manifest, "bench", "results") or []
    model = manifest.get("model") or {}
    fit = manifest.get("fit") or _get(manifest, "plan", "estimate", "fit") or {}
    plan = manifest.get("plan") or {}
    if manifest.get("status") != "verified" or not results or not model.get("hidden_size") or not fit:
        return []
    gpus = _get(manifest, "hardware", "gpus") or []
    devices = plan.get("devices") or [0]
    gpu = next((g for g in gpus if g.get("index") == devices[0]), gpus[0] if gpus else {})
    hw = _get(manifest, "config", "hw") or {}
    serve = _get(manifest, "config", "serve") or {}
    reported = manifest.get("vllm_reported") or {}
    workload = _get(manifest, "bench", "workload") or _get(manifest, "config", "bench") or {}
    tp = int(plan.get("tensor_parallel_size") or 1)
    weights_gib = reported.get("model_loading_gib") or fit.get("weights_gib_per_gpu")
    defaults = memory.serve_defaults(int(gpu.get("memory_total_bytes") or 0), gpu.get("name"))
    layout = Layout(
        tensor_parallel_size=tp,
        pipeline_parallel_size=int(plan.get("pipeline_parallel_size") or 1),
        weights_bytes_per_gpu=float(weights_gib) * GIB,
        kv_bytes_per_token=float(fit["kv_bytes_per_token"]),
        kv_cache_tokens=reported.get("kv_cache_tokens") or fit.get("kv_cache_tokens"),
        max_num_seqs=serve.get("max_num_seqs") or defaults.get("max_num_seqs"),
        max_num_batched_tokens=serve.get("max_num_batched_tokens") or defaults.get("max_num_batched_tokens"),
        quantization=serve.get("quantization"),
        interconnect=_get(manifest, "placement", "interconnect"),
    )
    dims = ModelDims.from_shape(_Shape(model))
    points = []
    for result in results:
        measured = {k: result.get(v) for k, v in MEASURED_KEYS.items()}
        if result.get("failed") or any(not isinstance(v, (int, float)) or v <= 0 for v in measured.values()):
            continue
        points.append(
            BenchPoint(
                source=source,
                label=f"{model.get('name')} TP={tp}",
                model=str(model.get("name")),
                card_name=str(gpu.get("name") or ""),
                overrides=hw,
                dims=dims,
                layout=layout,
                input_len=int(workload.get("input_len") or 0),
                output_len=int(workload.get("output_len") or 0),
                concurrency=int(result["concurrency"]),
                measured={k: float(v) for k, v in measured.items()},
                vllm=_get(manifest, "versions", "vllm"),
            )
        )
    return points


class _Shape:
    """The manifest's ``model`` section read as a ModelShape."""

    def __init__(self, model: Mapping[str, Any]):
        self.__dict__.update(model)
        self.num_experts = int(model.get("num_experts") or 1)
        self.experts_per_token = int(model.get("experts_per_token") or 2)


def points_from_tune_candidate(record: Mapping[str, Any], serve_manifest: Mapping[str, Any], source: str = ""):
    """A mode=tune candidate's probes as bench points: its serve run's manifest (the plan, vLLM's
    report) with every probe's figures as the bench results — the SLO misses too (they are
    measurements), not a probe whose benchmark failed."""
    probes = (record.get("search") or {}).get("probes") or []
    results = [p["figures"] for p in probes if not (p.get("figures") or {}).get("error")]
    bench = {"workload": _get(serve_manifest, "config", "bench") or {}, "results": results}
    return points_from_manifest({**serve_manifest, "bench": bench}, source)


def _tune_points(candidate: Path) -> List[BenchPoint]:
    try:
        record = json.loads(candidate.read_text())
        serve = json.loads((candidate.parent / "serve" / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    return points_from_tune_candidate(record, serve, str(candidate.parent))


def load_points(paths: Iterable[str]) -> List[BenchPoint]:
    """Every bench point under the paths: bench manifests, and mode=tune candidates (candidate.json)."""
    points: List[BenchPoint] = []
    for path in find_manifests(paths):
        if path.parent.name == "serve" and (path.parent.parent / "candidate.json").is_file():
            continue  # a tune candidate's serve run: its probes come with its candidate.json
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        points.extend(points_from_manifest(manifest, str(path)))
    for raw in paths:
        found = [Path(raw)] if Path(raw).name == "candidate.json" else sorted(Path(raw).rglob("candidate.json"))
        for candidate in found:
            points.extend(_tune_points(candidate))
    return points


def predicted(point: BenchPoint, cal: Calibration) -> Optional[Dict[str, float]]:
    card = point.card()
    workload = Workload(point.input_len, point.output_len, [point.concurrency])
    result = predict(point.dims, point.layout, card, workload, cal)
    if not result.predicted:
        return None
    p = result.points[0]
    return {"output_tokens_per_s": p.output_tokens_per_s, "ttft_ms": p.ttft_ms, "tpot_ms": p.tpot_ms}


def _residuals(points: Sequence[BenchPoint], cal: Calibration) -> np.ndarray:
    out = []
    for point in points:
        pred = predicted(point, cal)
        for metric, weight in METRICS.items():
            # log ratio: symmetric in over- and under-prediction, ~ relative error when small
            value = pred[metric] if pred else float("nan")
            out.append(weight * math.log(max(value, 1e-9) / point.measured[metric]))
    return np.asarray(out)


def fit(
    points: Sequence[BenchPoint],
    start: Optional[Calibration] = None,
    iterations: int = 40,
    names: Sequence[str] = Calibration.FITTED,
) -> Calibration:
    """Constants ``names`` minimising the weighted squared log errors over ``points`` (all of one card);
    the others keep their values in ``start``."""
    start = start or Calibration()
    names = list(names)
    if any(p.layout.tensor_parallel_size > 1 for p in points):
        names.append("allreduce_latency_us")
    card = points[0].card() if points else None
    prior = {n: getattr(start, n) for n in names}
    if prior.get("allreduce_latency_us") is None and isinstance(card, CardFacts):
        from runner.plan.perf import CostModel

        probe = CostModel(points[0].dims, points[0].layout, card, start)
        prior["allreduce_latency_us"] = probe.allreduce_latency_s * 1e6
    # Work in log space: every constant stays positive and steps are relative.
    theta = np.log([prior[n] if prior[n] > 0 else 1e-3 for n in names])
    theta0 = theta.copy()
    lo = np.log([BOUNDS[n][0] if BOUNDS[n][0] > 0 else 1e-3 for n in names])
    hi = np.log([BOUNDS[n][1] for n in names])

    def calibration(t: np.ndarray) -> Calibration:
        return start.with_constants(**{n: float(v) for n, v in zip(names, np.exp(t), strict=True)})

    def objective(t: np.ndarray) -> np.ndarray:
        return np.concatenate([_residuals(points, calibration(t)), PRIOR_WEIGHT * (t - theta0)])

    current = objective(theta)
    for _ in range(iterations):
        jac = np.empty((current.size, theta.size))
        for j in range(theta.size):
            step = np.zeros_like(theta)
            step[j] = 1e-4
            jac[:, j] = (objective(theta + step) - current) / 1e-4
        delta = np.linalg.lstsq(jac, -current, rcond=None)[0]
        # Halve the step until the cost falls: the model is piecewise (max of memory and compute time).
        improved = False
        for scale in (1.0, 0.5, 0.25, 0.125, 0.0625):
            trial = np.clip(theta + scale * delta, lo, hi)
            value = objective(trial)
            if np.sum(value**2) < np.sum(current**2):
                theta, current, improved = trial, value, True
                break
        if not improved or np.max(np.abs(scale * delta)) < 1e-5:
            break
    return calibration(theta)


def evaluate(points: Sequence[BenchPoint], cal: Calibration) -> List[Dict[str, Any]]:
    """Predicted next to measured, with the signed error in % per metric."""
    rows = []
    for point in points:
        pred = predicted(point, cal) or {}
        row: Dict[str, Any] = {
            "model": point.model,
            "tp": point.layout.tensor_parallel_size,
            "concurrency": point.concurrency,
            "source": point.source,
        }
        for metric in METRICS:
            measured, guess = point.measured[metric], pred.get(metric)
            row[f"{metric}_measured"] = measured
            row[f"{metric}_predicted"] = guess
            row[f"{metric}_error_pct"] = None if guess is None else 100.0 * (guess - measured) / measured
        rows.append(row)
    return rows


def mape(rows: Sequence[Mapping[str, Any]], metric: str) -> Optional[float]:
    errors = [abs(r[f"{metric}_error_pct"]) for r in rows if r.get(f"{metric}_error_pct") is not None]
    return sum(errors) / len(errors) if errors else None


def calibrate(points: Sequence[BenchPoint], date: Optional[str] = None) -> Dict[str, Any]:
    """The calibration file's content: one entry per card the points were measured on."""
    by_card: Dict[str, List[BenchPoint]] = {}
    skipped: List[str] = []
    for point in points:
        card = point.card()
        if isinstance(card, CardFacts):
            by_card.setdefault(card.key, []).append(point)
        else:
            skipped.append(f"{point.source}: {card.reason}")
    cards: Dict[str, Any] = {}
    for key, group in sorted(by_card.items()):
        cal = fit(group)
        rows = evaluate(group, cal)
        versions = sorted({p.vllm for p in group if p.vllm})
        constants = {n: _round4(getattr(cal, n)) for n in Calibration.CONSTANTS}
        cards[key] = {
            "card": key,
            "nvml_names": sorted({p.card_name for p in group}),
            "constants": {k: v for k, v in constants.items() if v is not None},
            "vllm": versions[0] if len(versions) == 1 else ", ".join(versions) or None,
            "date": date or _dt.date.today().isoformat(),
            "error": {f"{m}_mape_pct": _round(mape(rows, m)) for m in METRICS},
            "points": [p.to_dict() for p in group],
        }
    return {"schema": SCHEMA, "cards": cards, "skipped": skipped}


def _round4(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 2)


def read_calibration(path: Optional[str]) -> Optional[Dict[str, Any]]:
    """The file's parsed content for :meth:`runner.plan.perf.Calibration.from_file_data`; None when
    there is no file (the planner then says the card is uncalibrated)."""
    if not path:
        return None
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a calibration file of schema {SCHEMA}")
    return data


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["model       TP    c   tok/s meas   pred    err%   TTFT meas   pred   TPOT meas   pred"]
    for r in rows:
        lines.append(
            f"{r['model']:<10} {r['tp']:>3} {r['concurrency']:>4} {r['output_tokens_per_s_measured']:>9.1f} "
            f"{_num(r['output_tokens_per_s_predicted'], 9.1)} {_num(r['output_tokens_per_s_error_pct'], 7.1)} "
            f"{r['ttft_ms_measured']:>9.1f} {_num(r['ttft_ms_predicted'], 7.1)} "
            f"{r['tpot_ms_measured']:>9.2f} {_num(r['tpot_ms_predicted'], 7.2)}"
        )
    return "\n".join(lines)


def _num(value: Optional[float], spec: float) -> str:
    width, digits = str(spec).split(".")
    return f"{value:>{width}.{digits}f}" if value is not None else "—".rjust(int(width))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.measure.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="bench manifests, run dirs or sweep dirs")
    parser.add_argument("-o", "--output", required=True, help="the calibration JSON to write")
    args = parser.parse_args(argv)
    points = load_points(args.paths)
    if not points:
        print(f"error: no verified bench manifest with results under {' '.join(args.paths)}", file=sys.stderr)
        return 2
    data = calibrate(points)
    Path(args.output).write_text(json.dumps(data, indent=2) + "\n")
    for key, entry in data["cards"].items():
        consts = ", ".join(f"{k} {v}" for k, v in entry["constants"].items())
        errors = ", ".join(f"{k} {v}" for k, v in entry["error"].items())
        print(f"{key}: {len(entry['points'])} point(s), vLLM {entry['vllm']}: {consts}\n  fit error: {errors}")
    for line in data["skipped"]:
        print(f"skipped {line}")
    print(f"wrote {args.output}")
    return 0


def summary_rows(points: Sequence[BenchPoint], cal: Calibration) -> Tuple[List[Dict[str, Any]], str]:
    rows = evaluate(points, cal)
    return rows, _table(rows)


if __name__ == "__main__":
    sys.exit(main())
