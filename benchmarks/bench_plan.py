"""How long `python -m runner mode=plan …` takes, start to exit (the user's wait), and the
planner alone in-process. Usage: .venv/bin/python benchmarks/bench_plan.py [--repeats 10] [overrides]"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's runner, installed or not


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument(
        "overrides", nargs="*", default=["hw=nvlink-4gpu", "model=llama70b", "serve.tensor_parallel_size=2"]
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    walls = []
    for i in range(args.repeats):
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "runner", "mode=plan", f"hydra.run.dir={work}/{i}", *args.overrides],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        walls.append(time.perf_counter() - t)
        if out.returncode != 0:
            sys.exit(f"exit {out.returncode}:\n{out.stderr[-1500:]}")

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from runner.app import CONF_DIR
    from runner.config.schema import register_configs
    from runner.plan.build import make_plan
    from runner.probe.hardware import probe_hardware

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = OmegaConf.to_object(compose("config", overrides=["mode=plan", *args.overrides]))
    probe = probe_hardware(with_topology=False)
    inner = []
    for _ in range(200):
        t = time.perf_counter()
        make_plan(cfg, probe, dict(cfg.model.hf_config) or None, "0.32.0", {}, python="python")
        inner.append(time.perf_counter() - t)
    print(f"overrides: {' '.join(args.overrides)}")
    print(
        f"python -m runner mode=plan, start to exit: median {statistics.median(walls):.3f} s over {args.repeats} "
        f"(min {min(walls):.3f}, max {max(walls):.3f})"
    )
    print(f"make_plan alone: median {statistics.median(inner) * 1e6:.0f} us over {len(inner)}")


if __name__ == "__main__":
    main()
