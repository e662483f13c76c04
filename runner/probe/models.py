"""Models on disk: where a model's files live and what they say, read before anything starts.

``model_dir`` names the directory (or hub id) vLLM will read, touching no file but a stat of
``model.path``; ``inspect_model`` reads config.json and the tokenizer and reports what is
wrong with them; ``safetensors_weights`` sizes the checkpoint from its headers. Nothing here
writes: the generated and dummy-weight models are written by ``runner.launch.generate``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from runner.config.schema import ModelConfig, ModelSource
from runner.probe import hub
from runner.problems import Problem

# The config.json keys ModelShape cannot do without (runner.plan.shape).
REQUIRED_KEYS = ("num_attention_heads", "num_hidden_layers", "hidden_size", "vocab_size")


def cache_root(cache_dir: str) -> Path:
    return Path(os.path.expanduser(cache_dir))


def _config_digest(model: ModelConfig) -> str:
    blob = json.dumps({"hf": model.hf_config, "seed": model.seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def model_dir(model: ModelConfig, cache_dir: str) -> Optional[str]:
    """Where vLLM will read the model from (a directory or a hub id); no file is touched.

    None when a shape entry has neither a path nor load_format=dummy (the plan says why)."""
    if model.path:
        if os.path.isdir(os.path.expanduser(model.path)):
            return os.path.expanduser(model.path)
        ref = hub.parse(model.path, model.revision)
        # a cached hub model is served from its snapshot: the revision planned is the one served
        return (hub.snapshot_dir(ref) or ref.repo_id) if ref else model.path
    if model.source is ModelSource.generated:
        return str(cache_root(cache_dir) / "models" / f"{model.name}-{_config_digest(model)}")
    if model.source is ModelSource.shape and model.load_format == "dummy":
        return str(cache_root(cache_dir) / "shapes" / f"{model.name}-{_config_digest(model)}")
    return None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "tekken.json")


def inspect_model(
    model: ModelConfig, cache_dir: str, trust_remote_code: bool = False, planning_only: bool = False
) -> Tuple[Optional[Dict[str, Any]], List[Problem]]:
    """The model's config.json (or the entry's own numbers), and what is wrong with its files.

    Checked before launch because vLLM finds these minutes later, behind a stack trace.
    planning_only (mode=plan): the plan reads config.json alone, so a directory without a
    tokenizer is not a problem there — ``launch_needs`` says what a launch will want."""
    hf, problems = _inspect_model(model, cache_dir, planning_only)
    if hf is not None:
        where = model_dir(model, cache_dir)
        on_disk = bool(where and os.path.isfile(os.path.join(where, "config.json")))
        shape_problems = config_json_problems(hf, where if on_disk else None)
        if shape_problems:
            return None, problems + shape_problems
    remote = hub.remote_code_problem(hf or {}, trust_remote_code, model.path or model.name)
    return hf, problems + ([remote] if remote else [])


# config.json's numbers the planner reads: each a positive integer when present (None is "not
# given" for the optional ones; the required ones must be there under one of their names).
POSITIVE_INT_KEYS = (
    *REQUIRED_KEYS,
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "max_position_embeddings",
    "num_local_experts",
    "num_experts",
    "moe_intermediate_size",
    "num_experts_per_tok",
    "n_head",
    "n_layer",
    "n_embed",
    "num_kv_heads",
    "n_head_kv",
)


# Further numbers the shape reads (MLA, larger MoE, sliding window): zero is "none" for these.
NON_NEGATIVE_INT_KEYS = (
    "kv_lora_rank",
    "q_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "n_routed_experts",
    "n_shared_experts",
    "shared_expert_intermediate_size",
    "first_k_dense_replace",
    "sliding_window_pattern",
)
# vision_config's numbers (runner/plan/shape.py, _vision) and quantization_config's
VISION_INT_KEYS = (
    "hidden_size",
    "embed_dim",
    "depth",
    "num_hidden_layers",
    "num_heads",
    "num_attention_heads",
    "intermediate_size",
    "patch_size",
    "in_chans",
    "in_channels",
    "num_channels",
    "temporal_patch_size",
    "spatial_merge_size",
    "out_hidden_size",
    "max_pixels",
)
QUANT_INT_KEYS = ("bits", "w_bit", "group_size", "q_group_size")
QUANT_NAME_LISTS = ("modules_to_not_convert", "ignored_layers", "ignore")
# Larger than any model's, and small enough that the planner's arithmetic stays exact: a layer
# count builds per-layer tables, so it is held to a count a model could have.
MAX_FIELD = 2**40
MAX_LAYERS = 100_000
LAYER_KEYS = ("num_hidden_layers", "n_layer", "depth")


def _positive_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer() and value > 0
    return isinstance(value, int) and value > 0


def _int_problem(key: str, value: Any, low: int = 1) -> Optional[str]:
    """Why value is not a whole number in [low, its bound] (None when it is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "is not an integer"
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return "is not an integer"
    if value < low:
        return "is not a positive integer" if low == 1 else f"is below {low}"
    bound = MAX_LAYERS if key in LAYER_KEYS else MAX_FIELD
    if value > bound:
        return f"is absurdly large (at most {bound:,})"
    return None


def config_json_problems(hf: Any, where: Optional[str]) -> List[Problem]:
    """The fields of config.json (or of model.hf_config) the planner reads, checked for type and
    range so a malformed file is one line naming the field, not a stack trace or a plan of
    negative sizes. where: the directory holding config.json; None for the entry's own numbers."""

    def problem(field: str, value: Any, why: str) -> Problem:
        if where is None:
            return Problem(f"model.hf_config.{field}", value, why, f"model.hf_config.{field}=<a valid value>")
        shown = json.dumps(value)[:60] if not isinstance(value, str) else repr(value)[:60]
        return Problem("model.path", where, f"config.json: {field}={shown} {why}", "repair or re-download config.json")

    if not isinstance(hf, dict):
        return [problem("config.json", type(hf).__name__, "is not a JSON object")]
    found: List[Problem] = []
    text = hf.get("text_config")
    if text is not None and not isinstance(text, dict):
        return [problem("text_config", text, "is not an object")]
    text = text or hf
    arch = hf.get("architectures")
    if arch is not None and not (isinstance(arch, list) and all(isinstance(a, str) for a in arch)):
        found.append(problem("architectures", arch, "is not a list of class names"))
    for key in POSITIVE_INT_KEYS:
        if key not in text:
            continue
        value = text[key]
        if value is None and key not in REQUIRED_KEYS:
            continue
        why = _int_problem(key, value)
        if why:
            found.append(problem(key, value, "is not a positive integer" if why == "is not an integer" else why))
    for key in NON_NEGATIVE_INT_KEYS:
        value = text.get(key)
        if value is not None and key in text:
            why = _int_problem(key, value, low=0)
            if why:
                found.append(problem(key, value, why))
    window = text.get("sliding_window")
    if window is not None and window is not False:
        why = _int_problem("sliding_window", window, low=0)
        if why:
            found.append(problem("sliding_window", window, why))
    found += _nested_problems(hf, problem)
    heads, kv = text.get("num_attention_heads"), text.get("num_key_value_heads")
    if _positive_int(heads) and _positive_int(kv) and (kv > heads or heads % kv):
        found.append(problem("num_key_value_heads", kv, f"does not divide num_attention_heads={heads}"))
    for key in ("rope_scaling", "rope_parameters"):
        rope = text.get(key, hf.get(key))
        if rope is None:
            continue
        if not isinstance(rope, dict):
            found.append(problem(key, rope, "is not an object"))
            continue
        for name in ("type", "rope_type"):
            kind = rope.get(name)
            if kind is not None and not isinstance(kind, str):
                found.append(problem(f"{key}.{name}", kind, "is not a name"))
        original = rope.get("original_max_position_embeddings")
        if original is not None and _int_problem("original_max_position_embeddings", original):
            found.append(problem(f"{key}.original_max_position_embeddings", original, "is not a positive integer"))
        factor = rope.get("factor")
        if factor is not None and (
            isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0
        ):
            found.append(problem(f"{key}.factor", factor, "is not a positive number"))
    return found


def _nested_problems(hf: Dict[str, Any], problem: Any) -> List[Problem]:
    """vision_config's and quantization_config's fields, as the planner reads them."""
    found: List[Problem] = []

    def section(name: str) -> Dict[str, Any]:
        """config.json's object NAME ({} when absent; said and {} when it is not an object)."""
        value = hf.get(name)
        if value is not None and not isinstance(value, dict):
            found.append(problem(name, value, "is not an object"))
        return value if isinstance(value, dict) else {}

    vision = section("vision_config")
    if vision:
        for key in VISION_INT_KEYS:
            value = vision.get(key)
            why = _int_problem(key, value) if value is not None else None
            if why:
                found.append(problem(f"vision_config.{key}", value, why))
        ratio = vision.get("mlp_ratio")
        if ratio is not None and (
            isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < MAX_LAYERS
        ):
            found.append(problem("vision_config.mlp_ratio", ratio, "is not a positive number"))
    quant = section("quantization_config")
    if quant:
        for key in QUANT_INT_KEYS:
            value = quant.get(key)
            if value is None or (key.endswith("group_size") and value == -1):
                continue  # -1: one group over the whole input (AWQ / GPTQ)
            why = _int_problem(key, value)
            if why:
                found.append(problem(f"quantization_config.{key}", value, why))
        for key in QUANT_NAME_LISTS:
            names = quant.get(key)
            if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                found.append(problem(f"quantization_config.{key}", names, "is not a list of module names"))
        block = quant.get("weight_block_size")
        if block is not None and not (
            isinstance(block, list) and len(block) == 2 and all(not _int_problem("block", b) for b in block)
        ):
            found.append(problem("quantization_config.weight_block_size", block, "is not two positive integers"))
        method = quant.get("quant_method")
        if method is not None and not isinstance(method, str):
            found.append(problem("quantization_config.quant_method", method, "is not a name"))
    return found


def _inspect_model(
    model: ModelConfig, cache_dir: str, planning_only: bool = False
) -> Tuple[Optional[Dict[str, Any]], List[Problem]]:
    where = model_dir(model, cache_dir)
    fix_dir = "model.path=DIR (a directory with config.json, weights and a tokenizer)"
    if model.path and not os.path.isdir(os.path.expanduser(model.path)):
        ref = hub.parse(model.path, model.revision)
        if ref is None:
            return None, [Problem("model.path", model.path, "no such directory", fix_dir)]
        return hub.inspect(ref)  # config.json from the hub cache (fetched alone when allowed)
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
            if not isinstance(hf, dict):
                problems += config_json_problems(hf, where)
                hf = None
        except (OSError, ValueError) as e:
            problems.append(
                Problem(
                    "model.path",
                    where,
                    f"config.json is unreadable ({str(e).splitlines()[0][:80]})",
                    "repair or re-download config.json",
                )
            )
        if hf is not None and not isinstance(hf, dict):
            return hf, problems  # said by config_json_problems, with the type
        if hf is not None:
            text = hf.get("text_config") if isinstance(hf.get("text_config"), dict) else hf
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
    if model.path and not planning_only:
        try:
            weightless = _lacks_weights(model, os.listdir(where))
        except OSError:
            weightless = False
        if weightless:
            problems.append(
                Problem(
                    "model.path",
                    where,
                    "no weights (*.safetensors, *.bin, *.pt)",
                    "copy the model's weight files into the directory, or model.load_format=dummy to rehearse",
                )
            )
    present = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(where, n))]
    if not present and not planning_only:
        problems.append(
            Problem(
                "model.path",
                where,
                f"no tokenizer ({', '.join(TOKENIZER_FILES[:3])}…)",
                "copy the model's tokenizer files into the directory",
            )
        )
    elif present and present[0] == "tokenizer.json" and model.path:
        # A user's file is parsed to catch a broken download; the runner's own (generated models, dummy-
        # weight shapes: 3.5 MB for Llama-3) was written whole by it, and parsing it is a fifth of mode=plan.
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


# Weight files vLLM's loaders read (safetensors, PyTorch bins, GGUF), and a multimodal
# processor's own configuration (transformers' AutoProcessor / AutoImageProcessor).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# The load formats that read those files from model.path (tensorizer, run:ai's streamer and the
# rest name their own sources): only these are checked for weights before a launch.
WEIGHT_CHECKED_FORMATS = ("auto", "safetensors", "pt")
PROCESSOR_CONFIGS = ("preprocessor_config.json", "processor_config.json")


def _lacks_weights(model: ModelConfig, names: List[str]) -> bool:
    """Whether a launch of this directory (its file names) would find no weights to load."""
    return model.load_format in WEIGHT_CHECKED_FORMATS and not any(n.endswith(WEIGHT_SUFFIXES) for n in names)


def launch_needs(model: ModelConfig, cache_dir: str, hf: Optional[Mapping[str, Any]]) -> List[str]:
    """What a user's model directory lacks that only a launch needs (mode=plan reads config.json
    alone): a tokenizer, the weights (unless load_format=dummy), a multimodal model's processor
    configuration. One note naming them all, or nothing."""
    where = os.path.expanduser(model.path) if model.path else None
    if not (where and os.path.isdir(where)):
        return []
    try:
        names = os.listdir(where)
    except OSError:
        return []
    missing = []
    if not any(n in names for n in TOKENIZER_FILES):
        missing.append(f"a tokenizer ({', '.join(TOKENIZER_FILES[:3])}…)")
    if _lacks_weights(model, names):
        missing.append("the weights (*.safetensors; or model.load_format=dummy to rehearse)")
    if isinstance((hf or {}).get("vision_config"), dict) and not any(n in names for n in PROCESSOR_CONFIGS):
        missing.append("the image processor's preprocessor_config.json (vLLM builds it at start-up)")
    if not missing:
        return []
    return [f"model.path={where} is enough to plan; serving it will also need {', '.join(missing)}"]


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


def fetch_hub_model(model: ModelConfig) -> Optional[str]:
    """A hub model's weights and tokenizer into the cache before vLLM starts (planning fetched
    config.json alone); None for anything that is not a hub id."""
    ref = hub.parse(model.path, model.revision) if model.path else None
    return hub.download(ref) if ref else None
