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
from typing import Any, Dict, List, Optional, Tuple

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
    model: ModelConfig, cache_dir: str, trust_remote_code: bool = False
) -> Tuple[Optional[Dict[str, Any]], List[Problem]]:
    """The model's config.json (or the entry's own numbers), and what is wrong with its files.

    Checked before launch because vLLM finds these minutes later, behind a stack trace."""
    hf, problems = _inspect_model(model, cache_dir)
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


def _positive_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return value.is_integer() and value > 0
    return isinstance(value, int) and value > 0


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
        if not _positive_int(value):
            found.append(problem(key, value, "is not a positive integer"))
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
        factor = rope.get("factor")
        if factor is not None and (
            isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0
        ):
            found.append(problem(f"{key}.factor", factor, "is not a positive number"))
    return found


def _inspect_model(model: ModelConfig, cache_dir: str) -> Tuple[Optional[Dict[str, Any]], List[Problem]]:
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
    elif present[0] == "tokenizer.json" and model.path:
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
