"""Preflight collective check: a few seconds of all-reduce over the devices vLLM will use.

A broken P2P path makes NCCL hang, and vLLM only says so when its 10-minute watchdog fires.
This runs the same collective first, under a short timeout, and measures what it gets.

Run by the runner with the launch interpreter (the one that has torch), as a file, so it
needs nothing but the standard library and torch:

    python runner/preflight/collective.py --world 2 --backend nccl --size-mib 64 --iters 20

Prints one JSON line: ok, backend, world, size and the median time per all-reduce, with the
algorithm and bus bandwidths as nccl-tests defines them (bus = algorithm x 2(n-1)/n).
The caller sets CUDA_VISIBLE_DEVICES; rank r uses the r-th visible GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from datetime import timedelta


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, args: argparse.Namespace, port: int, queue) -> None:
    import torch
    import torch.distributed as dist

    if args.backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)

        def sync() -> None:
            torch.cuda.synchronize(device)
    else:
        device = torch.device("cpu")

        def sync() -> None:
            pass

    try:
        dist.init_process_group(
            args.backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=args.world,
            timeout=timedelta(seconds=args.timeout_s),
        )
        # Correctness first: every rank contributes rank+1, so each must see n(n+1)/2.
        probe = torch.full((1024,), float(rank + 1), device=device)
        dist.all_reduce(probe)
        sync()
        expected = args.world * (args.world + 1) / 2
        correct = bool(torch.all(probe == expected).item())
        data = torch.zeros(args.size_mib * 2**20 // 4, dtype=torch.float32, device=device)
        for _ in range(args.warmup):
            dist.all_reduce(data)
        sync()
        times = []
        for _ in range(args.iters):
            start = time.perf_counter()
            dist.all_reduce(data)
            sync()
            times.append(time.perf_counter() - start)
        dist.barrier()
        if rank == 0:
            queue.put({"ok": correct, "correct": correct, "times": times})
        dist.destroy_process_group()
    except Exception as exc:  # reported by rank 0's parent as the failure
        queue.put({"ok": False, "error": f"rank {rank}: {type(exc).__name__}: {exc}"[:500]})


def run(args: argparse.Namespace) -> dict:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, args, port, queue), daemon=True) for r in range(args.world)]
    started = time.perf_counter()
    for p in procs:
        p.start()
    deadline = started + args.timeout_s
    result = None
    while time.perf_counter() < deadline:
        try:
            result = queue.get(timeout=0.2)
            break
        except Exception:  # queue.Empty
            if all(p.exitcode is not None for p in procs) and queue.empty():
                codes = [p.exitcode for p in procs]
                result = {"ok": False, "error": f"ranks exited without a result (exit codes {codes})"}
                break
    if result is None:
        result = {
            "ok": False,
            "hung": True,
            "error": f"all-reduce over {args.world} ranks did not finish in {args.timeout_s:g} s",
        }
    for p in procs:
        p.join(timeout=5 if result.get("ok") else 0.5)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
    out = {
        "backend": args.backend,
        "world": args.world,
        "size_mib": args.size_mib,
        "iters": args.iters,
        "seconds": round(time.perf_counter() - started, 2),
    }
    times = result.pop("times", None)
    out.update(result)
    if times:
        median = statistics.median(times)
        size = args.size_mib * 2**20
        algbw = size / median / 1e9
        out.update(
            median_ms=round(median * 1e3, 3),
            algbw_gbps=round(algbw, 2),
            busbw_gbps=round(algbw * 2 * (args.world - 1) / args.world, 2),
        )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--backend", choices=("nccl", "gloo"), default="nccl")
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = run(args)
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
