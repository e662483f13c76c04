"""Weights and KV cache of quantized models, predicted before vLLM starts.

Online fp8 (serve.quantization=fp8 on a 16-bit checkpoint): vLLM's Fp8LinearMethod / Fp8MoEMethod
store every linear layer's weight in one byte; embeddings, the LM head and the norms keep bf16.
The one measured point: Llama-3.1-70B with serve.quantization=fp8 on one H200 (139.8 GiB, default
utilization 0.92) — "Model loading took 67.7 GiB", KV cache 58.4 GiB."""

from __future__ import annotations

import json
from pathlib import Path

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
    # what stays bf16: the embedding and the untied LM head (vocabulary padded to 64), the norms;
    # float32 scales: one per output row of the fused QKV (10,240) and gate_up (2 x 28,672), one
    # each for o_proj and down_proj
    kept = (2 * 128256 * 8192 + 80 * 2 * 8192 + 8192) * 2
    scales = 80 * 4 * (10240 + 1 + 2 * 28672 + 1)
    assert memory.weights_bytes(shape, 2, "fp8") == shape.linear_parameter_count() + kept + scales


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
    # a checkpoint that says quantization_config is sized from it (its files when present), not quantized again
    cfg = OmegaConf.to_object(compose(["model=llama3-8b"]))
    hf = dict(cfg.model.hf_config, quantization_config={"quant_method": "fp8", "activation_scheme": "dynamic"})
    assert memory.online_quantization("fp8", hf) is None
    plan = plan_on(
        ["hw=auto", "model=llama3-8b", "model.load_format=dummy", "serve.quantization=fp8"], _probe(*H200), hf
    )
    assert plan.estimate["weights_source"] == "config.json quantization_config (fp8)"
    assert "quantization" not in plan.estimate and abs(plan.estimate["weights_gib"] - 8.46) < 0.01


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


# ---- quantized checkpoints from config.json's quantization_config alone

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf_configs"


def _shape(name: str) -> ModelShape:
    return ModelShape.from_hf_config(json.loads((FIXTURES / f"{name}.json").read_text()))


# (fixture, quantization_config, the published checkpoint's safetensors total in GB)
CHECKPOINTS = [
    pytest.param(
        "qwen2.5-72b-instruct-awq",
        {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
        41.6,
        id="Qwen2.5-72B-Instruct-AWQ",
    ),
    pytest.param(
        "qwen2.5-7b-instruct",
        {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
        5.58,
        id="Qwen2.5-7B-Instruct-GPTQ-Int4",
    ),
    pytest.param(
        "qwen2.5-7b-instruct",
        {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True},
        5.58,
        id="Qwen2.5-7B-Instruct-AWQ",
    ),
    pytest.param(
        "llama-3.1-8b",
        {
            "quant_method": "compressed-tensors",
            "config_groups": {
                "group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}
            },
            "ignore": ["lm_head"],
        },
        9.08,
        id="Meta-Llama-3.1-8B-Instruct-FP8 (compressed-tensors)",
    ),
]


@pytest.mark.parametrize("fixture, qc, published_gb", CHECKPOINTS)
def test_checkpoint_weights_from_quantization_config_match_the_published_files(fixture, qc, published_gb):
    predicted = memory.checkpoint_weights_bytes(_shape(fixture), qc, 2)
    assert abs(predicted / 1e9 - published_gb) < 0.05 * published_gb
    assert abs(predicted / 1e9 - published_gb) < 0.1


def test_ignored_modules_stay_in_the_model_dtype():
    shape = _shape("llama-3.1-8b")
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    all_fp8 = memory.checkpoint_weights_bytes(shape, qc, 2)
    attention = sum(k * n for name, k, n, _ in shape.linear_layers() if ".self_attn." in name)
    for ignore in (["self_attn"], ["re:.*self_attn.*"], ["model.layers.*.self_attn"]):
        kept = memory.checkpoint_weights_bytes(shape, dict(qc, modules_to_not_convert=ignore), 2)
        # one more byte a weight for every attention matrix, less its per-tensor scales
        assert 0 <= attention - (kept - all_fp8) <= 4 * 3 * 4 * shape.num_hidden_layers
    # block-wise fp8 scales (128 x 128 float32) are counted
    block = memory.checkpoint_weights_bytes(shape, dict(qc, weight_block_size=[128, 128]), 2)
    assert 0 < block - all_fp8 < 0.001 * all_fp8


def test_mxfp4_quantizes_only_the_experts():
    shape = _shape("mixtral-8x7b-v0.1")
    qc = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "lm_head"]}
    experts = sum(k * n * c for name, k, n, c in shape.linear_layers() if ".experts." in name)
    full = shape.parameter_count() * 2
    assert memory.checkpoint_weights_bytes(shape, qc, 2) == full - experts * 2 + experts * 17 // 32


def test_an_unmodelled_method_is_not_guessed():
    assert memory.checkpoint_weights_bytes(_shape("llama-3.1-8b"), {"quant_method": "gguf"}, 2) is None


def test_the_files_on_disk_are_preferred_to_the_quantization_config(compose):
    awq = {k: v for k, v in json.loads((FIXTURES / "qwen2.5-72b-instruct-awq.json").read_text()).items() if k[0] != "_"}
    cfg = OmegaConf.to_object(
        compose(["hw=auto", "model=qwen2.5-72b", "model.load_format=dummy", "mode=plan", "cache_dir=/nonexistent"])
    )
    on_disk = {"bytes": 40 * GIB, "bytes_by_dtype": {"I32": 35 * GIB, "F16": 5 * GIB}}
    plan = make_plan(cfg, _probe(*H200), awq, "0.26.0", {}, weights_on_disk=on_disk)
    assert plan.estimate["weights_source"] == "safetensors headers" and plan.estimate["weights_gib"] == 40.0
    # without them, the config's 38.7 GiB; and no fp8 fix is offered for a quantized checkpoint
    plan = make_plan(cfg, _probe(*H200), awq, "0.26.0", {})
    assert abs(plan.estimate["weights_gib"] - 38.7) < 0.1
