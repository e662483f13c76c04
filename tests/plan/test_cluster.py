"""runner.plan.cluster: the cluster plan (TP inside a node, PP across nodes) and the per-node
`ray start` commands. Pure functions on composed profiles; nothing here starts Ray or vLLM
(tests/e2e/test_multinode_ray.py does; tests/preflight/test_ray.py knocks on a dead address,
tests/diagnose/test_nccl.py reads NCCL's transports)."""

from __future__ import annotations

import json
import shlex
from typing import List

import pytest
from omegaconf import OmegaConf

from runner.config.schema import HwConfig
from runner.plan.cluster import ClusterPlan, plan_cluster, ray_start_commands
from runner.plan.shape import ModelShape
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
