"""Sliding-window and hybrid attention in the KV-cache pool, as vLLM's hybrid KV-cache manager
lays it out (vllm/v1/core/kv_cache_utils.py, _get_kv_cache_groups_uniform_page_size;
vllm/v1/kv_cache_interface.py, SlidingWindowSpec.max_memory_usage_bytes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.plan import memory
from runner.plan.build import make_plan
from runner.plan.shape import ModelShape
from runner.probe.hardware import Gpu, HardwareProbe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf_configs"
GIB = 2**30


def _cfg(name: str) -> dict:
    return {k: v for k, v in json.loads((FIXTURES / f"{name}.json").read_text()).items() if not k.startswith("_")}


def test_layer_types_as_vllm_reads_them():
    gemma = ModelShape.from_hf_config(_cfg("gemma-2-9b"))
    assert gemma.sliding_window == 4096
    assert gemma.layer_types[:4] == ("sliding_attention", "full_attention", "sliding_attention", "full_attention")
    assert gemma.layer_types.count("sliding_attention") == 21 == gemma.layer_types.count("full_attention")
    # a model-level window slides every layer (Phi-3's 2047); Qwen2's use_sliding_window false does not
    phi = ModelShape.from_hf_config(_cfg("phi-3-mini-4k-instruct"))
    assert set(phi.layer_types) == {"sliding_attention"} and phi.sliding_window == 2047
    assert ModelShape.from_hf_config(_cfg("qwen2.5-7b-instruct")).layer_types == ()
    assert ModelShape.from_hf_config(_cfg("mistral-7b-v0.3")).layer_types == ()
    # an explicit layer_types list wins (gpt-oss, Gemma-3 as transformers writes them)
    explicit = dict(_cfg("llama-3.1-8b"), sliding_window=128, layer_types=["sliding_attention", "full_attention"] * 16)
    assert ModelShape.from_hf_config(explicit).layer_types.count("full_attention") == 16
    gemma3 = dict(_cfg("gemma-2-9b"), model_type="gemma3_text", num_hidden_layers=62, sliding_window_pattern=6)
    kinds = ModelShape.from_hf_config(gemma3).layer_types
    assert kinds.count("full_attention") == 10 and kinds[5] == "full_attention" and kinds[6] == "sliding_attention"


def test_gemma2_pool_halves_into_two_groups_and_a_request_needs_the_window_only_on_sliding_layers():
    shape = ModelShape.from_hf_config(_cfg("gemma-2-9b"))
    page = 8 * 256 * 2 * 2 * 16  # 8 KV heads x head_dim 256 x K,V x bf16 x 16 tokens
    pool = memory.kv_pool(shape, 1, 1, 2, 8192, 8192)
    assert pool.bytes_per_block == 21 * page and pool.groups == 2
    # 8192 tokens: full layers 512 blocks; sliding min(4095 + 8192, 8192) -> 512 + 1
    assert pool.blocks_per_request == 512 + 513
    # "GPU KV cache size" in tokens is vLLM's concurrency x max_model_len (get_kv_cache_capacity): one
    # request takes 512 + 513 blocks of the pool (H200, vLLM 0.26: 343,272 tokens, not a multiple of 16)
    fit = memory.predict(shape, 1, shape.parameter_count() * 2, int(139.8 * GIB), max_model_len=8192)
    blocks = int(fit.kv_cache_gib * GIB // pool.bytes_per_block)
    assert abs(fit.kv_cache_tokens - blocks / (512 + 513) * 8192) <= 3 * 8192 / (512 + 513)  # GiB rounded
    assert abs(fit.kv_cache_tokens - fit.kv_cache_gib * GIB / fit.kv_bytes_per_token) < 0.01 * fit.kv_cache_tokens
    # a long context: the sliding half stays at the window, so more requests fit than full attention allows
    # (the window plus two batches of 1024 in flight: 385 blocks a sliding group, not 513)
    long = memory.predict(
        shape, 1, shape.parameter_count() * 2, int(139.8 * GIB), max_model_len=8192, max_num_batched_tokens=1024
    )
    stored = long.kv_cache_gib * GIB / long.kv_bytes_per_token  # tokens the blocks hold, every layer full
    assert long.max_concurrency > 1.1 * stored / 8192


def test_gemma3_pads_the_sliding_groups_to_the_full_groups_size():
    gemma3 = dict(_cfg("gemma-2-9b"), model_type="gemma3_text", num_hidden_layers=62, sliding_window_pattern=6)
    shape = ModelShape.from_hf_config(gemma3)
    pool = memory.kv_pool(shape, 1, 1, 2, 32768, 8192)
    # 10 full + 52 sliding: groups of 10 -> 1 full + 6 sliding groups (8 padding layers)
    page = 8 * 256 * 2 * 2 * 16
    assert pool.groups == 7 and pool.bytes_per_block == 10 * page
    assert pool.blocks_per_request == 2048 + 6 * (math.ceil((4095 + 8192) / 16) + 1)


def test_all_layers_sliding_is_one_group_and_fits_longer_contexts():
    shape = ModelShape.from_hf_config(_cfg("phi-3-mini-4k-instruct"))
    pool = memory.kv_pool(shape, 1, 1, 2, 4096, 2048)
    assert pool.groups == 1 and pool.sliding
    assert pool.blocks_per_request == math.ceil(4095 / 16) + 1  # min(2046 + 2048, 4096)
    # a KV cache of fewer tokens than max_model_len still serves, as long as one request's window fits:
    # the window plus what is in flight, two batches of 512 under async scheduling
    per_request = math.ceil((2046 + 2 * 512) / 16) + 1
    weights = shape.parameter_count() * 2
    seen = set()
    for tenth in range(90, 130):
        fit = memory.predict(shape, 1, weights, int(tenth / 10 * GIB), max_model_len=4096, max_num_batched_tokens=512)
        blocks = fit.max_concurrency * per_request  # concurrency is blocks over one request's blocks
        if 0 < blocks < per_request - 2:
            assert not fit.fits and "sliding-window" in fit.why_not
            seen.add("short")
        elif per_request + 2 <= blocks < 256:
            # the blocks hold fewer tokens than max_model_len; vLLM counts the tokens it serves
            assert fit.fits and blocks * 16 < 4096 and fit.max_concurrency >= 1
            assert fit.kv_cache_tokens >= 4096
            seen.add("window")
    assert seen == {"short", "window"}


def test_a_float32_checkpoint_is_served_in_16_bits():
    shape = ModelShape.from_hf_config(_cfg("gemma-2-9b"))
    assert shape.torch_dtype == "float32" and shape.served_dtype_bytes("auto") == 2
    assert shape.served_dtype_bytes("float32") == 4
    assert abs(shape.parameter_count() * 2 / GIB - 17.21) < 0.01


@pytest.mark.parametrize("model", ["gemma-2-9b", "gemma-2-27b", "mistral-7b-v0.1"])
def test_the_sliding_window_entries_plan_on_one_h200(compose, model):
    cfg = OmegaConf.to_object(
        compose(["hw=auto", f"model={model}", "model.load_format=dummy", "mode=plan", "cache_dir=/nonexistent"])
    )
    total = 143771 * 2**20  # an H200's NVML total
    gpu = Gpu(0, "NVIDIA H200", "00000000:00:06.0", total, total - 500 * 2**20, (9, 0))
    plan = make_plan(
        cfg,
        HardwareProbe(gpus=(gpu,), cpus_allowed=tuple(range(16)), source="nvml"),
        dict(cfg.model.hf_config),
        "0.26.0",
        {},
    )
    assert plan.ok, plan.problems
    fit = plan.estimate["fit"]
    published = json.loads((FIXTURES / f"{model}.json").read_text())
    assert ModelShape.from_hf_config(dict(cfg.model.hf_config)) == ModelShape.from_hf_config(published)
    assert fit["max_concurrency"] >= 1 and fit["kv_cache_tokens"] > 0
