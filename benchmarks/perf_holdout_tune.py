"""How well the performance model predicts a tune's measured points from ONE of its configurations.

Reads a mode=tune run dir (the exhaustive grid, ``tune.prune=false``, measures every candidate), takes
each measured candidate's probes (every concurrency its bisection ran: the SLO misses too), calibrates
on one candidate and predicts every (candidate, concurrency) of the others. Prints, per calibration
choice (or the one given), the held-out MAPE of output tokens/s, median TTFT and median TPOT, and the
uncalibrated model's MAPE over every point.

    .venv/bin/python benchmarks/perf_holdout_tune.py RUN_DIR [--calibrate-on CANDIDATE_ID] [--json OUT]

``--calibrate-from PATH…`` calibrates on other bench manifests instead (another machine's run of the same
card, say) and scores every point of RUN_DIR: none of them was fitted on.
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


def by_candidate(run_dir: Path, drop_first: bool = False):
    """candidate id → its points, in probe order (``drop_first``: without each server's first probe)."""
    groups = {}
    for candidate in sorted((run_dir / "candidates").glob("*/candidate.json")):
        points = cal.load_points([str(candidate)])[1 if drop_first else 0 :]
        if points:
            groups[candidate.parent.name] = points
    return groups


def line(rows) -> str:
    return "  ".join(f"{m} {cal.mape(rows, m):5.1f} %" for m in cal.METRICS if cal.mape(rows, m) is not None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a mode=tune run dir (tune.prune=false: every candidate measured)")
    parser.add_argument("--calibrate-on", help="one candidate id (default: each in turn)")
    parser.add_argument(
        "--drop-first",
        action="store_true",
        help="leave out each server's first probe (run on a cold server before tune.warmup existed)",
    )
    parser.add_argument(
        "--calibrate-from", nargs="+", help="bench manifests / run dirs to calibrate on (every RUN_DIR point held out)"
    )
    parser.add_argument("--json", help="write the rows and figures here")
    args = parser.parse_args(argv)
    groups = by_candidate(Path(args.run_dir), args.drop_first)
    if not groups:
        print(f"no measured candidate under {args.run_dir}/candidates", file=sys.stderr)
        return 2
    every = [p for points in groups.values() for p in points]
    default_rows = cal.evaluate(every, Calibration())
    print(f"{len(groups)} measured candidate(s), {len(every)} points")
    print(f"uncalibrated (stated defaults), every point: {line(default_rows)}")
    figures = {"uncalibrated": {m: cal.mape(default_rows, m) for m in cal.METRICS}, "calibrated_on": {}}
    if args.calibrate_from:
        outside = cal.load_points(args.calibrate_from)
        if not outside:
            print(f"no bench points under {' '.join(args.calibrate_from)}", file=sys.stderr)
            return 2
        calibration = cal.fit(outside)
        rows = cal.evaluate(every, calibration)
        cards = sorted({p.card_name for p in outside})
        print(
            f"calibrated on {len(outside)} point(s) of {' '.join(args.calibrate_from)} ({', '.join(cards)}); "
            f"every point of {args.run_dir} held out: {line(rows)}"
        )
        constants = {n: round(getattr(calibration, n), 4) for n in Calibration.FITTED}
        print("  constants: " + ", ".join(f"{k} {v}" for k, v in constants.items()))
        figures["calibrated_from"] = {
            "paths": args.calibrate_from,
            "constants": constants,
            "mape_pct": {m: cal.mape(rows, m) for m in cal.METRICS},
            "rows": rows,
        }
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
        return 0
    chosen = [args.calibrate_on] if args.calibrate_on else list(groups)
    for cid in chosen:
        if cid not in groups:
            print(f"{cid}: not a measured candidate of {args.run_dir}", file=sys.stderr)
            return 2
        calibration = cal.fit(groups[cid])
        held = [p for other, points in groups.items() if other != cid for p in points]
        rows = cal.evaluate(held, calibration)
        constants = {n: round(getattr(calibration, n), 4) for n in Calibration.FITTED}
        print(f"calibrated on {cid} ({len(groups[cid])} points); held out {len(held)} points: {line(rows)}")
        print("  constants: " + ", ".join(f"{k} {v}" for k, v in constants.items()))
        figures["calibrated_on"][cid] = {
            "constants": constants,
            "held_out_points": len(held),
            "mape_pct": {m: cal.mape(rows, m) for m in cal.METRICS},
            "rows": rows,
        }
        if args.calibrate_on:
            print(cal.summary_rows(held, calibration)[1])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
