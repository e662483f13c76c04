"""The models the runner writes itself, just before a launch (or when mode=plan prints the
command that would launch one): the generated tiny Llama (config.json, a byte-level BPE
tokenizer and random bfloat16 weights) and, for shape entries rehearsed with
``load_format=dummy``, config.json and a tokenizer alone — with, for a multimodal entry, its
processor's files (``model.processor``: preprocessor_config.json, the vision tokens, a chat
template that places images), which vLLM reads at start-up to size the vision encoder's budget.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from runner.config.schema import ChatTemplate, ModelConfig, ModelSource, Processor
from runner.plan.shape import ModelShape
from runner.probe.models import model_dir


@dataclass(frozen=True)
class ChatFormat:
    """A chat template (Jinja, as transformers renders it) and the special tokens it needs."""

    template: str
    bos: str
    eos: str
    # further special tokens the template writes, at the ids the real tokenizer gives them
    # (a vocabulary too small for those ids gets them at its top instead)
    extra: Tuple[Tuple[str, int], ...] = ()


# Public format facts of each family, written for this project; each template renders the
# conversation and, with add_generation_prompt, the assistant's opening.
CHAT_FORMATS: Dict[ChatTemplate, ChatFormat] = {
    # Plain text markers: a byte-level tokenizer without merges encodes them with no extra tokens.
    ChatTemplate.plain: ChatFormat(
        template=(
            "{%- for message in messages %}"
            "{{- message['role'] + ': ' + message['content'] + '\n' }}"
            "{%- endfor %}"
            "{%- if add_generation_prompt %}{{- 'assistant:' }}{%- endif %}"
        ),
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
    ),
    ChatTemplate.llama3: ChatFormat(
        template=(
            "{{- bos_token }}"
            "{%- for message in messages %}"
            "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
            " + message['content'] | trim + '<|eot_id|>' }}"
            "{%- endfor %}"
            "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
        ),
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
        extra=(("<|start_header_id|>", 128006), ("<|end_header_id|>", 128007), ("<|eot_id|>", 128009)),
    ),
    ChatTemplate.chatml: ChatFormat(
        template=(
            "{%- for message in messages %}"
            "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
            "{%- endfor %}"
            "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
        ),
        bos="<|endoftext|>",
        eos="<|im_end|>",
        extra=(("<|im_start|>", 151644), ("<|im_end|>", 151645)),
    ),
    # [INST] and [/INST] are plain text in Mixtral's tokenizer; a system message (which the
    # format has no turn for) opens the first user turn.
    ChatTemplate.mistral: ChatFormat(
        template=(
            "{{- bos_token }}"
            "{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' %}"
            "{%- for message in messages if message['role'] != 'system' %}"
            "{%- if message['role'] == 'user' %}"
            "{{- '[INST] ' + (system + '\n\n' if system and loop.first else '') + message['content'] + ' [/INST]' }}"
            "{%- else %}"
            "{{- message['content'] + eos_token }}"
            "{%- endif %}"
            "{%- endfor %}"
        ),
        bos="<s>",
        eos="</s>",
    ),
}


@dataclass(frozen=True)
class ProcessorFormat:
    """A multimodal family's processor: its files and the tokens it looks up in the tokenizer."""

    # preprocessor_config.json: the family's published values
    preprocessor: Mapping[str, Any]
    # preprocessor keys taken from config.json's vision_config (key there), so that the
    # processor cuts images the way the encoder of these numbers reads them
    from_vision: Tuple[Tuple[str, str], ...]
    # the placeholder tokens, each at the id the config.json key beside it names
    tokens: Tuple[Tuple[str, str], ...]
    # what the chat template writes for an image part and a video part of a message
    image: str
    video: str


# Public facts of each family's published processor, written for this project.
PROCESSOR_FORMATS: Dict[Processor, ProcessorFormat] = {
    Processor.qwen2_5_vl: ProcessorFormat(
        preprocessor={
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "min_pixels": 3136,  # 56 x 56
            "max_pixels": 12845056,  # 28 x 28 x 16384
            # the OpenAI CLIP normalisation
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
        },
        from_vision=(
            ("patch_size", "patch_size"),
            ("temporal_patch_size", "temporal_patch_size"),
            ("merge_size", "spatial_merge_size"),
        ),
        tokens=(
            ("<|vision_start|>", "vision_start_token_id"),
            ("<|vision_end|>", "vision_end_token_id"),
            ("<|vision_pad|>", "vision_token_id"),
            ("<|image_pad|>", "image_token_id"),
            ("<|video_pad|>", "video_token_id"),
        ),
        image="<|vision_start|><|image_pad|><|vision_end|>",
        video="<|vision_start|><|video_pad|><|vision_end|>",
    ),
}

# The processor files materialise writes: left out (and removed) for a text model.
PROCESSOR_FILES = ("preprocessor_config.json", "chat_template.jinja")


def _processor_tokens(hf_config: Dict[str, Any], processor: Processor) -> Tuple[Tuple[str, Optional[int]], ...]:
    fmt = PROCESSOR_FORMATS.get(Processor(processor))
    return tuple((name, hf_config.get(key)) for name, key in fmt.tokens) if fmt else ()


def chat_template_for(chat_template: ChatTemplate, processor: Processor = Processor.none) -> str:
    """The family's template; with a processor, a message's content may also be a list of
    parts (text, image, video), as a processor's apply_chat_template and vLLM pass them, and
    each image or video part becomes the family's placeholder."""
    template = CHAT_FORMATS[ChatTemplate(chat_template)].template
    fmt = PROCESSOR_FORMATS.get(Processor(processor))
    if fmt is None:
        return template
    macro = (
        "{%- macro render_content(content) -%}"
        "{%- if content is string -%}{{- content -}}"
        "{%- elif content is not none -%}"
        "{%- for part in content -%}"
        "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
        "{%- elif part['type'] in ['image', 'image_url'] -%}"
        + fmt.image
        + "{%- elif part['type'] in ['video', 'video_url'] -%}"
        + fmt.video
        + "{%- endif -%}"
        "{%- endfor -%}"
        "{%- endif -%}"
        "{%- endmacro -%}"
    )
    assert "message['content']" in template, chat_template
    return macro + template.replace("message['content']", "render_content(message['content'])")


def _special_tokens(
    hf_config: Dict[str, Any],
    vocab_size: int,
    chat: ChatFormat,
    extra: Tuple[Tuple[str, Optional[int]], ...] = (),
) -> Dict[int, str]:
    bos_id = hf_config.get("bos_token_id")
    eos = hf_config.get("eos_token_id")
    eos_id = eos[0] if isinstance(eos, list) else eos
    specials: Dict[int, str] = {}
    if bos_id is not None and bos_id < vocab_size:
        specials[int(bos_id)] = chat.bos
    if eos_id is not None and eos_id < vocab_size:
        specials[int(eos_id)] = chat.eos
    top = vocab_size - 1
    for name, wanted in (*chat.extra, *extra):
        if name in specials.values():
            continue
        token_id = wanted
        if token_id is None or token_id >= vocab_size or token_id in specials:
            while top in specials:
                top -= 1
            token_id = top
        specials[token_id] = name
    return specials


def _vocab_and_specials(
    hf_config: Dict[str, Any], chat_template: ChatTemplate, processor: Processor
) -> Tuple[int, Dict[int, str]]:
    vocab_size = int((hf_config.get("text_config") or hf_config)["vocab_size"])
    chat = CHAT_FORMATS[ChatTemplate(chat_template)]
    return vocab_size, _special_tokens(hf_config, vocab_size, chat, _processor_tokens(hf_config, processor))


def _tokenizer_config(
    hf_config: Dict[str, Any], chat_template: ChatTemplate = ChatTemplate.plain, processor: Processor = Processor.none
) -> str:
    """tokenizer_config.json: cheap to write, and it names every special token, so a directory
    whose copy matches it holds the tokenizer.json that goes with it."""
    _, specials = _vocab_and_specials(hf_config, chat_template, processor)
    bos_id = hf_config.get("bos_token_id")
    eos = hf_config.get("eos_token_id")
    eos_id = eos[0] if isinstance(eos, list) else eos
    tok_config: Dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(hf_config.get("max_position_embeddings") or 2048),
        "clean_up_tokenization_spaces": False,
        # transformers has no default template: without this key vLLM answers chat with 400
        "chat_template": chat_template_for(chat_template, processor),
    }
    if bos_id in specials:
        tok_config["bos_token"] = specials[bos_id]
    if eos_id in specials:
        tok_config["eos_token"] = specials[eos_id]
    # the special tokens as tokenizer.json holds them (transformers writes the same key)
    tok_config["added_tokens_decoder"] = {
        str(token_id): {
            "content": name,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token_id, name in sorted(specials.items())
    }
    return json.dumps(tok_config, indent=2)


def _tokenizer_files(
    hf_config: Dict[str, Any], chat_template: ChatTemplate = ChatTemplate.plain, processor: Processor = Processor.none
) -> Dict[str, str]:
    """A byte-level BPE tokenizer whose vocabulary spans the model's whole vocab_size, with
    the chat template of its family (and the placeholder tokens of its processor).

    Covering every id matters for dummy and random weights: the model may emit any id, and
    the detokenizer must be able to turn each into text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab_size, specials = _vocab_and_specials(hf_config, chat_template, processor)
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
    return {
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": _tokenizer_config(hf_config, chat_template, processor),
    }


def _processor_files(model: ModelConfig) -> Dict[str, str]:
    """The processor's files (PROCESSOR_FILES) for a multimodal entry; none for a text one."""
    fmt = PROCESSOR_FORMATS.get(Processor(model.processor))
    if fmt is None:
        return {}
    hf = dict(model.hf_config)
    vision = hf.get("vision_config") or {}
    preprocessor = dict(fmt.preprocessor)
    for key, vision_key in fmt.from_vision:
        if vision.get(vision_key) is not None:
            preprocessor[key] = vision[vision_key]
    return {
        "preprocessor_config.json": json.dumps(preprocessor, indent=2),
        # the processor's own template (a processor reads no tokenizer_config.json): the same one
        "chat_template.jinja": chat_template_for(model.chat_template, model.processor),
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
        _refresh(model, target)
        return where
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        hf = dict(model.hf_config)
        files = _tokenizer_files(hf, model.chat_template, model.processor)
        files.update(_processor_files(model))
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


def _write(target: Path, name: str, text: str) -> None:
    """One file replaced whole: a reader sees the old copy or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=target)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target / name)


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text()
    except OSError:
        return None


def _refresh(model: ModelConfig, target: Path) -> None:
    """A directory written before its entry had this chat template or processor (the
    directory's name digests the config and seed only) gets those files again; the weights stay."""
    hf = dict(model.hf_config)
    if _read(target / "tokenizer_config.json") != _tokenizer_config(hf, model.chat_template, model.processor):
        files = _tokenizer_files(hf, model.chat_template, model.processor)
        # tokenizer_config.json last: it says the tokenizer.json beside it is current
        for name in ("tokenizer.json", "tokenizer_config.json"):
            _write(target, name, files[name])
    wanted = _processor_files(model)
    for name in PROCESSOR_FILES:
        if name in wanted:
            if _read(target / name) != wanted[name]:
                _write(target, name, wanted[name])
        else:  # left by a multimodal entry of the same numbers: its template would win
            (target / name).unlink(missing_ok=True)
