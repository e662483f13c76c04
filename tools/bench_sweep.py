"""Wall time of a TP sweep: the runner's `-m mode=bench` against a plain loop of `vllm serve`
+ `vllm bench serve` over the same points, side by side on the same machine.

The plain loop is what a person does today: for each point start vLLM (the exact argv and
environment the runner plans — taken from `mode=plan`, so both sides run the same server),
wait for /v1/models, run vLLM's bench client once per concurrency (the same command the
runner runs), stop vLLM. The runner's side is one `python -m runner -m mode=bench …`
command, which also verifies each point, writes manifests and the sweep report. Rounds
alternate (loop, runner, loop, …). Usage, from the repository root:

    .venv/bin/python tools/bench_sweep.py [--rounds 1] --tp 1,2 [overrides…]
    # H100 x4:  python3 tools/bench_sweep.py --tp 1,2,4 hw=auto model=llama3-8b model.load_format=dummy
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
sys.path.insert(0, str(ROOT))

from runner import bench  # noqa: E402
from runner.process import free_port  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
from bench_ready import planned, stop, wait_listed  # noqa: E402


def plain_loop(overrides: list, tps: list, workload: dict, work: Path) -> float:
    """Every point by hand: serve, wait, bench each concurrency, stop."""
    started = time.time()
    for tp in tps:
        port = free_port()
        plan = planned([*overrides, f"serve.tensor_parallel_size={tp}", f"serve.port={port}"], work / f"plan-{tp}")
        if plan.get("problems"):
            print(f"  TP={tp}: the planner refuses it ({plan['problems'][0]['text']}); a plain loop would launch and fail")
            continue
        env = {**os.environ, **plan["env"]}
        log = open(work / f"vllm-{tp}.log", "w")
        proc = subprocess.Popen(plan["argv"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_listed(port, plan["model_name"], proc)
            for c in workload["concurrencies"]:
                argv = bench.bench_argv(plan["argv"][0], plan["url"], plan["model_name"], plan["model_path"], workload, c,
                                        work / f"bench-{tp}", f"c{c}.json")
                bench.run_bench(argv, env, float(workload.get("timeout_s", 1800)), work / f"bench-{tp}.log")
        finally:
            stop(proc, group=True)
    return time.time() - started


def runner_sweep(overrides: list, tps: list, work: Path) -> float:
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "runner", "-m", "mode=bench", *overrides,
                           f"serve.tensor_parallel_size={','.join(map(str, tps))}", f"hydra.sweep.dir={work}",
                           f"serve.port={free_port()}"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode not in (0, 2):  # 2: a point was rejected, which the plain loop skips too
        sys.exit(f"runner sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.time() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tp", default="1,2")
    ap.add_argument("overrides", nargs="*", default=["hw=cpu-2", "model=tiny-llama", "bench=cpu-small"])
    args = ap.parse_args()
    tps = [int(t) for t in args.tp.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    # the workload both sides run: the runner's composed bench config
    plan_dir = work / "workload"
    subprocess.run([sys.executable, "-m", "runner", "mode=plan", f"hydra.run.dir={plan_dir}", *args.overrides], cwd=ROOT, capture_output=True)
    workload = json.loads((plan_dir / "manifest.json").read_text())["config"]["bench"]
    workload["request_rate"] = workload.get("request_rate") or "inf"
    # warm the model files and vLLM's compile cache once, so neither side pays for them alone
    runner_sweep(args.overrides, tps, work / "warm")
    loops, runs = [], []
    for i in range(args.rounds):
        loops.append(plain_loop(args.overrides, tps, workload, work / f"loop-{i}"))
        runs.append(runner_sweep(args.overrides, tps, work / f"runner-{i}"))
        print(f"round {i + 1}: plain loop {loops[-1]:.1f} s, runner sweep {runs[-1]:.1f} s", flush=True)
    loop, run = statistics.median(loops), statistics.median(runs)
    print(f"points: TP={args.tp}  overrides: {' '.join(args.overrides)}")
    print(f"plain vllm serve + vllm bench serve loop: median {loop:.1f} s")
    print(f"runner -m mode=bench (verify, manifests, report): median {run:.1f} s")
    print(f"runner / plain loop: {run / loop:.3f}")
    print(f"runner's report: {work / f'runner-{args.rounds - 1}' / 'report.md'}")


if __name__ == "__main__":
    main()
