"""Model shapes and parameter counts from config.json (runner/plan/shape.py)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from runner.plan.shape import ModelShape


def _hf(compose, model):
    return OmegaConf.to_object(compose([f"model={model}"])).model.hf_config


@pytest.mark.parametrize(
    "model, params, rel",
    [
        ("llama3-8b", 8.03e9, 0.01),
        ("llama70b", 70.6e9, 0.01),
        ("mixtral-8x7b", 46.7e9, 0.01),
        ("qwen2.5-7b", 7.6e9, 0.02),  # the real 7.62e9 includes qkv biases we ignore
        ("qwen2.5-72b", 72.7e9, 0.02),
    ],
)
def test_parameter_count(compose, model, params, rel):
    assert ModelShape.from_hf_config(_hf(compose, model)).parameter_count() == pytest.approx(params, rel=rel)


def test_model_shape_fields(compose):
    shape = ModelShape.from_hf_config(_hf(compose, "mixtral-8x7b"))
    assert (shape.num_attention_heads, shape.num_key_value_heads, shape.num_experts) == (32, 8, 8)
    assert shape.architecture == "MixtralForCausalLM" and shape.torch_dtype == "bfloat16"
    # multimodal wrappers keep the language model's numbers in text_config
    wrapped = ModelShape.from_hf_config({"architectures": ["X"], "text_config": _hf(compose, "llama3-8b")})
    assert wrapped.num_attention_heads == 32 and wrapped.vocab_size == 128256
    # num_key_value_heads absent: multi-head attention
    mha = dict(_hf(compose, "llama3-8b"))
    del mha["num_key_value_heads"]
    assert ModelShape.from_hf_config(mha).num_key_value_heads == 32
