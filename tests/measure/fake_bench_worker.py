"""A stand-in for vLLM's benchmark behind runner/measure/bench_worker.py's own job loop and
protocol (``bench_worker.main`` with another job): ``python -m tests.measure.fake_bench_worker
--status-fd N``, as BenchSession(worker_module=...) starts it. A job's ``--fake`` says what it does:

- ``write`` (the default): save a result JSON where ``--result-dir``/``--result-filename`` say,
  print ``ran pid=<pid>``;
- ``hang MARKER``: start a grandchild that sleeps with MARKER in its argv, then sleep;
- ``raise``: raise RuntimeError("boom"); ``exit``: sys.exit(3); ``nothing``: save nothing;
- ``die``: the worker process itself exits (code 5) without a status line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from runner.measure import bench_worker

RESULT = {
    "num_prompts": 4,
    "max_concurrency": None,
    "duration": 1.5,
    "completed": 4,
    "failed": 0,
    "total_input_tokens": 128,
    "total_output_tokens": 32,
    "request_throughput": 2.5,
    "output_throughput": 20.0,
    "total_token_throughput": 100.0,
    "median_ttft_ms": 12.5,
    "p99_ttft_ms": 30.0,
}


def _flag(args: List[str], name: str, default: str = "") -> str:
    return args[args.index(name) + 1] if name in args else default


def fake_job(args: List[str]) -> None:
    action = _flag(args, "--fake", "write")
    if action == "write":
        path = Path(_flag(args, "--result-dir", ".")) / _flag(args, "--result-filename")
        path.write_text(json.dumps(RESULT))
        print(f"ran pid={os.getpid()} argv0={sys.argv[0]}")
    elif action == "hang":
        marker = args[args.index("--fake") + 2]
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", marker])
        time.sleep(120)
    elif action == "raise":
        print("about to fail", flush=True)
        raise RuntimeError("boom")
    elif action == "exit":
        sys.exit(3)
    elif action == "die":
        sys.stdout.flush()
        os._exit(5)


if __name__ == "__main__":
    sys.exit(bench_worker.main(make_job=lambda: fake_job))
