"""Weights and KV cache of quantized models, predicted before vLLM starts.

Online fp8 (serve.quantization=fp8 on a 16-bit checkpoint): vLLM's Fp8LinearMethod / Fp8MoEMethod
store every linear layer's weight in one byte; embeddings, the LM head and the norms keep bf16.
The one measured point: Llama-3.1-70B with serve.quantization=fp8 on one H200 (139.8 GiB, default
utilization 0.92) — "Model loading took 67.7 GiB", KV cache 58.4 GiB."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from runner.plan import memory
from runner.plan.build import make_plan
from runner.plan.shape import ModelShape
from runner.probe.hardware import Gpu, HardwareProbe

GIB = 2**30


def _probe(name: str, total_gib: float, capability, count: int = 1) -> HardwareProbe:
    total = int(total_gib * GIB)
    gpus = tuple(
        Gpu(
            index=i,
            name=name,
            pci_bus_id=f"00000000:00:{6 + i:02x}.0",
            memory_total_bytes=total,
            memory_free_bytes=total - 500 * 2**20,
            compute_capability=capability,
        )
        for i in range(count)
    )
    return HardwareProbe(gpus=gpus, cpus_allowed=tuple(range(16)), source="nvml")


H200 = ("NVIDIA H200", 139.8, (9, 0))
A100 = ("NVIDIA A100-SXM4-80GB", 79.25, (8, 0))


@pytest.fixture
def plan_on(compose):
    def _plan(overrides, probe, hf=None):
        cfg = OmegaConf.to_object(compose(["cache_dir=/nonexistent", "mode=check", *overrides]))
        return make_plan(cfg, probe, hf or dict(cfg.model.hf_config), "0.26.0", {})

    return _plan


def test_online_fp8_weights_of_llama70b_match_vllms_load(compose):
    cfg = OmegaConf.to_object(compose(["model=llama70b"]))
    shape = ModelShape.from_hf_config(dict(cfg.model.hf_config))
    fp8 = memory.weights_bytes(shape, 2, "fp8") / GIB
    bf16 = memory.weights_bytes(shape, 2) / GIB
    assert abs(fp8 - 67.7) < 0.1  # "Model loading took 67.7 GiB"
    assert abs(bf16 - 131.4) < 0.1
    # what stays bf16: the embedding and the untied LM head (vocabulary padded to 64), the norms
    kept = (2 * 128256 * 8192 + 80 * 2 * 8192 + 8192) * 2
    assert memory.weights_bytes(shape, 2, "fp8") == shape.linear_parameter_count() + kept


def test_online_fp8_on_one_h200_is_predicted_as_vllm_measured(plan_on):
    plan = plan_on(["hw=auto", "model=llama70b", "model.load_format=dummy", "serve.quantization=fp8"], _probe(*H200))
    assert plan.ok, plan.problems
    fit = plan.estimate["fit"]
    assert abs(fit["weights_gib_per_gpu"] - 67.7) < 0.1
    assert abs(fit["kv_cache_gib"] - 58.4) / 58.4 < 0.02
    assert fit["kv_cache_tokens"] > 8192 and plan.estimate["quantization"].startswith("fp8")
    assert not any("memory not predicted" in n for n in plan.notes)


def test_bf16_70b_on_one_h200_is_offered_fp8(plan_on):
    plan = plan_on(["hw=auto", "model=llama70b", "model.load_format=dummy"], _probe(*H200))
    [p] = plan.problems
    assert "131.4 GiB" in p.message and p.fix == "serve.quantization=fp8"
    # and the fix, applied, plans clean
    again = plan_on(["hw=auto", "model=llama70b", "model.load_format=dummy", "serve.quantization=fp8"], _probe(*H200))
    assert again.ok


def test_fp8_is_not_offered_on_cards_without_fp8_tensor_cores(plan_on):
    plan = plan_on(["hw=auto", "model=llama70b", "model.load_format=dummy"], _probe(*A100))
    [p] = plan.problems
    assert "serve.quantization" not in p.fix


def test_fp8_is_not_offered_where_it_does_not_fit_either(plan_on):
    # 70B in fp8 is 67.7 GiB: more than a 48 GB card gives vLLM
    plan = plan_on(["hw=auto", "model=llama70b", "model.load_format=dummy"], _probe("NVIDIA L40S", 44.4, (8, 9)))
    assert plan.problems and all("serve.quantization" not in p.fix for p in plan.problems)


def test_online_fp8_plan_for_the_tune_candidate_has_kv_tokens(compose):
    # the tune grid's fp8 x max_num_seqs candidates of llama3-8b: a full fit each, fp8 weights ~ 8.5 GiB
    fits = {}
    for quant in ("null", "fp8"):
        for seqs in (64, 256):
            cfg = OmegaConf.to_object(
                compose(
                    [
                        "hw=auto",
                        "model=llama3-8b",
                        "model.load_format=dummy",
                        "mode=plan",
                        "cache_dir=/nonexistent",
                        f"serve.quantization={quant}",
                        f"serve.max_num_seqs={seqs}",
                    ]
                )
            )
            plan = make_plan(cfg, _probe(*H200), dict(cfg.model.hf_config), "0.26.0", {})
            assert plan.ok, plan.problems
            fits[quant, seqs] = plan.estimate["fit"]
    assert abs(fits["fp8", 64]["weights_gib_per_gpu"] - 8.46) < 0.05
    assert fits["fp8", 64]["kv_cache_tokens"] > fits["null", 64]["kv_cache_tokens"]
    assert fits["fp8", 64]["kv_bytes_per_token"] == fits["null", 64]["kv_bytes_per_token"]  # KV stays bf16


def test_fp8_kv_cache_halves_the_bytes_per_token_with_online_fp8(plan_on):
    plain = plan_on(["hw=auto", "model=llama3-8b", "model.load_format=dummy", "serve.quantization=fp8"], _probe(*H200))
    kv8 = plan_on(
        ["hw=auto", "model=llama3-8b", "model.load_format=dummy", "serve.quantization=fp8", "serve.kv_cache_dtype=fp8"],
        _probe(*H200),
    )
    assert kv8.estimate["fit"]["kv_bytes_per_token"] * 2 == plain.estimate["fit"]["kv_bytes_per_token"]


def test_fp8_on_a_quantized_checkpoint_is_not_online(plan_on, compose):
    # a checkpoint that says quantization_config is sized from its files (none here): no guess
    cfg = OmegaConf.to_object(compose(["model=llama3-8b"]))
    hf = dict(cfg.model.hf_config, quantization_config={"quant_method": "fp8", "activation_scheme": "dynamic"})
    assert memory.online_quantization("fp8", hf) is None
    plan = plan_on(
        ["hw=auto", "model=llama3-8b", "model.load_format=dummy", "serve.quantization=fp8"], _probe(*H200), hf
    )
    assert "fit" not in plan.estimate


def test_online_fp8_with_the_16_bit_files_on_disk_takes_the_saving_off_their_size(compose):
    cfg = OmegaConf.to_object(
        compose(["hw=auto", "model=llama3-8b", "model.load_format=dummy", "mode=plan", "cache_dir=/nonexistent"])
    )
    shape = ModelShape.from_hf_config(dict(cfg.model.hf_config))
    on_disk = {"bytes": shape.parameter_count() * 2, "bytes_by_dtype": {"BF16": shape.parameter_count() * 2}}
    fp8 = OmegaConf.to_object(
        compose(
            [
                "hw=auto",
                "model=llama3-8b",
                "model.load_format=dummy",
                "mode=plan",
                "cache_dir=/nonexistent",
                "serve.quantization=fp8",
            ]
        )
    )
    plan = make_plan(fp8, _probe(*H200), dict(fp8.model.hf_config), "0.26.0", {}, weights_on_disk=on_disk)
    assert plan.estimate["weights_source"] == "safetensors headers"
    assert plan.estimate["weights_gib"] == round(memory.weights_bytes(shape, 2, "fp8") / GIB, 2)
