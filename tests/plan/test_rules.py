"""vLLM's sharding and device rules, from config.json and recorded probe data."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from runner.plan import rules
from runner.plan.build import make_plan
from runner.plan.rules import valid_tp_sizes
from runner.plan.shape import ModelShape
from runner.probe.hardware import Gpu

LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "torch_dtype": "bfloat16",
}
GIB = 2**30


def _gpu(i=0, cc=(9, 0), free=80 * GIB, total=80 * GIB, name="NVIDIA H100 80GB HBM3"):
    return Gpu(
        index=i,
        name=name,
        pci_bus_id=f"00000000:00:0{6 + i}.0",
        memory_total_bytes=total,
        memory_free_bytes=free,
        compute_capability=cc,
    )


def test_intermediate_size_must_split():
    odd = ModelShape.from_hf_config({**LLAMA, "intermediate_size": 11008 + 64})  # 11072 = 2^6 * 173
    assert rules.shard_violations(odd, 2, None) == []
    assert rules.shard_violations(odd, 64, None) == []
    assert "intermediate_size=11072" in rules.shard_violations(odd, 128, None)[0]
    six = ModelShape.from_hf_config(
        {**LLAMA, "num_attention_heads": 24, "num_key_value_heads": 6, "intermediate_size": 2048}
    )
    assert valid_tp_sizes(six, 8) == [1, 2]  # 3 and 6 split the heads and KV heads, not 2048


def test_moe_intermediate_size_is_the_one_that_splits():
    moe = ModelShape.from_hf_config({**LLAMA, "moe_intermediate_size": 1408, "num_experts": 64})  # 1408 = 2^7 * 11
    assert rules.shard_violations(moe, 8, None) == []
    assert "moe_intermediate_size=1408" in rules.shard_violations(moe, 256, None)[0]


GPTQ = {**LLAMA, "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}


@pytest.mark.parametrize("tp, ok", [(1, True), (2, True), (4, True), (8, True)])
def test_gptq_llama3_8b_splits_on_marlin(tp, ok):
    shape = ModelShape.from_hf_config(GPTQ)
    assert (rules.shard_violations(shape, tp, GPTQ) == []) is ok


def test_gptq_group_and_min_thread_k():
    # intermediate 14336 / 16 = 896 = 7 * 128: still a multiple of 128; at TP=32, 448 is not.
    # With act-order (desc_act) Marlin's thread tiles are strict (verify_marlin_supports_shape)
    act_order = {**GPTQ, "quantization_config": {**GPTQ["quantization_config"], "desc_act": True}}
    why = rules.shard_violations(ModelShape.from_hf_config(act_order), 32, act_order)
    assert why and "min_thread_k=128" in why[0]
    # without it vLLM zero-pads the tiles; what still fails is a group split across ranks
    why = rules.shard_violations(ModelShape.from_hf_config(GPTQ), 32, GPTQ)
    assert why and all("min_thread" not in w for w in why) and "group_size=128" in why[0]
    # a group larger than what one rank holds must still divide it
    big_group = {**GPTQ, "quantization_config": {"quant_method": "awq", "group_size": 1024}}
    why = rules.shard_violations(ModelShape.from_hf_config(big_group), 8, big_group)
    assert any("group_size=1024" in w for w in why), why
    # unquantized, the same sizes are fine
    assert rules.shard_violations(ModelShape.from_hf_config(LLAMA), 32, LLAMA) == []


def test_bf16_needs_ampere():
    t4 = _gpu(cc=(7, 5), name="Tesla T4")
    p = rules.bf16_problem("auto", "bfloat16", [t4])
    assert p and p.key == "serve.dtype" and "7.5" in p.message and p.fix == "serve.dtype=float16"
    assert rules.bf16_problem("float16", "bfloat16", [t4]) is None
    assert rules.bf16_problem("auto", "bfloat16", [_gpu()]) is None


def test_free_memory_below_utilization():
    busy = _gpu(free=40 * GIB)
    p = rules.free_memory_problem(None, [_gpu(1), busy], 0.9)
    assert p and p.key == "serve.gpu_memory_utilization" and p.value == 0.9
    assert "40.0 of 80.0 GiB free" in p.message
    assert p.fix.startswith("serve.gpu_memory_utilization=0.49")
    assert rules.free_memory_problem(0.45, [busy], 0.9) is None
    assert rules.free_memory_problem(None, [_gpu()], 0.9) is None


def test_plan_applies_the_device_rules_only_to_this_machine(compose, probe_h100x4):
    busy = dataclasses.replace(
        probe_h100x4,
        gpus=tuple(dataclasses.replace(g, memory_free_bytes=g.memory_total_bytes // 4) for g in probe_h100x4.gpus),
    )
    check = OmegaConf.to_object(
        compose(
            [
                "cache_dir=/c",
                "hw=auto",
                "model=llama3-8b",
                "model.load_format=dummy",
                "mode=check",
                "serve.tensor_parallel_size=2",
            ]
        )
    )
    plan = make_plan(check, busy, dict(check.model.hf_config), "0.26.0", {}, python="python")
    assert [p.key for p in plan.problems] == ["serve.gpu_memory_utilization"]
    planning = OmegaConf.to_object(
        compose(["cache_dir=/c", "hw=nvlink-4gpu", "model=llama3-8b", "mode=plan", "serve.tensor_parallel_size=2"])
    )
    assert make_plan(planning, busy, dict(planning.model.hf_config), "0.26.0", {}, python="python").ok


def test_fit_table_for_every_tp_size(compose, probe_cpu2):
    cfg = OmegaConf.to_object(
        compose(["cache_dir=/c", "hw=nvlink-4gpu", "model=llama70b", "mode=plan", "serve.tensor_parallel_size=2"])
    )
    plan = make_plan(cfg, probe_cpu2, dict(cfg.model.hf_config), "0.26.0", {}, python="python")
    rows = {r["tensor_parallel_size"]: r for r in plan.estimate["fit_table"]}
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[1]["valid"] and not rows[1]["fits"] and rows[1]["weights_gib_per_gpu"] == 131.42
    assert "weights need 131.4 GiB per GPU" in rows[1]["why_not"] and rows[1]["kv_cache_tokens"] == 0
    assert rows[2]["valid"] and rows[2]["fits"] and 0 < rows[2]["kv_cache_tokens"] < rows[4]["kv_cache_tokens"]
    assert not rows[3]["valid"] and not rows[3]["fits"] and "num_attention_heads=64" in rows[3]["why_not"]
    assert rows[4]["valid"] and rows[4]["fits"] and rows[4]["weights_gib_per_gpu"] == 32.85
