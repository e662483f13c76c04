"""The generated model's files (config, tokenizer, safetensors, a multimodal processor's) as vLLM
and transformers read them, and where they are written (runner/launch/generate.py,
runner/probe/models.py's model_dir)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import struct
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.config.schema import ModelConfig, ModelSource, Processor
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


# --------------------------------------------------------------------------- multimodal processor

# Qwen2.5-VL's published preprocessor_config.json.
QWEN2_5_VL_PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}

# The placeholder tokens Qwen2.5-VL's processor and vLLM look up, and the config.json key of each id.
VISION_TOKENS = {
    "<|vision_start|>": "vision_start_token_id",
    "<|vision_end|>": "vision_end_token_id",
    "<|vision_pad|>": "vision_token_id",
    "<|image_pad|>": "image_token_id",
    "<|video_pad|>": "video_token_id",
}


@pytest.fixture
def offline(monkeypatch):
    """No hub: what loads from the written directory must load from it alone."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def vl(compose, tmp_path_factory):
    """qwen2.5-vl-7b with dummy weights, materialised once: (ModelConfig, cache_dir, path)."""
    model = OmegaConf.to_object(compose(["model=qwen2.5-vl-7b", "model.load_format=dummy"])).model
    cache = str(tmp_path_factory.mktemp("cache"))
    return model, cache, Path(generate.materialise(model, cache))


def _image(width, height):
    from PIL import Image

    return Image.new("RGB", (width, height), (200, 30, 90))


def test_the_vl_entry_names_its_processor(vl):
    model, _, _ = vl
    assert model.processor is Processor.qwen2_5_vl
    # the text entries write no processor
    assert ModelConfig(name="x").processor is Processor.none


def test_materialise_writes_the_processor_files(vl):
    model, cache, path = vl
    assert path.parent == Path(cache) / "shapes"
    assert sorted(p.name for p in path.iterdir()) == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    preprocessor = json.loads((path / "preprocessor_config.json").read_text())
    assert preprocessor == QWEN2_5_VL_PREPROCESSOR
    # the processor cuts images as the encoder of these numbers reads them
    vision = model.hf_config["vision_config"]
    assert preprocessor["patch_size"] == vision["patch_size"]
    assert preprocessor["merge_size"] == vision["spatial_merge_size"]
    assert preprocessor["temporal_patch_size"] == vision["temporal_patch_size"]
    # the processor's template and the tokenizer's are one
    template = (path / "chat_template.jinja").read_text()
    assert json.loads((path / "tokenizer_config.json").read_text())["chat_template"] == template
    assert models.inspect_model(model, cache) == (model.hf_config, [])


def test_a_smaller_encoder_gets_its_own_patch_and_merge_sizes():
    hf = {"vision_config": {"patch_size": 16, "spatial_merge_size": 1, "temporal_patch_size": 1}}
    model = ModelConfig(name="vl", hf_config=hf, processor=Processor.qwen2_5_vl)
    preprocessor = json.loads(generate._processor_files(model)["preprocessor_config.json"])
    assert (preprocessor["patch_size"], preprocessor["merge_size"], preprocessor["temporal_patch_size"]) == (16, 1, 1)
    assert preprocessor["max_pixels"] == 12845056  # the family's, not the encoder's
    assert generate._processor_files(ModelConfig(name="text", hf_config=hf)) == {}


def test_config_and_image_processor_load_offline(vl, offline):
    import numpy as np
    from transformers import AutoConfig, AutoImageProcessor

    model, _, path = vl
    config = AutoConfig.from_pretrained(str(path))
    assert type(config).__name__ == "Qwen2_5_VLConfig"
    assert config.image_token_id == 151655 and config.vision_config.spatial_merge_size == 2
    # Qwen2VLImageProcessor where torchvision is installed, its PIL twin where it is not
    image_processor = AutoImageProcessor.from_pretrained(str(path))
    assert type(image_processor).__name__.startswith("Qwen2VLImageProcessor")
    assert (image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size) == (14, 2, 2)
    assert (image_processor.size["shortest_edge"], image_processor.size["longest_edge"]) == (3136, 12845056)
    assert list(image_processor.image_mean) == QWEN2_5_VL_PREPROCESSOR["image_mean"]
    # a 84 x 56 image is 6 x 4 patches of 14: one frame, repeated to the temporal patch of 2
    out = image_processor(images=[_image(84, 56)], return_tensors="np")
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert out["pixel_values"].shape == (24, 3 * 2 * 14 * 14)
    assert np.isfinite(out["pixel_values"]).all()


def test_tokenizer_knows_the_vision_tokens_at_the_config_ids(vl, offline):
    from transformers import AutoTokenizer

    model, _, path = vl
    tok = AutoTokenizer.from_pretrained(str(path))
    assert len(tok) == model.hf_config["vocab_size"]
    for name, key in VISION_TOKENS.items():
        assert tok.convert_tokens_to_ids(name) == model.hf_config[key], name
    placeholder = "<|vision_start|><|image_pad|><|vision_end|>"
    ids = tok(placeholder + "cat", add_special_tokens=False)["input_ids"]
    assert ids[:3] == [151652, 151655, 151653] and len(ids) == 6
    assert tok.decode(ids, skip_special_tokens=True) == "cat"
    # the chat tokens are still where the text model has them
    assert tok.convert_tokens_to_ids("<|im_start|>") == 151644 and tok.eos_token == "<|im_end|>"


def test_chat_template_places_images_and_videos(vl, offline):
    from transformers import AutoTokenizer

    _, _, path = vl
    tok = AutoTokenizer.from_pretrained(str(path))
    # text-only conversations render as the text model's do
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert text == RENDERED["qwen2.5-7b"]
    parts = [
        {"type": "image"},
        {"type": "video"},
        {"type": "text", "text": "What is in both?"},
    ]
    chat = [{"role": "user", "content": parts}]
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|video_pad|><|vision_end|>What is in both?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_the_image_processor_reads_the_written_config_without_torchvision(vl, offline):
    """transformers' PIL backend of Qwen2-VL's image processor (no torchvision, so it runs on the
    CPU box too): the written preprocessor_config.json's patch, merge and pixel bounds decide how
    an image is cut, as vLLM's processor cuts it."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    _, _, path = vl
    processor = Qwen2VLImageProcessorPil.from_pretrained(str(path))
    assert (processor.patch_size, processor.merge_size, processor.temporal_patch_size) == (14, 2, 2)
    small = processor(images=[_image(84, 56)], return_tensors="np")
    # 56 x 84 pixels in 14-pixel patches: 4 x 6, merged 2 x 2 into six LM tokens
    assert small["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert small["pixel_values"].shape == (24, 3 * 2 * 14 * 14)
    # the largest image is held to max_pixels: at most 16,384 LM tokens, the encoder budget the
    # planner sizes (runner/plan/memory.py, vision_encoder_tokens)
    big = processor(images=[_image(5000, 5000)], return_tensors="np")
    t, h, w = big["image_grid_thw"].tolist()[0]
    assert h * w * 14 * 14 <= QWEN2_5_VL_PREPROCESSOR["max_pixels"]
    assert 0.9 * 16384 < h * w // 4 <= 16384


def test_auto_processor_loads_offline_and_expands_the_image(vl, offline):
    pytest.importorskip("torchvision", exc_type=ImportError)  # the video processor needs it
    from transformers import AutoProcessor

    model, _, path = vl
    processor = AutoProcessor.from_pretrained(str(path))
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert processor.image_token_id == model.hf_config["image_token_id"]
    assert processor.video_token_id == model.hf_config["video_token_id"]
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    out = processor(text=[prompt], images=[_image(84, 56)], return_tensors="np")
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]
    # 4 x 6 patches merged 2 x 2: six image tokens in place of the one placeholder
    assert out["input_ids"][0].tolist().count(processor.image_token_id) == 6


def test_vllm_builds_the_multimodal_processor(vl, offline):
    """What failed on the GPU machine: vLLM's start builds the processor and sizes the
    encoder's budget from the largest image it allows (the dummy inputs below)."""
    pytest.importorskip("torchvision", exc_type=ImportError)  # vLLM's Qwen2-VL module imports it
    pytest.importorskip("vllm")
    from vllm.config import ModelConfig as VllmModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    model, _, path = vl
    config = VllmModelConfig(model=str(path), tokenizer=str(path), max_model_len=model.max_model_len)
    assert config.is_multimodal_model
    processor = MULTIMODAL_REGISTRY.create_processor(config)
    assert processor.info.get_hf_processor().image_token_id == model.hf_config["image_token_id"]
    dummy = processor.get_dummy_mm_inputs({"image": 1}, cache=None)
    # max_pixels / (14 x 2)^2 pixels a token
    assert [p.get_num_embeds() for p in dummy["mm_placeholders"]["image"]] == [12845056 // 28**2]


def test_a_directory_from_before_the_processor_gets_it_and_keeps_its_tokenizer_ids(vl, tmp_path):
    model, _, _ = vl
    text_only = dataclasses.replace(model, processor=Processor.none)  # as an earlier version wrote it
    path = Path(generate.materialise(text_only, str(tmp_path)))
    assert not (path / "preprocessor_config.json").exists() and not (path / "chat_template.jinja").exists()
    assert "<|image_pad|>" not in (path / "tokenizer_config.json").read_text()
    config = (path / "config.json").stat().st_mtime_ns
    assert generate.materialise(model, str(tmp_path)) == str(path)
    assert json.loads((path / "preprocessor_config.json").read_text()) == QWEN2_5_VL_PREPROCESSOR
    added = json.loads((path / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert added["151655"]["content"] == "<|image_pad|>"
    assert (path / "config.json").stat().st_mtime_ns == config
    # and back: a text entry of the same numbers gets no processor (its template would win)
    generate.materialise(text_only, str(tmp_path))
    assert not (path / "preprocessor_config.json").exists() and not (path / "chat_template.jinja").exists()
    assert "<|image_pad|>" not in (path / "tokenizer_config.json").read_text()


def test_materialise_of_a_current_vl_directory_rewrites_nothing(vl, monkeypatch):
    model, cache, path = vl
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}

    def boom(*a, **k):
        raise AssertionError("materialise rewrote the tokenizer")

    monkeypatch.setattr(generate, "_tokenizer_files", boom)
    assert generate.materialise(model, cache) == str(path)
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
