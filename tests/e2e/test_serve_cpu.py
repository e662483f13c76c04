"""End to end with real vLLM (the CPU build): launch, ready, verify, manifest, teardown.

Each vLLM start takes about a minute on two cores; these are the slow tier (marker e2e)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest

from tests.e2e_util import ROOT, free_port, load_manifest, processes_mentioning, run_runner

pytestmark = pytest.mark.e2e
SCHEMA = json.loads((ROOT / "runner" / "record" / "manifest.schema.json").read_text())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_check_tp2_verifies_and_leaves_nothing_running(tmp_path, cache_dir):
    port = free_port()
    run_dir = tmp_path / "run"
    result = run_runner(
        [
            "hw=cpu-2",
            "model=tiny-llama",
            "mode=check",
            "serve.tensor_parallel_size=2",
            "launch.collective_check=true",
            f"serve.port={port}",
            f"cache_dir={cache_dir}",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = load_manifest(run_dir)
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["status"] == "verified"
    # the preflight all-reduce ran over both ranks (gloo on the CPU), right, with a bandwidth
    [attempt] = manifest["collective"]["attempts"]
    assert manifest["collective"]["ok"] and attempt["backend"] == "gloo" and attempt["world"] == 2
    assert attempt["correct"] and attempt["busbw_gbps"] > 0 and attempt["median_ms"] > 0
    assert manifest["plan"]["tensor_parallel_size"] == 2
    assert manifest["plan"]["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    completion = manifest["verification"]["completion"]
    assert completion["text"].strip()
    assert completion["completion_tokens"] == 8 and completion["prompt_tokens"] > 0
    assert manifest["verification"]["models"] == ["tiny-llama"]
    assert manifest["vllm_reported"]["kv_cache_tokens"] > 0
    # vLLM-CPU's KV cache is exactly VLLM_CPU_KVCACHE_SPACE per rank: the plan predicts it to the token
    check = manifest["fit_check"]["kv_cache_tokens"]
    assert check["predicted"] == check["measured"] == manifest["vllm_reported"]["kv_cache_tokens"]
    assert manifest["versions"]["vllm"] and manifest["versions"]["torch"]
    timings = manifest["timings"]
    assert 0 < timings["overhead_before_spawn_s"] < timings["ready_s"] < timings["total_s"]
    assert manifest["teardown"]["survivors"] == []
    # vLLM really ran with two ranks, and it is gone now.
    log = (run_dir / "vllm.log").read_text()
    assert "tensor_parallel_size=2" in log or "world_size=2" in log
    assert processes_mentioning(f"--port {port}") == []
    assert (run_dir / "runner.jsonl").read_text().strip()
    assert (run_dir / ".hydra" / "config.yaml").exists()


def test_multirun_two_points_two_manifests(tmp_path, cache_dir):
    port = free_port()
    sweep_dir = tmp_path / "sweep"
    result = run_runner(
        [
            "-m",
            "hw=cpu-2",
            "model=tiny-llama",
            "mode=check",
            "serve.tensor_parallel_size=3,1,2",
            f"serve.port={port}",
            f"cache_dir={cache_dir}",
            f"hydra.sweep.dir={sweep_dir}",
        ]
    )
    # the infeasible point is rejected (the sweep's exit code says so) and the sweep goes on
    assert result.returncode == 2, result.stderr[-3000:]
    manifests = sorted(sweep_dir.glob("*/manifest.json"))
    assert len(manifests) == 3
    by_tp = {m["plan"]["tensor_parallel_size"]: m for m in map(lambda p: json.loads(p.read_text()), manifests)}
    assert set(by_tp) == {1, 2, 3}
    rejected = by_tp.pop(3)
    # rejected before anything started: no spawn, no readiness, no vLLM log in its run dir
    assert rejected["status"] == "rejected" and rejected["exit_code"] == 2
    assert not {"overhead_before_spawn_s", "spawn_s", "ready_s"} & set(rejected["timings"])
    assert not (Path(rejected["run_dir"]) / "vllm.log").exists()
    assert any("num_attention_heads=4" in p["message"] and p["fix"] for p in rejected["problems"])
    assert all(m["status"] == "verified" for m in by_tp.values())
    assert by_tp[1]["plan"]["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert processes_mentioning(f"--port {port}") == []


def test_rejected_tp_exits_2_and_starts_nothing(tmp_path, cache_dir):
    port = free_port()
    run_dir = tmp_path / "run"
    result = run_runner(
        [
            "hw=cpu-2",
            "model=tiny-llama",
            "mode=check",
            "serve.tensor_parallel_size=3",
            f"serve.port={port}",
            f"cache_dir={cache_dir}",
            f"hydra.run.dir={run_dir}",
        ],
        timeout=120,
    )
    assert result.returncode == 2
    manifest = load_manifest(run_dir)
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["status"] == "rejected"
    texts = " ".join(p["text"] for p in manifest["problems"])
    assert "num_attention_heads=4" in texts and "serve.tensor_parallel_size" in texts
    assert not (run_dir / "vllm.log").exists()
    assert processes_mentioning(f"--port {port}") == []


def test_default_command_serves_until_ctrl_c(tmp_path, cache_dir):
    """The README's run command: defaults only, serves, answers us, stops cleanly on Ctrl-C."""
    port = free_port()
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", f"serve.port={port}", f"cache_dir={cache_dir}", f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        deadline = time.time() + 900
        serving = None
        while time.time() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line.startswith("serving "):
                serving = line
                break
        assert serving, f"runner exited with {proc.returncode} before serving"
        assert f"http://127.0.0.1:{port}/v1" in serving
        manifest = load_manifest(run_dir)
        assert manifest["status"] == "verified" and "teardown" not in manifest
        # Unset TP: every core, reduced to what tiny-llama allows (1, 2 or 4): 2 on CI's two cores.
        cores = len(os.sched_getaffinity(0))
        assert manifest["plan"]["tensor_parallel_size"] == max(t for t in (1, 2, 4) if t <= cores)
        # A client of our own gets real tokens from the served model.
        body = json.dumps({"model": "tiny-llama", "prompt": "Hello", "max_tokens": 4, "ignore_eos": True}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"}
        )
        reply = json.loads(urllib.request.urlopen(req, timeout=60).read())
        assert reply["usage"]["completion_tokens"] == 4

        # 64 clients at once: every one answered in full.
        def ask(i: int) -> int:
            body = json.dumps(
                {"model": "tiny-llama", "prompt": f"Request {i}:", "max_tokens": 4, "ignore_eos": True}
            ).encode()
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"}
            )
            return json.loads(urllib.request.urlopen(req, timeout=300).read())["usage"]["completion_tokens"]

        with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
            assert list(pool.map(ask, range(64))) == [4] * 64
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    manifest = load_manifest(run_dir)
    assert manifest["status"] == "verified"
    assert manifest["stopped_by"] == "SIGINT (Ctrl-C)"
    assert manifest["teardown"]["survivors"] == []
    assert processes_mentioning(f"--port {port}") == []
