"""A multimodal model's vision encoder: its weights count, and its heads and MLP width must
divide the TP size as the text model's do (vLLM splits the encoder over the same ranks)."""

from __future__ import annotations

import json
from pathlib import Path

from runner.plan.rules import tp_violation, valid_tp_sizes
from runner.plan.shape import ModelShape

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf_configs"


def _cfg(name: str) -> dict:
    return {k: v for k, v in json.loads((FIXTURES / f"{name}.json").read_text()).items() if not k.startswith("_")}


def test_qwen2_5_vl_counts_its_vision_encoder():
    shape = ModelShape.from_hf_config(_cfg("qwen2.5-vl-7b-instruct"))
    # the model card's 8.29B, of which the ViT and its merger are 0.68B
    assert round(shape.parameter_count() / 1e9, 2) == 8.29
    assert round(shape.vision_parameters / 1e9, 2) == 0.68
    assert shape.vision_heads == 16 and shape.vision_intermediate_size == 3420
    assert valid_tp_sizes(shape, 8, _cfg("qwen2.5-vl-7b-instruct")) == [1, 2, 4]


def test_vision_heads_and_width_must_divide_tp():
    cfg = _cfg("llama-3.1-8b")
    cfg["vision_config"] = {
        "hidden_size": 1152,
        "num_attention_heads": 12,
        "num_hidden_layers": 4,
        "intermediate_size": 4304,
    }
    shape = ModelShape.from_hf_config(cfg)
    assert tp_violation(shape, 4, cfg) is None
    assert "vision_config num_heads=12" in tp_violation(shape, 8, cfg)
    cfg["vision_config"].update(num_attention_heads=16, intermediate_size=4300)
    assert "vision_config intermediate_size=4300" in tp_violation(ModelShape.from_hf_config(cfg), 8, cfg)
    assert ModelShape.from_hf_config(cfg).vision_parameters > 0
