"""What vLLM says about itself in its log: the figures the manifest keeps, and the stage
it has reached (for progress while it starts)."""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

# vllm/v1/core/kv_cache_utils.py logs "GPU KV cache size: 1,234 tokens" and "Maximum
# concurrency for 4,096 tokens per request: 3.21x" (one line from 0.32, two lines before).
_KV_TOKENS = re.compile(r"(\w+) KV cache size: ([\d,]+) tokens")
_CONCURRENCY = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")
_WEIGHTS = re.compile(r"Model loading took ([\d.]+) ?GiB")
# vllm/v1/worker/gpu_worker.py logs its memory profile once the engine is up (0.26 – 0.33).
_AVAILABLE = re.compile(r"Available KV cache memory: ([\d.]+) ?GiB")
_PROFILE = re.compile(
    r"Free memory on device \(([\d.]+)/([\d.]+) GiB\) on startup\. Desired GPU memory utilization is "
    r"\(([\d.]+), ([\d.]+) GiB\)\. Actual usage is ([\d.]+) GiB for weight, ([\d.]+) GiB for peak activation, "
    r"(-?[\d.]+) GiB for non-torch memory, and ([\d.]+) GiB for CUDAGraph memory"
)
_PROFILE_KEYS = (
    "free_gib",
    "total_gib",
    "gpu_memory_utilization",
    "requested_gib",
    "weights_gib",
    "activation_peak_gib",
    "non_torch_gib",
    "cuda_graph_gib",
)
_STAGES = (
    ("ready", re.compile(r"Application startup complete|Uvicorn running on")),
    ("cuda graphs", re.compile(r"Capturing CUDA graph|Graph capturing finished")),
    ("kv cache", re.compile(r"KV cache size")),
    ("profiling / compiling", re.compile(r"torch\.compile|Dynamo bytecode|Compiling a graph|Memory profiling")),
    ("loading weights", re.compile(r"Loading (safetensors|weights)|Model loading took|Starting to load model")),
    ("starting workers", re.compile(r"world_size=|Initializing a V1 LLM engine|init_distributed")),
)


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def reported_figures(log_text: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if m := _KV_TOKENS.search(log_text):
        out["kv_cache_pool"] = m.group(1)
        out["kv_cache_tokens"] = _int(m.group(2))
    if m := _CONCURRENCY.search(log_text):
        out["max_concurrency_tokens_per_request"] = _int(m.group(1))
        out["max_concurrency"] = float(m.group(2))
    if m := _WEIGHTS.search(log_text):
        out["model_loading_gib"] = float(m.group(1))
    if m := _AVAILABLE.search(log_text):
        out["kv_cache_gib"] = float(m.group(1))
    if m := _PROFILE.search(log_text):
        out["memory_profile"] = {k: float(v) for k, v in zip(_PROFILE_KEYS, m.groups(), strict=False)}
    return out


def current_stage(log_text: str) -> Optional[str]:
    """The furthest start-up stage the log shows (stages are listed furthest first)."""
    for name, pattern in _STAGES:
        if pattern.search(log_text):
            return name
    return None
