"""Models: where a model's files live, what its config.json says, and how the runner
writes the ones it makes itself (the generated tiny-llama, and config.json + tokenizer
for shape entries rehearsed with ``load_format=dummy``).

``model_dir`` and ``read_model_shape`` are side-effect free (used by the pure plan);
``materialise`` writes, when something is about to be launched or mode=plan prints the
command that would launch it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from runner.config.schema import ModelConfig, ModelSource
from runner.problems import Problem


@dataclass(frozen=True)
class ModelShape:
    """The config.json fields the parallel rules and the memory estimate need."""

    architecture: str
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    hidden_size: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: Optional[int]
    tie_word_embeddings: bool
    num_experts: int
    torch_dtype: Optional[str]
    moe_intermediate_size: Optional[int] = None
    experts_per_token: int = 2  # num_experts_per_tok: the experts each token is routed to
    # The longest max_model_len vLLM accepts (vllm/config/model.py, _get_and_verify_max_len):
    # max_position_embeddings, times the RoPE factor for scalings that don't pre-scale it.
    context_length: Optional[int] = None

    @classmethod
    def from_hf_config(cls, cfg: Dict[str, Any]) -> "ModelShape":
        text = cfg.get("text_config") or cfg  # multimodal wrappers keep the LM inside
        architecture = (cfg.get("architectures") or ["unknown"])[0]
        model_type = str(text.get("model_type") or cfg.get("model_type") or "").lower()
        falcon = model_type in ("falcon", "refinedweb", "refinedwebmodel") or architecture in (
            "FalconForCausalLM",
            "RWForCausalLM",
        )
        gemma = model_type in ("gemma", "gemma2") or architecture in ("GemmaForCausalLM", "Gemma2ForCausalLM")
        # Falcon's original (RefinedWeb) configs say n_head / n_layer / n_embed / n_head_kv.
        heads = int(text.get("num_attention_heads") or text["n_head"])
        layers = int(text.get("num_hidden_layers") or text["n_layer"])
        hidden = int(text.get("hidden_size") or text["n_embed"])
        if falcon:
            # vllm/model_executor/models/falcon.py, FalconAttention (and FalconModelArchConfigConvertor in
            # vllm/transformers_utils/model_arch_config_convertor.py): new_decoder_architecture -> num_kv_heads
            # (multi_query is then ignored); else multi_query -> 1 KV head; else one per query head.
            # transformers' FalconConfig defaults multi_query to True; the old RefinedWeb (40B) format is the
            # new decoder architecture with its group count in n_head_kv.
            new_decoder = text.get("new_decoder_architecture", model_type == "refinedweb")
            if new_decoder:
                kv_heads = int(text.get("num_kv_heads") or text.get("n_head_kv") or heads)
            elif text.get("multi_query", True):
                kv_heads = 1
            else:
                kv_heads = heads
            head_dim = hidden // heads  # falcon.py: hidden_size // num_attention_heads, no head_dim key
            inter = 4 * hidden  # falcon.py, FalconMLP: dense_h_to_4h is 4 * hidden_size, whatever the config says
        else:
            kv_heads = int(text.get("num_key_value_heads") or heads)
            # Gemma's head_dim (256 for Gemma-2-9B) is not hidden_size // heads; transformers defaults it to 256.
            head_dim = int(text.get("head_dim") or (256 if gemma else hidden // heads))
            inter = int(text.get("intermediate_size") or 4 * hidden)
        # Falcon (vllm falcon.py: "previous Falcon model doesn't have tie_word_embeddings config") and Gemma
        # (gemma2.py computes logits from embed_tokens) tie the LM head when the config is silent.
        tied_default = falcon or gemma
        tied = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", tied_default))
        return cls(
            architecture=architecture,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            num_hidden_layers=layers,
            hidden_size=hidden,
            head_dim=head_dim,
            intermediate_size=inter,
            vocab_size=int(text["vocab_size"]),
            max_position_embeddings=text.get("max_position_embeddings"),
            tie_word_embeddings=bool(tied_default if tied is None else tied),
            num_experts=int(text.get("num_local_experts") or text.get("num_experts") or 1),
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
            context_length=_derived_context(text),
            moe_intermediate_size=text.get("moe_intermediate_size"),
            experts_per_token=int(text.get("num_experts_per_tok") or 2),
        )

    def parameter_count(self) -> int:
        """Weights of a decoder-only transformer, by family.

        Llama / Mistral / Mixtral / Phi-3 / Qwen2: gated MLP (3 matrices), RMSNorm weights (2 a layer);
        Qwen2 adds q/k/v biases. Gemma-2: gated MLP, 4 RMSNorms a layer (pre/post attention and
        feed-forward), tied embeddings. Falcon: fused QKV without bias, a non-gated 4h MLP (2 matrices),
        LayerNorm weight + bias, tied embeddings. The Llama count is exactly the tensors the runner
        writes for its generated model."""
        h, layers, head_dim = self.hidden_size, self.num_hidden_layers, self.head_dim
        arch = self.architecture
        falcon = arch in ("FalconForCausalLM", "RWForCausalLM")
        q_out = self.num_attention_heads * head_dim
        kv_out = self.num_key_value_heads * head_dim
        attention = h * q_out + 2 * h * kv_out + q_out * h
        if arch.startswith("Qwen2"):
            attention += q_out + 2 * kv_out  # qkv_proj bias
        matrices = 2 if falcon else 3
        mlp = self.num_experts * matrices * h * self.intermediate_size
        router = h * self.num_experts if self.num_experts > 1 else 0
        if falcon:
            # LayerNorm weight + bias: input_layernorm, or ln_attn + ln_mlp for the new decoder
            # architecture (grouped KV heads); ln_f at the end.
            grouped = 1 < self.num_key_value_heads < self.num_attention_heads
            norms, final_norm = (4 if grouped else 2) * h, 2 * h
        elif arch.startswith("Gemma2"):
            norms, final_norm = 4 * h, h
        else:
            norms, final_norm = 2 * h, h
        per_layer = attention + mlp + router + norms
        # vllm/model_executor/layers/vocab_parallel_embedding.py pads the vocabulary to 64
        vocab = -(-self.vocab_size // 64) * 64
        embeddings = vocab * h * (1 if self.tie_word_embeddings else 2)
        return embeddings + layers * per_layer + final_norm


_PRESCALED_ROPE = {"su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling"}


def _derived_context(cfg: Dict[str, Any]) -> Optional[int]:
    length = cfg.get("max_position_embeddings")
    if not length:
        return None
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    kind = rope.get("rope_type") or rope.get("type") if isinstance(rope, dict) else None
    if kind and kind not in _PRESCALED_ROPE and rope.get("factor"):
        length = length * float(rope["factor"])
    return int(length)


REQUIRED_KEYS = ("num_attention_heads", "num_hidden_layers", "hidden_size", "vocab_size")

DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "auto": 2}


def cache_root(cache_dir: str) -> Path:
    return Path(os.path.expanduser(cache_dir))


def _config_digest(model: ModelConfig) -> str:
    blob = json.dumps({"hf": model.hf_config, "seed": model.seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def model_dir(model: ModelConfig, cache_dir: str) -> Optional[str]:
    """Where vLLM will read the model from (a directory or a hub id); no file is touched.

    None when a shape entry has neither a path nor load_format=dummy (the plan says why)."""
    if model.path:
        return os.path.expanduser(model.path) if os.path.isdir(os.path.expanduser(model.path)) else model.path
    if model.source is ModelSource.generated:
        return str(cache_root(cache_dir) / "models" / f"{model.name}-{_config_digest(model)}")
    if model.source is ModelSource.shape and model.load_format == "dummy":
        return str(cache_root(cache_dir) / "shapes" / f"{model.name}-{_config_digest(model)}")
    return None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "tekken.json")


def inspect_model(model: ModelConfig, cache_dir: str) -> Tuple[Optional[Dict[str, Any]], List[Problem]]:
    """The model's config.json (or the entry's own numbers), and what is wrong with its files.

    Checked before launch because vLLM finds these minutes later, behind a stack trace."""
    where = model_dir(model, cache_dir)
    fix_dir = "model.path=DIR (a directory with config.json, weights and a tokenizer)"
    if model.path and not os.path.isdir(os.path.expanduser(model.path)):
        if model.path.startswith(("/", ".", "~")) or os.sep in model.path.strip("/").replace("/", "", 1):
            return None, [Problem("model.path", model.path, "no such directory", fix_dir)]
        return dict(model.hf_config) or None, []  # a hub id: vLLM fetches it
    if not (where and os.path.isdir(where)):
        return dict(model.hf_config) or None, []  # generated / dummy: written at launch
    problems: List[Problem] = []
    config_path = os.path.join(where, "config.json")
    hf: Optional[Dict[str, Any]] = None
    if not os.path.isfile(config_path):
        problems.append(Problem("model.path", where, "no config.json in the directory", fix_dir))
    else:
        try:
            with open(config_path) as f:
                hf = json.load(f)
        except (OSError, ValueError) as e:
            problems.append(
                Problem(
                    "model.path",
                    where,
                    f"config.json is unreadable ({str(e).splitlines()[0][:80]})",
                    "repair or re-download config.json",
                )
            )
        if hf is not None:
            text = hf.get("text_config") or hf
            missing = [k for k in REQUIRED_KEYS if k not in text]
            if missing:
                problems.append(
                    Problem(
                        "model.path",
                        where,
                        f"config.json lacks {', '.join(missing)}",
                        "repair or re-download config.json",
                    )
                )
                hf = None
    present = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(where, n))]
    if not present:
        problems.append(
            Problem(
                "model.path",
                where,
                f"no tokenizer ({', '.join(TOKENIZER_FILES[:3])}…)",
                "copy the model's tokenizer files into the directory",
            )
        )
    elif present[0] == "tokenizer.json":
        try:
            with open(os.path.join(where, "tokenizer.json")) as f:
                json.load(f)
        except (OSError, ValueError) as e:
            problems.append(
                Problem(
                    "model.path",
                    where,
                    f"tokenizer.json is unreadable ({str(e).splitlines()[0][:60]})",
                    "repair or re-download tokenizer.json",
                )
            )
    return hf, problems


# --------------------------------------------------------------------------- writing


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


# safetensors' dtype names -> bytes per element
_ST_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}


def safetensors_weights(directory: Optional[str]) -> Optional[Dict[str, Any]]:
    """What the checkpoint's *.safetensors files hold, from their headers alone (8-byte length
    + JSON; no tensor is read): bytes, elements, and bytes per dtype. None without such files."""
    if not directory or not os.path.isdir(directory):
        return None
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return None
    total, elements, by_dtype = 0, 0, {}
    try:
        for path in files:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > 100 * 2**20:
                    return None  # not a safetensors header
                header = json.loads(f.read(length))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                start, end = info["data_offsets"]
                count = 1
                for dim in info["shape"]:
                    count *= int(dim)
                total += end - start
                elements += count
                by_dtype[info["dtype"]] = by_dtype.get(info["dtype"], 0) + end - start
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return {"bytes": total, "elements": elements, "bytes_by_dtype": by_dtype, "files": len(files)}


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
