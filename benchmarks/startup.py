"""Start-up cost of `python -m runner … mode=plan` against the bare import floor.

Measures, median of N runs on this machine:
  (a) the floor: `python -c "import hydra, omegaconf, structlog"`;
  (b) the wall time of `python -m runner <overrides> mode=plan` for each case below;
  (c) the run's own figure from its manifest: ``timings.total_s`` (plan mode spawns nothing, so
      this is its ``overhead_before_spawn_s``: from the runner's import to the manifest);
and prints each with its difference over the floor. The goal: mode=plan within 0.5 s of it.

Usage: .venv/bin/python benchmarks/startup.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Sequence

ROOT = Path(__file__).resolve().parents[1]
FLOOR = [sys.executable, "-c", "import hydra, omegaconf, structlog"]
CASES = {
    "cpu-2 tiny-llama": ["hw=cpu-2", "model=tiny-llama"],
    "nvlink-4gpu llama70b dummy": ["hw=nvlink-4gpu", "model=llama70b", "model.load_format=dummy"],
}
GOAL_S = 0.5


def _wall(argv: Sequence[str], cwd: Path) -> float:
    t = time.perf_counter()
    done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    env_note = f"{os.cpu_count()} CPUs, {sys.executable}"
    # one warm-up of each, so the first measured run does not pay for a cold page cache
    _wall(FLOOR, ROOT)
    floor: List[float] = []
    walls = {name: [] for name in CASES}
    totals = {name: [] for name in CASES}
    for i in range(args.repeats):  # interleaved, so a burst of load hits every figure alike
        floor.append(_wall(FLOOR, ROOT))
        for name, overrides in CASES.items():
            run_dir = work / f"{name.replace(' ', '_')}-{i}"
            argv = [sys.executable, "-m", "runner", *overrides, "mode=plan", f"hydra.run.dir={run_dir}"]
            walls[name].append(_wall(argv, ROOT))
            manifest = json.loads((run_dir / "manifest.json").read_text())
            totals[name].append(manifest["timings"]["total_s"])
    base = statistics.median(floor)
    print(f"machine: {env_note}; median of {args.repeats}")
    print(f"(a) import floor (hydra + omegaconf + structlog): {base:.3f} s")
    worst = 0.0
    for name in CASES:
        wall = statistics.median(walls[name])
        total = statistics.median(totals[name])
        worst = max(worst, wall - base)
        print(f"(b) mode=plan {name}: {wall:.3f} s wall, +{wall - base:.3f} s over the floor")
        print(f"(c) mode=plan {name}: manifest timings.total_s {total:.3f} s")
    verdict = "within" if worst <= GOAL_S else "OVER"
    print(f"worst difference over the floor: {worst:.3f} s ({verdict} the {GOAL_S} s goal)")


if __name__ == "__main__":
    main()
