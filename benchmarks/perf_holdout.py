"""How well the performance model predicts what it was not fitted on.

Calibrates on ONE configuration of the H100 x4 sweeps in docs/validation (by default llama3-8b TP=1 of
the first sweep: its two concurrencies) and predicts every other (model, TP, concurrency) measured there:
llama3-8b TP=2 and 4 (two sweeps each), llama70b TP=2 and 4. Prints the constants, the table, and the
mean absolute percentage error (MAPE) of output tokens/s, median TTFT and median TPOT over the held-out
points; the re-run of the calibration configuration (the comparison sweep's TP=1) is shown apart, as a
measure of run-to-run noise, not of the model.

    .venv/bin/python benchmarks/perf_holdout.py [--calibrate-on MODEL:TP] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.measure import calibrate as cal  # noqa: E402
from runner.plan.perf import Calibration  # noqa: E402

SWEEPS = ROOT / "docs" / "validation" / "2026-11-27-h100x4-sweep"
FIRST_SWEEP = ("llama3-8b", "llama70b")  # the sweeps' own dirs; "comparison" is the re-run


def split(points, model: str, tp: int):
    def chosen(p):
        return p.model == model and p.layout.tensor_parallel_size == tp

    fitted = [p for p in points if chosen(p) and any(f"/{d}/" in p.source for d in FIRST_SWEEP)]
    rerun = [p for p in points if chosen(p) and p not in fitted]
    held = [p for p in points if not chosen(p)]
    return fitted, rerun, held


def each(points) -> int:
    """Leave-one-configuration-in: how much the answer depends on which configuration is measured."""
    print("calibrated on      held-out MAPE: tok/s   TTFT   TPOT   constants")
    for model, tp in sorted({(p.model, p.layout.tensor_parallel_size) for p in points}):
        fitted, _, held = split(points, model, tp)
        calibration = cal.fit(fitted)
        rows = cal.evaluate(held, calibration)
        figures = "  ".join(f"{cal.mape(rows, m):5.1f} %" for m in cal.METRICS)
        constants = ", ".join(f"{n} {getattr(calibration, n):.3g}" for n in Calibration.FITTED)
        print(f"{model} TP={tp:<5} {len(held):>3} points  {figures}   {constants}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibrate-on", default="llama3-8b:1", help="MODEL:TP (default llama3-8b:1)")
    parser.add_argument(
        "--per-step",
        action="store_true",
        help="the alternative structure: a fixed cost per step (step_overhead_ms) instead of per layer",
    )
    parser.add_argument(
        "--each", action="store_true", help="calibrate on each configuration in turn; one line of MAPEs each"
    )
    parser.add_argument("--json", help="write the rows and figures here")
    args = parser.parse_args(argv)
    points = cal.load_points([str(SWEEPS)])
    if args.each:
        return each(points)
    model, tp = args.calibrate_on.split(":")
    fitted, rerun, held = split(points, model, int(tp))
    if not fitted:
        print(f"no points for {args.calibrate_on} under {SWEEPS}", file=sys.stderr)
        return 2
    if args.per_step:
        names = [n if n != "layer_overhead_us" else "step_overhead_ms" for n in Calibration.FITTED]
        calibration = cal.fit(fitted, Calibration(layer_overhead_us=0.0, step_overhead_ms=1.0), names=names)
    else:
        names = list(Calibration.FITTED)
        calibration = cal.fit(fitted)
    constants = {n: round(getattr(calibration, n), 4) for n in names}
    print(f"calibrated on {args.calibrate_on}: {len(fitted)} point(s) ({', '.join(p.source for p in fitted[:1])} …)")
    print("constants: " + ", ".join(f"{k} {v}" for k, v in constants.items()))
    print("all-reduce latency: the interconnect's stated default (not fitted from TP=1)\n")
    figures = {}
    for title, group in (("fitted", fitted), ("re-run of the fitted configuration", rerun), ("held out", held)):
        if not group:
            continue
        rows, table = cal.summary_rows(group, calibration)
        mapes = {m: cal.mape(rows, m) for m in cal.METRICS}
        figures[title] = {"points": len(rows), "mape_pct": mapes, "rows": rows}
        print(f"## {title} ({len(rows)} points)\n{table}")
        print("MAPE: " + ", ".join(f"{m} {v:.1f} %" for m, v in mapes.items() if v is not None) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"constants": constants, **figures}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
