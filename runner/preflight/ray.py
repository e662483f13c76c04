"""Preflight for a multi-node run: is the Ray cluster that hw.ray_address names there, and
is it big enough for TP x PP?

``check_ray_cluster`` first knocks on the address (a socket, a few seconds), then attaches in a
subprocess (``python -m runner.preflight.ray_attach``) under a timeout and compares the
alive nodes' GPUs and CPUs with what the plan needs. Every failure comes back as a Problem
naming hw.ray_address (or launch.python when ray is missing) and the fix; nothing raises.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from runner.launch.pyenv import module_argv, with_runner_path
from runner.plan.cluster import DEFAULT_RAY_PORT, RAY_INSTALL
from runner.preflight import ray_attach
from runner.problems import Problem


def _host_port(address: str) -> Optional[Tuple[str, int]]:
    """(host, port) of 'host:port', 'ray://host:port' or 'host'; None for 'auto'."""
    text = address.strip()
    if text in ("auto", "local", ""):
        return None
    default = 10001 if text.startswith("ray://") else DEFAULT_RAY_PORT
    text = text.split("://", 1)[-1]
    if text.startswith("["):  # [ipv6]:port
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default
    return host, int(port)


def _address_problem(address: str, message: str) -> Problem:
    return Problem(
        "hw.ray_address",
        address,
        message,
        f"start the head first (on the head node: ray start --head --port={DEFAULT_RAY_PORT}), or "
        "hw.ray_address=<head-ip>:6379 (`ray status` on a node prints the address)",
    )


def check_ray_cluster(
    address: str,
    need_gpus: int,
    need_cpus_per_worker: Optional[float] = None,
    device: str = "cuda",
    expect_nodes: Optional[int] = None,
    timeout_s: float = 30.0,
    python: Optional[str] = None,
) -> Tuple[Dict[str, Any], List[Problem]]:
    """Attach to the Ray cluster at ``address`` and compare it with what TP x PP needs.

    need_gpus: the ranks (TP x PP); on device=cpu each rank needs need_cpus_per_worker CPUs
    (default 1), on cuda one GPU (and need_cpus_per_worker CPUs, default 0: vLLM's GPU
    bundles ask for none). Returns (summary, problems); the summary has the alive nodes
    with IP, hostname, GPUs and CPUs each, and the totals. Never raises for a bad address.
    """
    started = time.time()
    summary: Dict[str, Any] = {
        "address": address,
        "reachable": False,
        "nodes": [],
        "alive_nodes": 0,
        "gpus": 0.0,
        "cpus": 0.0,
        "warnings": [],
    }
    try:
        where = _host_port(address)
    except ValueError:
        return summary, [_address_problem(address, "not host:port")]
    record, problems = _attach(address, where, timeout_s, python)
    summary["elapsed_s"] = round(time.time() - started, 2)
    if record is None:
        return summary, problems
    summary.update(_cluster_summary(record))
    per_worker = need_cpus_per_worker if need_cpus_per_worker is not None else (1 if device == "cpu" else 0)
    return summary, _size_problems(summary, address, need_gpus, per_worker, device, expect_nodes)


def _attach(
    address: str, where: Optional[Tuple[str, int]], timeout_s: float, python: Optional[str]
) -> Tuple[Optional[Dict[str, Any]], List[Problem]]:
    """What ray_attach printed about the cluster, or the problem that stopped it: first a knock
    on the port (seconds), then the attach itself under the timeout."""
    if where is not None:
        try:
            with socket.create_connection(where, timeout=min(3.0, timeout_s)):
                pass
        except OSError as exc:
            return None, [
                _address_problem(address, f"nothing answers at {where[0]}:{where[1]} ({exc.strerror or exc})")
            ]
    try:
        done = subprocess.run(
            module_argv(python or sys.executable, "runner.preflight.ray_attach", address),
            capture_output=True,
            env=with_runner_path(),
            text=True,
            timeout=timeout_s,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return None, [
            _address_problem(address, f"something listens there, but Ray did not attach within {timeout_s:g} s")
        ]
    record = None
    for line in done.stdout.splitlines():
        if line.startswith(ray_attach.MARK):
            record = json.loads(line[len(ray_attach.MARK) :])
    if record is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return None, [_address_problem(address, f"the Ray probe failed: {tail[0][:300]}")]
    if record.get("error") == "import":
        return None, [
            Problem(
                "launch.python", python or sys.executable, f"Ray is not installed ({record['detail']})", RAY_INSTALL
            )
        ]
    if record.get("error"):
        return None, [_address_problem(address, f"Ray could not attach: {record['detail'][:300]}")]
    return record, []


def _cluster_summary(record: Mapping[str, Any]) -> Dict[str, Any]:
    """The attached cluster: its nodes (IP, hostname, GPUs, CPUs each) and the alive totals."""
    nodes = []
    for n in record["nodes"]:
        res = n.get("Resources") or {}
        nodes.append(
            {
                "node_id": n.get("NodeID"),
                "ip": n.get("NodeManagerAddress"),
                "hostname": n.get("NodeManagerHostname"),
                "alive": bool(n.get("Alive")),
                "head": "node:__internal_head__" in res,
                "gpus": res.get("GPU", 0.0),
                "cpus": res.get("CPU", 0.0),
            }
        )
    live = [n for n in nodes if n["alive"]]
    ips = sorted({n["ip"] for n in live})
    warnings = []
    if len(ips) < len(live):
        warnings.append(
            f"{len(live)} alive nodes share {len(ips)} IP(s): vLLM's Ray executor stops with "
            '"Every node should have a unique IP address" when its workers land on more than one of them'
        )
    return {
        "reachable": True,
        "ray_version": record["ray_version"],
        "gcs_address": record["gcs_address"],
        "connect_s": record["connect_s"],
        "resources": record["resources"],
        "nodes": nodes,
        "alive_nodes": len(live),
        "dead_nodes": len(nodes) - len(live),
        "gpus": sum(n["gpus"] for n in live),
        "cpus": sum(n["cpus"] for n in live),
        "ips": ips,
        "warnings": warnings,
    }


def _size_problems(
    summary: Mapping[str, Any],
    address: str,
    need_gpus: int,
    per_worker: float,
    device: str,
    expect_nodes: Optional[int],
) -> List[Problem]:
    """Too few GPUs, CPUs or nodes alive for TP x PP ranks."""
    problems: List[Problem] = []
    alive = summary["alive_nodes"]
    if device == "cpu":
        need_cpus = need_gpus * per_worker
        if summary["cpus"] < need_cpus:
            problems.append(
                _short(
                    address,
                    f"{summary['cpus']:g} CPU(s) on {alive} alive node(s); TP x PP = {need_gpus} ranks "
                    f"need {need_cpus:g}",
                    "--num-cpus",
                )
            )
    else:
        if summary["gpus"] < need_gpus:
            problems.append(
                _short(
                    address,
                    f"{summary['gpus']:g} GPU(s) on {alive} alive node(s); TP x PP needs {need_gpus}",
                    "--num-gpus",
                )
            )
        if per_worker and summary["cpus"] < need_gpus * per_worker:
            problems.append(
                _short(
                    address, f"{summary['cpus']:g} CPU(s); {need_gpus} workers x {per_worker:g} need more", "--num-cpus"
                )
            )
    if expect_nodes is not None and alive < expect_nodes:
        problems.append(
            _short(
                address,
                f"{alive} alive node(s), hw.nodes={expect_nodes}",
                "--num-gpus" if device == "cuda" else "--num-cpus",
            )
        )
    return problems


def _short(address: str, message: str, flag: str) -> Problem:
    return Problem(
        "hw.ray_address",
        address,
        f"the Ray cluster is too small: {message}",
        f"start the missing nodes (ray start --address={address} {flag}=N on each; `ray status` shows who joined), "
        "or smaller serve.tensor_parallel_size / serve.pipeline_parallel_size",
    )
