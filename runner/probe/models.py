"""Models on disk: where a model's files live and what they say, read before anything starts.

``model_dir`` names the directory (or hub id) vLLM will read, touching no file but a stat of
``model.path``; ``inspect_model`` reads config.json and the tokenizer and reports what is
wrong with them; ``safetensors_weights`` sizes the checkpoint from its headers. Nothing here
writes: the generated and dummy-weight models are written by ``runner.launch.generate``.
"""

from __future__ import annotations

import hashlib
import json
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
    remote = hub.remote_code_problem(hf or {}, trust_remote_code, model.path or model.name)
    return hf, problems + ([remote] if remote else [])


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
