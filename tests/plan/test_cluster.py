"""runner.plan.cluster: the cluster plan (TP inside a node, PP across nodes), the per-node
`ray start` commands, NCCL's transport report, and a dead Ray address failing fast.
Pure functions on composed profiles; nothing here starts Ray or vLLM (tests/test_multinode_ray.py does)."""

from __future__ import annotations

import json
import shlex
import socket
import time
from typing import List

import pytest
from omegaconf import OmegaConf

from runner.config.schema import HwConfig
from runner.plan.cluster import ClusterPlan, check_ray_cluster, nccl_transport, plan_cluster, ray_start_commands
from runner.probe.models import ModelShape
from tests.e2e_util import run_runner

IB_ENV = {"NCCL_SOCKET_IFNAME": "ib0", "GLOO_SOCKET_IFNAME": "ib0", "NCCL_IB_DISABLE": "0"}
IPS = "hw.node_ips=[10.0.0.1,10.0.0.2]"


@pytest.fixture
def hw_for(compose):
    """hw_for(overrides) -> HwConfig, composed as `python -m runner` would."""

    def _hw(overrides: List[str]) -> HwConfig:
        return OmegaConf.to_object(compose(["mode=plan", *overrides])).hw

    return _hw


@pytest.fixture
def shape_of(compose):
    def _shape(model: str) -> ModelShape:
        return ModelShape.from_hf_config(dict(OmegaConf.to_object(compose([f"model={model}"])).model.hf_config))

    return _shape


def keys(plan: ClusterPlan) -> List[str]:
    return [p.key for p in plan.problems]


def only(plan: ClusterPlan, key: str):
    found = [p for p in plan.problems if p.key == key]
    assert len(found) == 1, plan.problems
    return found[0]


# --------------------------------------------------------------------------- plan_cluster


def test_multinode_2x8_defaults_to_tp8_pp2_on_ray(hw_for, shape_of):
    hw = hw_for(["hw=multinode-2x8"])
    assert (hw.nodes, hw.gpus_per_node, hw.node_interconnect, hw.network_interface) == (2, 8, "infiniband", "ib0")
    assert hw.slurm == {"partition": "gpu", "time_min": 120, "gpus_per_node": 8, "cpus_per_task": None}

    plan = plan_cluster(hw, None, None, shape_of("llama70b"), {})
    assert plan.ok, plan.problems
    assert (plan.tp, plan.pp, plan.world_size, plan.nodes, plan.devices_per_node) == (8, 2, 16, 2, 8)
    assert plan.uses_ray
    assert plan.argv_extra == ("--distributed-executor-backend", "ray", "--pipeline-parallel-size", "2")
    assert plan.env == IB_ENV
    # no IPs in the profile: placeholders, keyed by node
    assert plan.head == "node0"
    assert plan.node_env == {"node0": {"VLLM_HOST_IP": "<head-ip>"}, "node1": {"VLLM_HOST_IP": "<node1-ip>"}}
    assert any("hw.node_ips not given" in n for n in plan.notes)
    assert any(n.startswith("NCCL_IB_HCA not set") for n in plan.notes)  # left to the user
    assert any("TP 8 inside each node x PP 2 across 2 node(s)" in n for n in plan.notes)
    json.dumps(plan.to_dict())  # goes into plan.json / the manifest as it is


def test_node_ips_key_the_per_node_env(hw_for):
    plan = plan_cluster(hw_for(["hw=multinode-2x8", IPS]), None, None, None, {})
    assert plan.ok
    assert plan.head == "10.0.0.1"
    assert plan.node_env == {"10.0.0.1": {"VLLM_HOST_IP": "10.0.0.1"}, "10.0.0.2": {"VLLM_HOST_IP": "10.0.0.2"}}
    assert list(plan.node_env) == ["10.0.0.1", "10.0.0.2"]  # the head first
    assert not any("hw.node_ips" in n for n in plan.notes)


@pytest.mark.parametrize(
    "tp, pp, key, fix",
    [
        (8, 1, "serve.tensor_parallel_size", "serve.pipeline_parallel_size=2, or hw.nodes=1"),
        (
            4,
            2,
            "serve.tensor_parallel_size",
            "serve.pipeline_parallel_size=4, or serve.tensor_parallel_size=8, or hw.nodes=1",
        ),
        (
            8,
            4,
            "serve.tensor_parallel_size",
            "serve.pipeline_parallel_size=2, or serve.tensor_parallel_size=4, or hw.nodes=4",
        ),
        (
            2,
            3,
            "serve.tensor_parallel_size",
            "serve.pipeline_parallel_size=8, or serve.tensor_parallel_size=8 serve.pipeline_parallel_size=2",
        ),
        (3, 5, "serve.tensor_parallel_size", "serve.tensor_parallel_size=8 serve.pipeline_parallel_size=2"),
    ],
)
def test_tp_times_pp_must_fill_the_cluster(hw_for, tp, pp, key, fix):
    plan = plan_cluster(hw_for(["hw=multinode-2x8"]), tp, pp, None, {})
    problem = only(plan, key)
    assert problem.value == tp
    assert problem.message == f"TP {tp} x PP {pp} = {tp * pp} ranks, but hw=multinode-2x8 has 2 node(s) x 8 GPUs = 16"
    assert problem.fix == fix
    assert str(problem).startswith(f"{key}={tp}: TP {tp} x PP {pp}")


def test_unset_pp_follows_tp_and_is_rendered(hw_for):
    plan = plan_cluster(hw_for(["hw=multinode-2x8"]), 4, None, None, {})
    assert plan.ok and (plan.tp, plan.pp) == (4, 4)
    assert plan.argv_extra == ("--distributed-executor-backend", "ray", "--pipeline-parallel-size", "4")
    assert "pipeline_parallel_size not set: 4 (TP 4 over 16 devices)" in plan.notes


def test_flags_the_caller_already_sets_are_not_repeated(hw_for):
    plan = plan_cluster(hw_for(["hw=multinode-2x8"]), 8, 2, None, {}, serve_backend="ray")
    assert plan.ok and (plan.tp, plan.pp) == (8, 2)
    assert plan.argv_extra == ()
    plan = plan_cluster(hw_for(["hw=multinode-2x8"]), None, 2, None, {})
    assert (plan.tp, plan.pp) == (8, 2)
    assert plan.argv_extra == ("--distributed-executor-backend", "ray")


def test_another_executor_is_a_problem(hw_for):
    plan = plan_cluster(hw_for(["hw=multinode-2x8"]), None, None, None, {}, serve_backend="mp")
    problem = only(plan, "serve.distributed_executor_backend")
    assert problem.value == "mp" and problem.fix.startswith("serve.distributed_executor_backend=ray")
    assert "--distributed-executor-backend" not in plan.argv_extra


def test_cross_node_tp_is_a_warning_on_infiniband(hw_for):
    plan = plan_cluster(hw_for(["hw=multinode-2x8"]), 16, None, None, {})
    assert plan.ok and (plan.tp, plan.pp) == (16, 1)
    assert "--pipeline-parallel-size" not in plan.argv_extra  # PP 1 is vLLM's default
    warning = [n for n in plan.notes if n.startswith("WARNING: TP 16 spans 2 nodes")]
    assert warning and "serve.tensor_parallel_size=8 serve.pipeline_parallel_size=2" in warning[0]


def test_cross_node_tp_over_ethernet_is_a_problem(hw_for):
    plan = plan_cluster(
        hw_for(["hw=multinode-2x8", "hw.node_interconnect=ethernet", "hw.network_interface=eth0"]), 16, None, None, {}
    )
    problem = only(plan, "serve.tensor_parallel_size")
    assert problem.value == 16
    assert "over Ethernet" in problem.message and "TP 16 spans 2 nodes (8 GPUs each)" in problem.message
    assert problem.fix == "serve.tensor_parallel_size=8 serve.pipeline_parallel_size=2"
    assert plan.env == {"NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0", "NCCL_IB_DISABLE": "1"}
    # TP inside the nodes over Ethernet is fine
    assert plan_cluster(hw_for(["hw=multinode-2x8", "hw.node_interconnect=ethernet"]), None, None, None, {}).ok


def test_pp_beyond_the_layers_is_a_problem(hw_for, shape_of):
    hw = hw_for(["hw=multinode-2x8", "hw.nodes=4", "hw.gpus_per_node=1"])
    plan = plan_cluster(hw, None, None, shape_of("tiny-llama"), {})  # 2 layers, 4 stages
    problem = only(plan, "serve.pipeline_parallel_size")
    assert (problem.value, problem.message, problem.fix) == (
        4,
        "more stages than num_hidden_layers=2",
        "serve.pipeline_parallel_size<=2",
    )


def test_default_tp_steps_down_when_heads_do_not_split(hw_for):
    # Qwen2.5-1.5B's shape: 12 heads, 2 KV heads. TP 8 does not divide 12; 4 does (and 4 % 2 == 0).
    shape = ModelShape.from_hf_config(
        {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "max_position_embeddings": 32768,
            "torch_dtype": "bfloat16",
        }
    )
    plan = plan_cluster(hw_for(["hw=multinode-2x8"]), None, None, shape, {})
    assert plan.ok, plan.problems
    assert (plan.tp, plan.pp) == (4, 4)
    assert any("does not split" in n for n in plan.notes)


def test_hw_env_and_inherited_env(hw_for):
    hw = hw_for(["hw=multinode-2x8", "+hw.env.NCCL_SOCKET_IFNAME=ib1", "+hw.env.NCCL_IB_HCA=mlx5_0"])
    plan = plan_cluster(hw, None, None, None, {"NCCL_IB_DISABLE": "1", "GLOO_SOCKET_IFNAME": "ib0"})
    # hw.env is the planner's to apply (last); the cluster plan does not contradict it
    assert plan.env == {"GLOO_SOCKET_IFNAME": "ib0", "NCCL_IB_DISABLE": "0"}
    assert "NCCL_IB_DISABLE=0 from hw=multinode-2x8 replaces the inherited NCCL_IB_DISABLE=1" in plan.notes
    assert not any("NCCL_IB_HCA not set" in n for n in plan.notes)


def test_one_node_is_not_a_cluster(hw_for):
    plan = plan_cluster(hw_for(["hw=nvlink-8gpu"]), None, None, None, {})
    assert not plan.uses_ray and plan.ok
    assert (plan.tp, plan.pp, plan.argv_extra, plan.env, plan.node_env) == (8, 1, (), {}, {})


@pytest.mark.parametrize(
    "overrides, key, value",
    [
        (["hw=auto", "hw.nodes=2"], "hw.gpus_per_node", None),  # how many per node? unknown
        (["hw=multinode-2x8", "hw.node_ips=[10.0.0.1]"], "hw.node_ips", ["10.0.0.1"]),
        (["hw=multinode-2x8", "hw.node_ips=[10.0.0.1,10.0.0.1]"], "hw.node_ips", ["10.0.0.1", "10.0.0.1"]),
        (["hw=multinode-2x8", "hw.node_interconnect=roce"], "hw.node_interconnect", "roce"),
        (["hw=multinode-2x8", "hw.nodes=0"], "hw.nodes", 0),
    ],
    ids=["no-gpus-per-node", "too-few-ips", "repeated-ip", "unknown-interconnect", "zero-nodes"],
)
def test_profile_problems_name_the_key(hw_for, overrides, key, value):
    plan = plan_cluster(hw_for(overrides), None, None, None, {})
    problem = next(p for p in plan.problems if p.key == key)
    assert problem.value == value and problem.fix


def test_ray_cpu_2_rehearses_ray_but_vllm_cpu_refuses_it(hw_for, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6380")
    hw = hw_for(["hw=ray-cpu-2"])
    assert hw.ray_address == "127.0.0.1:6380"  # ${oc.env:RAY_ADDRESS,null}
    plan = plan_cluster(hw, None, None, None, {})
    assert (plan.tp, plan.pp) == (1, 2)
    assert plan.env == {"GLOO_SOCKET_IFNAME": "lo", "RAY_ADDRESS": "127.0.0.1:6380"}  # no NCCL on the CPU
    assert plan.node_env == {"node0": {"VLLM_HOST_IP": "127.0.0.1"}, "node1": {"VLLM_HOST_IP": "127.0.0.1"}}
    assert keys(plan) == ["hw.device"]
    assert "current platform cpu does not support ray" in plan.problems[0].message
    assert any("every node is on loopback" in n for n in plan.notes)
    monkeypatch.delenv("RAY_ADDRESS")
    assert hw_for(["hw=ray-cpu-2"]).ray_address is None


# --------------------------------------------------------------------------- ray start commands


def test_ray_start_commands_for_two_gpu_nodes(hw_for):
    head, worker = ray_start_commands(hw_for(["hw=multinode-2x8", IPS]))
    assert head == (
        "NCCL_SOCKET_IFNAME=ib0 GLOO_SOCKET_IFNAME=ib0 NCCL_IB_DISABLE=0 VLLM_HOST_IP=10.0.0.1 "
        "ray start --head --port=6379 --node-ip-address=10.0.0.1 --num-gpus=8 --disable-usage-stats"
    )
    assert worker == (
        "NCCL_SOCKET_IFNAME=ib0 GLOO_SOCKET_IFNAME=ib0 NCCL_IB_DISABLE=0 VLLM_HOST_IP=10.0.0.2 "
        "ray start --address=10.0.0.1:6379 --node-ip-address=10.0.0.2 --num-gpus=8 --disable-usage-stats"
    )


def test_ray_start_commands_carry_hw_env_and_quote_placeholders(hw_for):
    cmds = ray_start_commands(hw_for(["hw=multinode-2x8", "+hw.env.NCCL_IB_HCA='mlx5_0,mlx5_1'"]), port=6380)
    assert len(cmds) == 2
    words = [shlex.split(c) for c in cmds]
    assert "NCCL_IB_HCA=mlx5_0,mlx5_1" in words[0] and "NCCL_IB_HCA=mlx5_0,mlx5_1" in words[1]
    assert "VLLM_HOST_IP=<head-ip>" in words[0] and "--address=<head-ip>:6380" in words[1]
    assert "'<head-ip>'" in cmds[0]  # quoted: pasted unchanged, the shell does not redirect
    assert "VLLM_HOST_IP=<node1-ip>" in words[1]


def test_ray_start_commands_for_loopback_cpu(hw_for):
    head, worker = ray_start_commands(hw_for(["hw=ray-cpu-2"]), port=6390)
    assert head == (
        "GLOO_SOCKET_IFNAME=lo VLLM_HOST_IP=127.0.0.1 ray start --head --port=6390 "
        "--node-ip-address=127.0.0.1 --num-cpus=1 --num-gpus=0 --disable-usage-stats"
    )
    assert worker == (
        "GLOO_SOCKET_IFNAME=lo VLLM_HOST_IP=127.0.0.1 ray start --address=127.0.0.1:6390 "
        "--node-ip-address=127.0.0.1 --num-cpus=1 --num-gpus=0 --temp-dir=/tmp/ray-node1 --disable-usage-stats"
    )
    tagged = ray_start_commands(hw_for(["hw=ray-cpu-2"]), port=6390, temp_dir="/tmp/rt1")
    assert [c.split("--temp-dir=")[1].split()[0] for c in tagged] == ["/tmp/rt1/node0", "/tmp/rt1/node1"]


# --------------------------------------------------------------------------- NCCL's transports

IB_LOG = """\
(RayWorkerWrapper pid=4121, ip=10.0.0.1) gpu-a:4121:4190 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:10.0.0.1<0>
(RayWorkerWrapper pid=4121, ip=10.0.0.1) gpu-a:4121:4190 [0] NCCL INFO Using network IB
gpu-a:4121:4190 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/IPC
gpu-a:4121:4190 [0] NCCL INFO Channel 01/0 : 0[0] -> 1[1] via P2P/CUMEM/read
\x1b[36m(RayWorkerWrapper pid=5230, ip=10.0.0.2)\x1b[0m gpu-b:5230:5301 [7] NCCL INFO Channel 00/0 : 7[7] -> 8[0] [send] via NET/IB/0/GDRDMA
gpu-b:5230:5301 [7] NCCL INFO Channel 00/0 : 7[7] -> 8[0] [send] via NET/IB/0/GDRDMA
gpu-a:4121:4191 [0] NCCL INFO Channel 00/0 : 15[7] -> 0[0] [receive] via NET/IB/1/GDRDMA
gpu-a:4121:4190 [0] NCCL INFO Connected all rings
"""

SOCKET_LOG = """\
node1:811:860 [0] NCCL INFO NET/Socket : Using [0]eth0:192.168.1.10<0>
node1:811:860 [0] NCCL INFO Using network Socket
node1:811:860 [0] NCCL INFO Channel 00 : 0[0] -> 1[1] via SHM/direct/direct
node1:811:861 [1] NCCL INFO Channel 00/0 : 1[1] -> 2[0] [send] via NET/Socket/0
node2:902:950 [0] NCCL INFO Channel 00/0 : 1[1] -> 2[0] [receive] via NET/Socket/0
"""


def test_nccl_transport_over_infiniband():
    found = nccl_transport(IB_LOG)
    assert found["kinds"] == {"NET/IB": 2, "P2P": 2}  # the repeated line counts once
    assert found["links"] == {"NET/IB/0/GDRDMA": 1, "NET/IB/1/GDRDMA": 1, "P2P/CUMEM/read": 1, "P2P/IPC": 1}
    assert found["connections"] == 4
    assert found["cross_node"] and found["gdr"]
    assert found["network"] == "IB"
    assert found["interfaces"] == ["mlx5_0:1/IB", "mlx5_1:1/IB"]
    assert found["hosts"] == ["gpu-a", "gpu-b"]
    assert found["warning"] is None


def test_nccl_transport_warns_when_nodes_talk_over_sockets():
    found = nccl_transport(SOCKET_LOG)
    assert found["kinds"] == {"NET/Socket": 2, "SHM": 1}
    assert found["network"] == "Socket" and found["interfaces"] == ["eth0:192.168.1.10<0>"]
    assert found["cross_node"] and not found["gdr"]
    assert found["warning"].startswith("2 cross-node connection(s) went over NET/Socket (TCP), not InfiniBand/RoCE")
    assert "NCCL_IB_DISABLE" in found["warning"]


def test_nccl_transport_on_a_log_without_nccl_lines():
    found = nccl_transport("INFO 11-27 05:58:39 [api_utils.py:286] non-default args: {}\n")
    assert found == {
        "connections": 0,
        "kinds": {},
        "links": {},
        "cross_node": False,
        "network": None,
        "interfaces": [],
        "gdr": False,
        "hosts": [],
        "warning": None,
    }


# --------------------------------------------------------------------------- a dead address


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("form", ["{port}", "ray://127.0.0.1:{port}"])
def test_absent_ray_address_is_a_problem_in_seconds(form):
    port = _closed_port()
    address = form.format(port=port) if form.startswith("ray") else f"127.0.0.1:{port}"
    started = time.monotonic()
    summary, problems = check_ray_cluster(address, need_gpus=2, device="cpu")
    assert time.monotonic() - started < 5
    assert [p.key for p in problems] == ["hw.ray_address"]
    assert problems[0].value == address
    assert f"nothing answers at 127.0.0.1:{port}" in problems[0].message
    assert "ray start --head" in problems[0].fix
    assert summary["reachable"] is False and summary["alive_nodes"] == 0


# --------------------------------------------------------------------------- a sweep through submitit


def test_submitit_local_sweep_writes_a_manifest_per_point(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    done = run_runner(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "hw=cpu-2",
            "model=tiny-llama",
            "mode=plan",
            "serve.tensor_parallel_size=1,2",
            f"hydra.sweep.dir={sweep}",
            f"cache_dir={tmp_path / 'cache'}",
        ],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Submitit 'local' sweep output dir" in done.stdout + done.stderr
    manifests = sorted(sweep.glob("*/manifest.json"))
    assert [m.parent.name for m in manifests] == [
        "0_hw=cpu-2,model=tiny-llama,serve.tensor_parallel_size=1",
        "1_hw=cpu-2,model=tiny-llama,serve.tensor_parallel_size=2",
    ]
    for tp, path in enumerate(manifests, start=1):
        record = json.loads(path.read_text())
        assert record["status"] == "planned" and record["exit_code"] == 0 and record["mode"] == "plan"
        assert record["plan"]["tensor_parallel_size"] == tp
        assert record["config"]["serve"]["tensor_parallel_size"] == tp
        argv = record["plan"]["argv"]
        assert argv[argv.index("--tensor-parallel-size") + 1] == str(tp)
        assert (path.parent / "plan.json").is_file()
    # each point ran as a submitit job of its own
    assert len([p for p in (sweep / ".submitit").glob("*/*_result.pkl")]) == 2


def test_slurm_launcher_is_sized_from_the_hw_profile():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    done = run_runner(
        ["hydra/launcher=slurm", "hw=multinode-2x8", "model=llama70b", "--cfg", "all", "--resolve"], timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = OmegaConf.create(done.stdout)  # the YAML Hydra printed
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (
        launcher.nodes,
        launcher.gpus_per_node,
        launcher.tasks_per_node,
        launcher.timeout_min,
        launcher.partition,
    ) == (2, 8, 1, 120, "gpu")
