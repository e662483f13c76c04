"""mode=tune against the exhaustive grid: the same space, SLO and workload, measured twice — once as the
tune runs (predicted best first, pruning on), once with ``tune.prune=false`` (every candidate that plans
is launched and bisected with the same bench and search). Prints both winners, their figures, and the
ratio of GPU seconds (launch + bench, from the candidates' manifests and bench runs). Usage, from the
repository root (the overrides are the tune's own):

    .venv/bin/python benchmarks/tune_vs_grid.py --work outputs/tune-vs-grid \\
        hw=auto model=llama3-8b model.load_format=dummy bench=h100-quick \\
        bench.input_len=512 bench.output_len=128 \\
        tune.slo.ttft_p99_ms=500 tune.slo.tpot_p99_ms=15 \\
        '+tune.space.serve.quantization=[null,fp8]' '+tune.space.serve.max_num_seqs=[64,256]'

Each side gets its own run dir under ``--work`` (``tune/``, ``grid/``); running the script again resumes
both (nothing measured is measured twice). ``--grid-first`` runs the grid before the tune, so that a warm
compile cache does not favour the side that runs second; ``--warm-machine`` launches the base configuration
once, untimed, before either side, so that neither pays the machine's first vLLM start. Writes
``WORK/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]


def run_side(work: Path, name: str, overrides: List[str]) -> Dict[str, Any]:
    run_dir = work / name
    argv = [sys.executable, "-m", "runner", *overrides, "mode=tune", f"hydra.run.dir={run_dir}"]
    if name == "grid":
        argv.insert(-1, "tune.prune=false")
    print("$ " + " ".join(argv), flush=True)
    done = subprocess.run(argv, cwd=ROOT)
    result = json.loads((run_dir / "tune.json").read_text())
    result["exit_code"] = done.returncode
    return result


def side_summary(result: Dict[str, Any]) -> Dict[str, Any]:
    winner = next((c for c in result["candidates"] if c["id"] == result.get("winner")), None)
    return {
        "winner": winner["label"] if winner else None,
        "measured": winner["measured"] if winner else None,
        "gpu_s": result["gpu_s"],
        "launched": sum(1 for c in result["candidates"] if c["state"] in ("measured", "failed")),
        "pruned": sum(1 for c in result["candidates"] if c["state"] == "pruned"),
        "refused": sum(1 for c in result["candidates"] if c["state"] == "refused"),
        "tied_with_winner": [
            c["label"] for c in result["candidates"] if c["id"] in (result.get("tied_with_winner") or [])
        ],
        "exit_code": result["exit_code"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, help="a directory for both sides' run dirs and summary.json")
    parser.add_argument("--grid-first", action="store_true", help="run the exhaustive grid before the tune")
    parser.add_argument(
        "--warm-machine",
        action="store_true",
        help="first one untimed mode=check launch of the base configuration, so that neither side pays the "
        "machine's first vLLM start (on one H200 it was 224 s to ready against 74 s warm)",
    )
    parser.add_argument("overrides", nargs="+", help="the tune's overrides (space, SLO, workload, hw, model)")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.warm_machine:
        base = [o for o in args.overrides if not o.lstrip("+").startswith("tune.")]
        argv = [sys.executable, "-m", "runner", *base, "mode=check", f"hydra.run.dir={work / 'warm-machine'}"]
        print("$ " + " ".join(argv), flush=True)
        subprocess.run(argv, cwd=ROOT)
    order = ["grid", "tune"] if args.grid_first else ["tune", "grid"]
    sides = {name: side_summary(run_side(work, name, args.overrides)) for name in order}
    tune, grid = sides["tune"], sides["grid"]
    ratio = tune["gpu_s"] / grid["gpu_s"] if grid["gpu_s"] else None
    summary = {
        "tune": tune,
        "grid": grid,
        "same_winner": tune["winner"] == grid["winner"],
        # the grid's named winner, or one it measured as tied with it (rank.winner: within the band, or
        # the same server at both best loads)
        "tune_winner_in_grid_tie": tune["winner"] in [grid["winner"], *grid["tied_with_winner"]],
        "gpu_time_ratio": ratio,
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name in ("tune", "grid"):
        s = sides[name]
        figures = s["measured"] or {}
        print(
            f"{name}: winner {s['winner']} ({figures.get('tokens_per_s_per_gpu') or 0:.1f} tok/s/GPU at "
            f"load {figures.get('load')}), {s['launched']} launched, {s['pruned']} pruned, {s['refused']} refused, "
            f"GPU time {s['gpu_s']:.1f} s"
        )
    if grid["tied_with_winner"]:
        print(f"grid: tied with its winner: {'; '.join(grid['tied_with_winner'])}")
    print(f"same winner: {summary['same_winner']}; tune / grid GPU time: {ratio:.2f}" if ratio else "no grid GPU time")
    return 0 if summary["same_winner"] else 1


if __name__ == "__main__":
    sys.exit(main())
