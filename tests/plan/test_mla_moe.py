"""MLA (DeepSeek-V2) and the larger MoE families (Qwen3-MoE, DeepSeek-MoE) in the shape and the
memory model, from their published config.json."""

from __future__ import annotations

import json
from pathlib import Path

from runner.plan import memory
from runner.plan.shape import ModelShape

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf_configs"
GIB = 2**30


def _shape(name: str) -> ModelShape:
    return ModelShape.from_hf_config(json.loads((FIXTURES / f"{name}.json").read_text()))


def test_parameter_counts_match_the_published_totals():
    # the model cards: Qwen3-30B-A3B 30.5B; DeepSeek-V2-Lite 15.7B
    assert round(_shape("qwen3-30b-a3b").parameter_count() / 1e9, 1) == 30.5
    assert round(_shape("deepseek-v2-lite").parameter_count() / 1e9, 1) == 15.7


def test_deepseek_moe_layers_dense_first_then_routed_and_shared_experts():
    shape = _shape("deepseek-v2-lite")
    assert shape.num_experts == 64 and shape.dense_layers == 1 and shape.shared_expert_intermediate_size == 2 * 1408
    names = {name.split(".", 3)[3] for name, *_ in shape.linear_layers() if name.startswith("model.layers.0.")}
    assert "mlp.gate_proj" in names and not any("experts" in n for n in names)
    layer1 = [row for row in shape.linear_layers() if row[0].startswith("model.layers.1.")]
    assert ("model.layers.1.mlp.experts.w13", 2048, 2 * 1408, 64) in layer1
    assert ("model.layers.1.mlp.shared_experts.down_proj", 2 * 1408, 2048, 1) in layer1
    # MLA's projections: q (no q_lora), kv_a to the 576-wide latent, kv_b back to 16 heads x (128 + 128)
    assert ("model.layers.1.self_attn.kv_a_proj_with_mqa", 2048, 576, 1) in layer1
    assert ("model.layers.1.self_attn.kv_b_proj", 512, 16 * 256, 1) in layer1


def test_mla_keeps_one_latent_per_token_and_layer_on_every_rank():
    shape = _shape("deepseek-v2-lite")
    per_layer = (512 + 64) * 2
    for tp in (1, 2, 4, 8):
        assert memory.kv_bytes_per_token(shape, tp) == 27 * per_layer
    # against the 16 KV heads x 192 x K,V a per-head cache would take
    assert memory.kv_bytes_per_token(shape, 1) * 10 < 27 * 16 * 192 * 2 * 2


def test_qwen3_moe_experts_are_what_online_fp8_quantizes():
    shape = _shape("qwen3-30b-a3b")
    experts = sum(k * n * c for name, k, n, c in shape.linear_layers() if ".experts." in name)
    assert experts == 48 * 128 * 3 * 2048 * 768
    saved = memory.weights_bytes(shape, 2) - memory.weights_bytes(shape, 2, "fp8")
    # each weight one byte lighter, less the float32 scales: one per QKV output row (the fused
    # module's per-row scales), one for o_proj, one per expert of w13 and of w2
    scales_per_layer = 4 * (32 * 128 + 2 * 4 * 128) + 4 + 2 * 128 * 4
    assert saved == shape.linear_parameter_count() - 48 * scales_per_layer
    assert round(memory.weights_bytes(shape, 2, "fp8") / GIB, 2) == 29.03  # predicted, not yet measured
    assert memory.kv_bytes_per_token(shape, 1) == 48 * 4 * 128 * 2 * 2
