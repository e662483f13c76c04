"""The generated model's files (config, tokenizer, safetensors) as vLLM reads them, and where
they are written (runner/launch/generate.py, runner/probe/models.py's model_dir)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import struct
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.config.schema import ModelConfig, ModelSource
from runner.launch import generate
from runner.plan.shape import ModelShape
from runner.probe import models


@pytest.fixture(scope="module")
def tiny(compose, tmp_path_factory):
    """tiny-llama materialised once into a fresh cache dir: (ModelConfig, cache_dir, path)."""
    model = OmegaConf.to_object(compose(["model=tiny-llama"])).model
    cache = str(tmp_path_factory.mktemp("cache"))
    return model, cache, Path(generate.materialise(model, cache))


def test_materialise_writes_the_model(tiny):
    model, cache, path = tiny
    assert str(path) == models.model_dir(model, cache)
    assert path.parent == Path(cache) / "models"
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors",
    ):
        assert (path / name).is_file(), name
    assert json.loads((path / "config.json").read_text()) == model.hf_config
    assert json.loads((path / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}
    # no staging directory left behind
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def _safetensors(path: Path):
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    return blob, n, header


def test_safetensors_header(tiny):
    model, _, path = tiny
    blob, n, header = _safetensors(path / "model.safetensors")
    assert n % 8 == 0
    assert header.pop("__metadata__") == {"format": "pt"}
    hf = model.hf_config
    layers, h, inter, vocab = hf["num_hidden_layers"], hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"]
    kv = hf["num_key_value_heads"] * hf["head_dim"]
    assert header["model.embed_tokens.weight"]["shape"] == [vocab, h]
    assert header["lm_head.weight"]["shape"] == [vocab, h]  # tie_word_embeddings: false
    assert header["model.layers.1.self_attn.k_proj.weight"]["shape"] == [kv, h]
    assert header["model.layers.0.mlp.down_proj.weight"]["shape"] == [h, inter]
    assert len(header) == 3 + 9 * layers
    spans = []
    for name, t in header.items():
        assert t["dtype"] == "BF16", name
        start, end = t["data_offsets"]
        assert end - start == math.prod(t["shape"]) * 2, name
        spans.append((start, end))
    spans.sort()
    assert spans[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # contiguous, no overlap
    assert len(blob) == 8 + n + spans[-1][1]
    # the parameter count the planner uses is the tensors' element count
    elements = sum(math.prod(t["shape"]) for t in header.values())
    assert elements == ModelShape.from_hf_config(model.hf_config).parameter_count()


def test_safetensors_values(tiny):
    import numpy as np

    _, _, path = tiny
    blob, n, header = _safetensors(path / "model.safetensors")
    data = blob[8 + n :]

    def tensor(name):
        start, end = header[name]["data_offsets"]
        bits = np.frombuffer(data[start:end], "<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(header[name]["shape"])

    assert np.all(tensor("model.norm.weight") == 1.0)
    q = tensor("model.layers.0.self_attn.q_proj.weight")
    assert np.isfinite(q).all()
    assert 0.015 < float(q.std()) < 0.025  # normal(0, 0.02)


def test_tokenizer_covers_the_vocabulary(tiny):
    from tokenizers import Tokenizer

    model, _, path = tiny
    vocab_size = model.hf_config["vocab_size"]
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    assert sorted(tok.get_vocab(with_added_tokens=True).values()) == list(range(vocab_size))
    for token_id in range(vocab_size):
        assert tok.decode([token_id], skip_special_tokens=False), token_id
    assert tok.id_to_token(1) == "<|begin_of_text|>" and tok.id_to_token(2) == "<|end_of_text|>"
    # ordinary text round-trips through the byte-level pieces
    text = "The capital of France is"
    assert tok.decode(tok.encode(text).ids) == text
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert tok_cfg["bos_token"] == "<|begin_of_text|>" and tok_cfg["eos_token"] == "<|end_of_text|>"


def test_materialise_is_idempotent(tiny, monkeypatch):
    model, cache, path = tiny
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}

    def boom(*a, **k):
        raise AssertionError("materialise rewrote the weights")

    monkeypatch.setattr(generate, "_random_safetensors", boom)
    monkeypatch.setattr(generate, "_tokenizer_files", boom)
    assert generate.materialise(model, cache) == str(path)
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_generated_dir_depends_on_config_and_seed(tiny):
    model, cache, path = tiny
    reseeded = dataclasses.replace(model, seed=1)
    assert models.model_dir(reseeded, cache) != str(path)
    assert models.model_dir(dataclasses.replace(model), cache) == str(path)


def test_materialise_dummy_shape_writes_no_weights(tmp_path):
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 300,
        "bos_token_id": 1,
        "eos_token_id": [2, 3],
    }
    model = ModelConfig(name="shape-x", source=ModelSource.shape, load_format="dummy", hf_config=hf)
    path = Path(generate.materialise(model, str(tmp_path)))
    assert path.parent == tmp_path / "shapes"
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert not (path / "model.safetensors").exists()
    assert models.inspect_model(model, str(tmp_path)) == (hf, [])  # read back from the written directory


def test_materialise_leaves_real_paths_alone(tmp_path):
    model = ModelConfig(name="real", source=ModelSource.shape, path=str(tmp_path / "weights"))
    assert generate.materialise(model, str(tmp_path / "cache")) == str(tmp_path / "weights")
    assert not (tmp_path / "cache").exists()
    no_weights = ModelConfig(name="real", source=ModelSource.shape)
    assert models.model_dir(no_weights, str(tmp_path)) is None
    assert generate.materialise(no_weights, str(tmp_path / "cache")) is None


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Capital of France?"},
]

# The shipped entries' families, rendered as the real models' tokenizers render this conversation.
RENDERED = {
    "tiny-llama": "system: Be brief.\nuser: Hi\nassistant: Hello\nuser: Capital of France?\nassistant:",
    "llama3-8b": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "qwen2.5-7b": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "mixtral-8x7b": "<s>[INST] Be brief.\n\nHi [/INST]Hello</s>[INST] Capital of France? [/INST]",
}

# The special tokens each family's template writes, at the real tokenizers' ids.
SPECIAL_IDS = {
    "tiny-llama": {},
    "llama3-8b": {
        "<|begin_of_text|>": 128000,
        "<|start_header_id|>": 128006,
        "<|end_header_id|>": 128007,
        "<|eot_id|>": 128009,
    },
    "qwen2.5-7b": {"<|im_start|>": 151644, "<|im_end|>": 151645, "<|endoftext|>": 151643},
    "mixtral-8x7b": {"<s>": 1, "</s>": 2},
}


def _write_tokenizer(hf, chat_template, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    for name, text in generate._tokenizer_files(hf, chat_template).items():
        (where / name).write_text(text)
    return where


@pytest.mark.parametrize("entry", sorted(RENDERED))
def test_written_tokenizer_renders_the_family_chat_format(compose, entry, tmp_path):
    from transformers import PreTrainedTokenizerFast

    model = OmegaConf.to_object(compose([f"model={entry}"])).model
    path = _write_tokenizer(model.hf_config, model.chat_template, tmp_path / entry)
    assert json.loads((path / "tokenizer_config.json").read_text())["chat_template"]
    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    assert len(tok) == model.hf_config["vocab_size"]
    assert tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) == RENDERED[entry]
    for name, token_id in SPECIAL_IDS[entry].items():
        assert tok.convert_tokens_to_ids(name) == token_id, name
    # the template's markers are single tokens: the prompt is the byte pieces plus those
    ids = tok.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True)["input_ids"]
    specials = [t for t in tok.convert_ids_to_tokens(ids) if t in SPECIAL_IDS[entry]]
    assert tok.decode(ids) == RENDERED[entry]
    assert len(ids) == len(RENDERED[entry].encode()) - sum(len(s.encode()) - 1 for s in specials)


def test_a_small_vocabulary_gets_the_template_tokens_at_its_top(tmp_path):
    from transformers import PreTrainedTokenizerFast

    hf = {"vocab_size": 300, "bos_token_id": 1, "eos_token_id": 2}
    tok = PreTrainedTokenizerFast.from_pretrained(str(_write_tokenizer(hf, "llama3", tmp_path)))
    assert len(tok) == 300
    top = {tok.convert_tokens_to_ids(t) for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")}
    assert top == {297, 298, 299}
    text = tok.apply_chat_template(CONVERSATION[1:2], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")


def test_generated_model_has_a_chat_template(tiny):
    _, _, path = tiny
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    chat = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == "user: Hi\nassistant:"


def test_a_directory_from_before_the_template_gets_it_and_keeps_its_weights(compose, tmp_path):
    model = OmegaConf.to_object(compose(["model=tiny-llama"])).model
    path = Path(generate.materialise(model, str(tmp_path)))
    weights = (path / "model.safetensors").stat().st_mtime_ns
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    template = tok_cfg.pop("chat_template")
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg))  # as an earlier version wrote it
    assert generate.materialise(model, str(tmp_path)) == str(path)
    assert json.loads((path / "tokenizer_config.json").read_text())["chat_template"] == template
    assert (path / "model.safetensors").stat().st_mtime_ns == weights
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    )
    # another family for the same numbers: the tokenizer files follow it
    llama3 = dataclasses.replace(model, chat_template="llama3")
    generate.materialise(llama3, str(tmp_path))
    assert "<|eot_id|>" in json.loads((path / "tokenizer_config.json").read_text())["chat_template"]
