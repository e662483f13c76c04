"""Time to ready: the runner against the same vLLM command typed by hand, side by side.

Both are timed the same way, from outside: from the moment the command starts until
/v1/models lists the model. Runs alternate (hand, runner, hand, …) so drift on a noisy
machine hits both. Also prints the runner's own overhead before it spawns vLLM (from its
manifests). Usage, from the repository root, with the runner's venv:

    .venv/bin/python benchmarks/bench_ready.py [--repeats 3] [hydra overrides for both, e.g. hw=cpu-2]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's runner, installed or not
from runner.launch.process import free_port  # noqa: E402


def wait_listed(port: int, name: str, proc: subprocess.Popen, timeout: float = 1200) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                if any(m["id"] == name for m in json.loads(r.read())["data"]):
                    return time.time()
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError("timed out")


def stop(proc: subprocess.Popen, group: bool) -> None:
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGINT)
    except ProcessLookupError:  # it died on its own (the caller reports why)
        return
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def planned(overrides: list[str], run_dir: Path, allow_rejected: bool = False) -> dict:
    """The runner's own plan, so the hand-typed command is exactly what it would launch; its
    ``problems`` are the planner's refusals (a rejected plan exits here unless allowed)."""
    out = subprocess.run(
        [sys.executable, "-m", "runner", "mode=plan", f"hydra.run.dir={run_dir}", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    manifest = run_dir / "manifest.json"
    if out.returncode != 0 and not (allow_rejected and out.returncode == 2 and manifest.exists()):
        sys.exit(f"plan failed:\n{out.stderr[-2000:]}")
    m = json.loads(manifest.read_text())
    return {**m["plan"], "problems": m.get("problems") or []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("overrides", nargs="*", default=["hw=cpu-2", "model=tiny-llama", "serve.tensor_parallel_size=2"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ready-"))
    # Generate the model once (a runner check), so neither side pays for writing it.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            "mode=check",
            f"hydra.run.dir={work}/warm",
            f"serve.port={free_port()}",
            *args.overrides,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    hand, runner, overhead = [], [], []
    for i in range(args.repeats):
        # --- by hand: the environment and argv a person would type (those the runner plans)
        port = free_port()
        plan = planned([*args.overrides, f"serve.port={port}"], work / f"plan{i}")
        env = {**os.environ, **plan["env"]}
        argv = [sys.executable, *plan["argv"][1:]]
        name = argv[argv.index("--served-model-name") + 1]
        with open(work / f"hand{i}.log", "wb") as log:
            t0 = time.time()
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            hand.append(wait_listed(port, name, proc) - t0)
            stop(proc, group=True)
        # --- the runner, serving, stopped with Ctrl-C once ready
        port = free_port()
        run_dir = work / f"runner{i}"
        t0 = time.time()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runner",
                "mode=serve",
                f"serve.port={port}",
                f"hydra.run.dir={run_dir}",
                *args.overrides,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        runner.append(wait_listed(port, name, proc) - t0)
        time.sleep(1.0)  # let it finish verifying before Ctrl-C
        stop(proc, group=False)
        overhead.append(json.loads((run_dir / "manifest.json").read_text())["timings"]["overhead_before_spawn_s"])
        print(
            f"round {i + 1}: by hand {hand[-1]:.1f} s, runner {runner[-1]:.1f} s "
            f"(overhead before spawn {overhead[-1]:.2f} s)",
            flush=True,
        )
    print()
    print(f"command: {' '.join(shlex.quote(a) for a in args.overrides)}  ({args.repeats} rounds, alternating)")
    print(f"time to ready, by hand : median {statistics.median(hand):.1f} s  {[round(x, 1) for x in hand]}")
    print(f"time to ready, runner  : median {statistics.median(runner):.1f} s  {[round(x, 1) for x in runner]}")
    print(f"runner / by hand       : {statistics.median(runner) / statistics.median(hand):.3f}")
    print(f"runner overhead before spawn: median {statistics.median(overhead):.2f} s  {overhead}")


if __name__ == "__main__":
    main()
