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
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
FLOOR = [sys.executable, "-c", "import hydra, omegaconf, structlog"]
CASES = {
    "cpu-2 tiny-llama": ["hw=cpu-2", "model=tiny-llama"],
    "nvlink-4gpu llama70b dummy": ["hw=nvlink-4gpu", "model=llama70b", "model.load_format=dummy"],
}
GOAL_S = 0.5


def _wall(argv: Sequence[str], cwd: Path) -> float:
    return _timed(argv, cwd)[0]


def _timed(argv: Sequence[str], cwd: Path) -> Tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and its children). On a loaded
    machine the wall time also counts the waits for a core; the CPU time is the work itself."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return took, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    env_note = f"{os.cpu_count()} CPUs, {sys.executable}"
    # one warm-up of each, so the first measured run does not pay for a cold page cache
    _wall(FLOOR, ROOT)
    floor: List[float] = []
    floor_cpu: List[float] = []
    walls = {name: [] for name in CASES}
    cpus = {name: [] for name in CASES}
    totals = {name: [] for name in CASES}
    for i in range(args.repeats):  # interleaved, so a burst of load hits every figure alike
        wall, cpu = _timed(FLOOR, ROOT)
        floor.append(wall)
        floor_cpu.append(cpu)
        for name, overrides in CASES.items():
            run_dir = work / f"{name.replace(' ', '_')}-{i}"
            argv = [sys.executable, "-m", "runner", *overrides, "mode=plan", f"hydra.run.dir={run_dir}"]
            wall, cpu = _timed(argv, ROOT)
            walls[name].append(wall)
            cpus[name].append(cpu)
            manifest = json.loads((run_dir / "manifest.json").read_text())
            totals[name].append(manifest["timings"]["total_s"])
    base = statistics.median(floor)
    base_cpu = statistics.median(floor_cpu)
    load = os.getloadavg()[0]
    print(f"machine: {env_note}; median of {args.repeats}; load average at the end {load:.2f}")
    print(f"(a) import floor (hydra + omegaconf + structlog): {base:.3f} s wall, {base_cpu:.3f} s CPU")
    worst = 0.0
    for name in CASES:
        wall = statistics.median(walls[name])
        total = statistics.median(totals[name])
        worst = max(worst, wall - base)
        cpu = statistics.median(cpus[name])
        print(
            f"(b) mode=plan {name}: {wall:.3f} s wall, +{wall - base:.3f} s over the floor; "
            f"{cpu:.3f} s CPU, +{cpu - base_cpu:.3f} s over the floor's"
        )
        print(f"(c) mode=plan {name}: manifest timings.total_s {total:.3f} s")
    verdict = "within" if worst <= GOAL_S else "OVER"
    print(f"worst difference over the floor: {worst:.3f} s ({verdict} the {GOAL_S} s goal)")


if __name__ == "__main__":
    main()
