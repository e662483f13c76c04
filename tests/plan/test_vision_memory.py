"""A multimodal model's vision encoder in the memory model, as vLLM 0.26's source runs it: the V2
model runner (dense models) leaves the encoder out of its memory profile, so the encoder's
activations for the largest image batch must stay free at serving time (head-room, a warning);
the V1 runner profiles it, so there it is part of the activation peak (the KV cache). Read from
the source, not measured on a GPU: runner/plan/memory.py, vision_encoder_peak_bytes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from runner.plan import memory
from runner.plan.shape import ModelShape

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "hf_configs"
H100 = 85_520_809_984  # NVML's total for an H100 80GB HBM3
VL = ModelShape.from_hf_config(json.loads((CONFIGS / "qwen2.5-vl-7b-instruct.json").read_text()))
TEXT = ModelShape.from_hf_config(json.loads((CONFIGS / "qwen2.5-7b-instruct.json").read_text()))


def _fit(shape, util=0.92, tp=1, tokens=None, arch=None):
    if arch:
        shape = dataclasses.replace(shape, architecture=arch)
    weights = memory.weights_bytes(shape, 2)
    return memory.predict(
        shape,
        tp,
        weights,
        H100,
        gpu_memory_utilization=util,
        max_model_len=32768,
        max_num_batched_tokens=tokens,
        gpu_name="NVIDIA H100 80GB HBM3",
        vllm_version="0.26.0",
    )


def test_the_largest_image_sets_the_encoder_budget():
    # Qwen2-VL's processor: 12,845,056 pixels at most, 14-pixel patches merged 2 x 2: 16,384 tokens
    assert memory.vision_encoder_tokens(VL, 8192) == 16384
    # a larger max_num_batched_tokens is the budget (max_num_encoder_input_tokens follows it)
    assert memory.vision_encoder_tokens(VL, 32768) == 32768
    assert memory.vision_encoder_tokens(TEXT, 8192) == 0


def test_the_encoder_mlp_splits_over_tp_and_grows_with_the_batch():
    one = memory.vision_encoder_peak_bytes(VL, 1, 16384)
    assert 1.5 * 2**30 < one < 3 * 2**30
    assert memory.vision_encoder_peak_bytes(VL, 4, 16384) < 0.7 * one
    assert memory.vision_encoder_peak_bytes(VL, 1, 32768) == pytest.approx(2 * one, rel=1e-6)
    assert memory.vision_encoder_peak_bytes(TEXT, 1, 16384) == 0


def test_on_the_v2_runner_the_encoder_is_head_room_not_kv_cache():
    assert not memory.uses_v1_model_runner(VL)
    base = _fit(VL)
    assert base.vision_encoder_serving_gib == pytest.approx(
        memory.vision_encoder_peak_bytes(VL, 1, 16384) / 2**30, abs=0.01
    )
    # the KV cache is what vLLM's profile leaves: the encoder is not in it
    no_encoder = _fit(dataclasses.replace(VL, vision_hidden_size=0))
    assert base.kv_cache_tokens == no_encoder.kv_cache_tokens
    assert base.activation_peak_gib == no_encoder.activation_peak_gib
    # ...but it must stay free: the utilization that keeps it is lower, and 0.95 warns where the
    # text model of the same numbers does not
    assert base.max_safe_utilization < no_encoder.max_safe_utilization
    assert not base.oom_risk
    high = _fit(VL, util=0.95)
    assert high.oom_risk and high.fits  # a warning, not a refusal: the figure is not measured
    assert not _fit(TEXT, util=0.95).oom_risk


def test_on_the_v1_runner_the_encoder_is_in_the_profile():
    # a MoE multimodal architecture outside the V2 runner's list runs on V1, which profiles the encoder
    moe = dataclasses.replace(VL, num_experts=64, moe_intermediate_size=1408, experts_per_token=6)
    fit = _fit(moe, arch="SomeVisionMoeForConditionalGeneration")
    assert memory.uses_v1_model_runner(dataclasses.replace(moe, architecture="SomeVisionMoeForConditionalGeneration"))
    assert fit.vision_encoder_serving_gib == 0
    without = _fit(dataclasses.replace(moe, vision_hidden_size=0), arch="SomeVisionMoeForConditionalGeneration")
    assert fit.activation_peak_gib >= without.activation_peak_gib
    assert fit.activation_peak_gib * 2**30 >= memory.vision_encoder_peak_bytes(VL, 1, 16384) - 0.01 * 2**30
