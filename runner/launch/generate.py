"""The models the runner writes itself, just before a launch (or when mode=plan prints the
command that would launch one): the generated tiny Llama (config.json, a byte-level BPE
tokenizer and random bfloat16 weights) and, for shape entries rehearsed with
``load_format=dummy``, config.json and a tokenizer alone.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

from runner.config.schema import ModelConfig, ModelSource
from runner.plan.shape import ModelShape
from runner.probe.models import model_dir


def _tokenizer_files(hf_config: Dict[str, Any]) -> Dict[str, str]:
    """A byte-level BPE tokenizer whose vocabulary spans the model's whole vocab_size.

    Covering every id matters for dummy and random weights: the model may emit any id, and
    the detokenizer must be able to turn each into text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab_size = int((hf_config.get("text_config") or hf_config)["vocab_size"])
    bos_id = hf_config.get("bos_token_id")
    eos = hf_config.get("eos_token_id")
    eos_id = eos[0] if isinstance(eos, list) else eos
    specials = {}
    if bos_id is not None and bos_id < vocab_size:
        specials[int(bos_id)] = "<|begin_of_text|>"
    if eos_id is not None and eos_id < vocab_size:
        specials[int(eos_id)] = "<|end_of_text|>"
    byte_chars = iter(sorted(pre_tokenizers.ByteLevel.alphabet()))
    vocab: Dict[str, int] = {}
    for token_id in range(vocab_size):
        if token_id in specials:
            vocab[specials[token_id]] = token_id
            continue
        char = next(byte_chars, None)
        vocab[char if char is not None else f"<|reserved_{token_id}|>"] = token_id
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials.values()))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(hf_config.get("max_position_embeddings") or 2048),
        "clean_up_tokenization_spaces": False,
    }
    if bos_id in specials:
        tok_config["bos_token"] = specials[bos_id]
    if eos_id in specials:
        tok_config["eos_token"] = specials[eos_id]
    return {
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": json.dumps(tok_config, indent=2),
    }


def _random_safetensors(hf_config: Dict[str, Any], seed: int) -> bytes:
    """Random Llama weights in safetensors format, bfloat16, written without torch."""
    import numpy as np

    shape = ModelShape.from_hf_config(hf_config)
    h, inter, head_dim = shape.hidden_size, shape.intermediate_size, shape.head_dim
    q, kv = shape.num_attention_heads * head_dim, shape.num_key_value_heads * head_dim
    tensors: Dict[str, tuple] = {"model.embed_tokens.weight": (shape.vocab_size, h), "model.norm.weight": (h,)}
    if not shape.tie_word_embeddings:
        tensors["lm_head.weight"] = (shape.vocab_size, h)
    for i in range(shape.num_hidden_layers):
        p = f"model.layers.{i}."
        tensors.update(
            {
                p + "self_attn.q_proj.weight": (q, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, q),
                p + "mlp.gate_proj.weight": (inter, h),
                p + "mlp.up_proj.weight": (inter, h),
                p + "mlp.down_proj.weight": (h, inter),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    rng = np.random.default_rng(seed)
    header: Dict[str, Any] = {"__metadata__": {"format": "pt"}}
    chunks, offset = [], 0
    for name in sorted(tensors):
        dims = tensors[name]
        values = np.ones(dims, np.float32) if len(dims) == 1 else rng.normal(0, 0.02, dims).astype(np.float32)
        bits = values.view(np.uint32)
        # Round to nearest even, then keep the upper half: float32 -> bfloat16.
        bf16 = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [offset, offset + len(bf16)]}
        chunks.append(bf16)
        offset += len(bf16)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def materialise(model: ModelConfig, cache_dir: str) -> Optional[str]:
    """Write the files vLLM needs for a generated or dummy-weight model, once.

    Written into a temporary directory and renamed into place, so concurrent runs (a
    multirun, two terminals) never see half a model."""
    where = model_dir(model, cache_dir)
    if where is None or model.path:
        return where
    target = Path(where)
    if (target / "config.json").is_file():
        return where
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        hf = dict(model.hf_config)
        files = _tokenizer_files(hf)
        files["config.json"] = json.dumps(hf, indent=2)
        gen = {k: hf[k] for k in ("bos_token_id", "eos_token_id") if k in hf}
        files["generation_config.json"] = json.dumps(gen, indent=2)
        for name, text in files.items():
            (staging / name).write_text(text)
        if model.source is ModelSource.generated:
            (staging / "model.safetensors").write_bytes(_random_safetensors(hf, model.seed))
        try:
            os.rename(staging, target)
        except OSError:  # another run won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return where
