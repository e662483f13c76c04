"""Wall time of a TP sweep: the runner's `-m mode=bench` against a plain loop of `vllm serve`
+ `vllm bench serve` over the same points, side by side on the same machine.

The plain loop is what a person does today: for each point start vLLM (the exact argv and
environment the runner plans — taken from `mode=plan`, so both sides run the same server),
wait for /v1/models, run vLLM's bench client once per concurrency (the same command the
runner runs), stop vLLM. The runner's side is one `python -m runner -m mode=bench …`
command, which also verifies each point, writes manifests and the sweep report. Rounds
alternate (loop, runner, loop, …). By default a warm-up sweep first fills vLLM's compile
cache for both; with --separate-caches each side's run instead starts from its own empty
VLLM_CACHE_ROOT, so neither reuses what the other compiled (one round then costs one launch
per point and side, not three). Per-point and total times go to WORK/summary.json. Usage,
from the repository root:

    .venv/bin/python benchmarks/bench_sweep.py [--rounds 1] --tp 1,2 [overrides…]
    # H100 x4:  python3 benchmarks/bench_sweep.py --no-warm --separate-caches --tp 1,2,4 \
    #             bench=h100-quick hw=auto model=llama3-8b model.load_format=dummy
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's runner, installed or not

# run as a script, its own folder is on sys.path
from bench_ready import planned, stop, wait_listed  # noqa: E402

from runner.launch.process import free_port  # noqa: E402
from runner.measure import bench  # noqa: E402


def side_env(work: Path, separate: bool) -> dict:
    env = dict(os.environ)
    if separate:
        env["VLLM_CACHE_ROOT"] = str(work.parent / f"cache-{work.name}")
    return env


def plan_points(overrides: list, tps: list, work: Path) -> dict:
    """The runner's plan of every point (argv, environment, port), made before the loop's
    clock starts: a person typing the loop knows the commands already."""
    plans = {}
    for tp in tps:
        port = free_port()
        plan = planned(
            [*overrides, f"serve.tensor_parallel_size={tp}", f"serve.port={port}"],
            work / f"plan-{tp}",
            allow_rejected=True,
        )
        plans[tp] = {**plan, "port": port}
    return plans


def plain_loop(plans: dict, workload: dict, work: Path, separate: bool, points: dict) -> float:
    """Every point by hand: serve, wait, bench each concurrency, stop."""
    started = time.time()
    base_env = side_env(work, separate)
    for tp, plan in plans.items():
        point_started = time.time()
        if plan.get("problems"):
            print(f"  TP={tp}: the planner refuses it; a plain loop would launch it and fail", flush=True)
            continue
        port = plan["port"]
        env = {**base_env, **plan["env"]}
        log = open(work / f"vllm-{tp}.log", "w")
        proc = subprocess.Popen(plan["argv"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_listed(port, plan["model_name"], proc)
            for c in workload["concurrencies"]:
                argv = bench.bench_argv(
                    plan["argv"][0],
                    plan["url"],
                    plan["model_name"],
                    plan["model_path"],
                    workload,
                    c,
                    work / f"bench-{tp}",
                    f"c{c}.json",
                )
                bench.run_bench(argv, env, float(workload.get("timeout_s", 1800)), work / f"bench-{tp}.log")
        finally:
            stop(proc, group=True)
        points[tp] = round(time.time() - point_started, 1)
        print(f"  plain loop TP={tp}: {points[tp]:.1f} s", flush=True)
    return time.time() - started


def runner_sweep(overrides: list, tps: list, work: Path, separate: bool = False, points: dict = None) -> float:
    started = time.time()
    work.mkdir(parents=True, exist_ok=True)
    with open(work.parent / f"{work.name}.log", "w") as log:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "runner",
                "-m",
                "mode=bench",
                *overrides,
                f"serve.tensor_parallel_size={','.join(map(str, tps))}",
                f"hydra.sweep.dir={work}",
                f"serve.port={free_port()}",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=side_env(work, separate),
        )
    if done.returncode not in (0, 2):  # 2: a point was rejected, which the plain loop skips too
        sys.exit(f"runner sweep failed ({done.returncode}): read {work.parent / f'{work.name}.log'}")
    for manifest in sorted(work.glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        tp = m.get("config", {}).get("serve", {}).get("tensor_parallel_size")
        total = (m.get("timings") or {}).get("total_s")
        if points is not None and tp is not None:
            points[tp] = total
    return time.time() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tp", default="1,2")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm-up sweep")
    ap.add_argument(
        "--separate-caches", action="store_true", help="each side's run starts from its own empty VLLM_CACHE_ROOT"
    )
    ap.add_argument("--work", help="folder for the runs (default: a new temporary one)")
    ap.add_argument("overrides", nargs="*", default=["hw=cpu-2", "model=tiny-llama", "bench=cpu-small"])
    args = ap.parse_args()
    tps = [int(t) for t in args.tp.split(",")]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    # the workload both sides run: the runner's composed bench config
    plan_dir = work / "workload"
    subprocess.run(
        [sys.executable, "-m", "runner", "mode=plan", f"hydra.run.dir={plan_dir}", *args.overrides],
        cwd=ROOT,
        capture_output=True,
    )
    workload = json.loads((plan_dir / "manifest.json").read_text())["config"]["bench"]
    workload["request_rate"] = workload.get("request_rate") or "inf"
    if not args.no_warm:
        # warm the model files and vLLM's compile cache once, so neither side pays for them alone
        runner_sweep(args.overrides, tps, work / "warm")
    loops, runs, rounds = [], [], []
    for i in range(args.rounds):
        loop_points, runner_points = {}, {}
        (work / f"loop-{i}").mkdir(parents=True, exist_ok=True)
        plans = plan_points(args.overrides, tps, work / f"loop-{i}")
        loops.append(plain_loop(plans, workload, work / f"loop-{i}", args.separate_caches, loop_points))
        runs.append(runner_sweep(args.overrides, tps, work / f"runner-{i}", args.separate_caches, runner_points))
        rounds.append(
            {
                "loop_s": round(loops[-1], 1),
                "runner_s": round(runs[-1], 1),
                "loop_points_s": loop_points,
                "runner_points_total_s": runner_points,
            }
        )
        print(f"round {i + 1}: plain loop {loops[-1]:.1f} s, runner sweep {runs[-1]:.1f} s", flush=True)
        (work / "summary.json").write_text(
            json.dumps(
                {
                    "tp": tps,
                    "overrides": args.overrides,
                    "workload": workload,
                    "warm_up": not args.no_warm,
                    "separate_caches": args.separate_caches,
                    "rounds": rounds,
                },
                indent=2,
            )
        )
    loop, run = statistics.median(loops), statistics.median(runs)
    print(f"points: TP={args.tp}  overrides: {' '.join(args.overrides)}")
    print(f"plain vllm serve + vllm bench serve loop: median {loop:.1f} s")
    print(f"runner -m mode=bench (verify, manifests, report): median {run:.1f} s")
    print(f"runner / plain loop: {run / loop:.3f}")
    print(f"runner's report: {work / f'runner-{args.rounds - 1}' / 'report.md'}")


if __name__ == "__main__":
    main()
