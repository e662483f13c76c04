"""A real Ray cluster on loopback: a head and a worker raylet on this machine, started with
the very commands runner.plan.cluster.ray_start_commands prints for hw=ray-cpu-2, one CPU each.
check_ray_cluster attaches to it and reads what is there; and vLLM's CPU build, pointed at
it, is shown refusing the Ray executor (the fact docs/multinode.md records).

Every process started here is stopped by the fixture's finalizer: the cluster's own (found by
its private --temp-dir), their descendants, and vLLM's process group."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

import pytest
from omegaconf import OmegaConf

from runner.launch import generate
from runner.plan.cluster import ray_start_commands
from runner.preflight.ray import check_ray_cluster
from tests.e2e_util import free_port, processes_mentioning

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray: pip install -e '.[multinode]'"),
]

BIN = str(Path(sys.executable).parent)  # `ray` is the venv's console script
# vllm/v1/executor/ray_utils.py (vLLM 0.32), initialize_ray_cluster, after ray.init has joined
VLLM_CPU_RAY_ERROR = "ValueError: current platform cpu does not support ray."


def _cluster_pids(temp_dir: str, port: int) -> List[int]:
    """This cluster's processes: their command lines name its --temp-dir, or (the Ray Client
    server, which `ray start --head` also leaves behind) its GCS address host:PORT."""
    at_port = re.compile(rf":{port}(?!\d)")
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(pid) != os.getpid() and (temp_dir in cmd or ("ray" in cmd and at_port.search(cmd))):
            pids.append(int(pid))
    return pids


def _stop_cluster(temp_dir: str, port: int, grace_s: float = 10.0) -> None:
    """Stop the processes of this cluster only (not `ray stop`, which stops every Ray on the host)."""
    import psutil

    procs: Dict[int, "psutil.Process"] = {}
    for pid in _cluster_pids(temp_dir, port):
        try:
            proc = psutil.Process(pid)
            procs[pid] = proc
            for child in proc.children(recursive=True):  # ray::IDLE workers rename themselves
                procs[child.pid] = child
        except psutil.NoSuchProcess:
            pass
    for proc in procs.values():
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def _forget_stale_address(port: int) -> None:
    """`ray start --head` records its address in /tmp/ray/ray_current_cluster; a later bare
    ray.init() would try that dead address, so remove it when it is ours."""
    marker = Path("/tmp/ray/ray_current_cluster")
    try:
        if marker.read_text().strip().endswith(f":{port}"):
            marker.unlink()
    except OSError:
        pass


@pytest.fixture(scope="module")
def ray_cluster(compose):
    hw = OmegaConf.to_object(compose(["hw=ray-cpu-2", "mode=plan"])).hw
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    commands = ray_start_commands(hw, port=port, temp_dir=temp_dir)
    started = []
    try:
        for i, command in enumerate(commands):
            if i == 0:
                command += " --include-dashboard=false"  # its fixed port 8265 may be taken; not needed here
            t0 = time.monotonic()
            done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            started.append(round(time.monotonic() - t0, 1))
        yield {
            "address": f"127.0.0.1:{port}",
            "port": port,
            "temp_dir": temp_dir,
            "commands": commands,
            "start_s": started,
        }
    finally:
        _stop_cluster(temp_dir, port)
        _forget_stale_address(port)
        left = processes_mentioning(temp_dir) + processes_mentioning(f":{port} ")
        subprocess.run(["rm", "-rf", temp_dir], check=False)
        assert left == [], f"Ray processes survived the teardown: {left}"


def test_check_ray_cluster_reads_the_live_cluster(ray_cluster):
    summary, problems = check_ray_cluster(ray_cluster["address"], need_gpus=2, device="cpu", expect_nodes=2)
    assert problems == []
    assert summary["reachable"] is True
    assert summary["ray_version"] == importlib.metadata.version("ray")
    assert (summary["alive_nodes"], summary["dead_nodes"], summary["cpus"], summary["gpus"]) == (2, 0, 2.0, 0.0)
    nodes = summary["nodes"]
    assert sorted(n["cpus"] for n in nodes) == [1.0, 1.0] and all(n["gpus"] == 0 for n in nodes)
    assert [n["head"] for n in nodes].count(True) == 1
    # Ray registers loopback nodes under the host's own address, the same for both
    assert len(summary["ips"]) == 1 and summary["warnings"] and "unique IP address" in summary["warnings"][0]
    assert summary["gcs_address"].endswith(f":{ray_cluster['port']}")
    assert summary["elapsed_s"] >= 0


@pytest.mark.parametrize(
    "need, device, expect_nodes, message",
    [
        (3, "cpu", None, "the Ray cluster is too small: 2 CPU(s) on 2 alive node(s); TP x PP = 3 ranks need 3"),
        (2, "cuda", None, "the Ray cluster is too small: 0 GPU(s) on 2 alive node(s); TP x PP needs 2"),
        (2, "cpu", 3, "the Ray cluster is too small: 2 alive node(s), hw.nodes=3"),
    ],
    ids=["cpus", "gpus", "nodes"],
)
def test_too_small_a_cluster_is_a_problem(ray_cluster, need, device, expect_nodes, message):
    summary, problems = check_ray_cluster(
        ray_cluster["address"], need_gpus=need, device=device, expect_nodes=expect_nodes
    )
    assert summary["alive_nodes"] == 2
    assert [(p.key, p.value, p.message) for p in problems] == [("hw.ray_address", ray_cluster["address"], message)]
    assert f"ray start --address={ray_cluster['address']}" in problems[0].fix


def test_absent_address_is_a_problem_in_seconds(ray_cluster):
    with socket.socket() as s:  # a port nobody listens on, beside the live cluster
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    summary, problems = check_ray_cluster(f"127.0.0.1:{port}", need_gpus=2, device="cpu")
    # a hang guard, not a speed goal: Ray's own client would retry for minutes
    assert time.monotonic() - started < 60
    assert [p.key for p in problems] == ["hw.ray_address"]
    assert "nothing answers" in problems[0].message and "ray start --head" in problems[0].fix
    assert summary["reachable"] is False


def test_a_port_that_is_not_ray_times_out_with_a_problem():
    # Something listens, but it is not Ray's GCS: Ray's client would retry for over a minute.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        held = []
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # accept and say nothing
            except OSError:
                continue
        for conn in held:
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        summary, problems = check_ray_cluster(f"127.0.0.1:{port}", need_gpus=1, device="cpu", timeout_s=8)
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert 8 <= took < 60  # waited the timeout it was given; the upper bound only guards a hang
    assert [p.key for p in problems] == ["hw.ray_address"]
    assert problems[0].message == "something listens there, but Ray did not attach within 8 s"


@pytest.fixture(scope="module")
def tiny_llama(compose, tmp_path_factory) -> str:
    model = OmegaConf.to_object(compose(["model=tiny-llama"])).model
    return generate.materialise(model, str(tmp_path_factory.mktemp("cache")))


@pytest.mark.parametrize(
    "parallel",
    [["--tensor-parallel-size", "2"], ["--tensor-parallel-size", "1", "--pipeline-parallel-size", "2"]],
    ids=["tp2", "pp2"],
)
def test_vllm_cpu_refuses_the_ray_executor(ray_cluster, tiny_llama, tmp_path, parallel):
    """vllm-cpu 0.32.0 joins the Ray cluster, then stops: its platform has no Ray device key.
    Multi-node vLLM on CPU is therefore not a thing the runner can offer (plan_cluster says so)."""
    port = free_port()
    log = tmp_path / "vllm.log"
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_cluster["address"],
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        tiny_llama,
        *parallel,
        "--distributed-executor-backend",
        "ray",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=300)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of its group is left (engine core)
            except ProcessLookupError:
                pass
            proc.wait()
    text = log.read_text()
    assert rc != 0, text[-3000:]
    assert "Connected to Ray cluster" in text  # it did join the cluster first
    assert VLLM_CPU_RAY_ERROR in text, text[-3000:]
    assert "Engine core initialization failed" in text
    time.sleep(1)
    assert processes_mentioning(f"--port {port}") == [] and processes_mentioning(tiny_llama) == []
