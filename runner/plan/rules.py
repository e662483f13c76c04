"""The rules vLLM enforces on a model split across ranks, and on the devices, checked from
config.json and the probe before anything starts. Each names the vLLM file it comes from
(read in 0.32; the same checks exist in 0.26). Pure functions: the planner calls them."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

from runner.probe.hardware import Gpu
from runner.probe.models import ModelShape
from runner.problems import Problem

# vllm/model_executor/layers/quantization/utils/marlin_utils.py
MARLIN_MIN_THREAD_N = 64
MARLIN_MIN_THREAD_K = 128
# vllm/model_executor/layers/vocab_parallel_embedding.py, DEFAULT_VOCAB_PADDING_SIZE
VOCAB_PADDING = 64
# Quantization methods that vLLM runs with Marlin kernels on CC >= 8.0 (it upgrades gptq/awq).
MARLIN_METHODS = {"gptq", "awq", "gptq_marlin", "awq_marlin", "marlin"}


def _quant(hf_config: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    cfg = (hf_config or {}).get("quantization_config") or {}
    return dict(cfg) if isinstance(cfg, Mapping) else {}


def shard_violations(shape: ModelShape, tp: int, hf_config: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Why this TP size cannot split the model's weights; empty when it can."""
    why: List[str] = []
    # vllm/model_executor/layers/linear.py, MergedColumnParallelLinear / RowParallelLinear and
    # vllm/model_executor/layers/fused_moe/layer.py: the MLP (or each expert's) intermediate
    # dimension is divided by TP with divide(), which asserts divisibility.
    inter = shape.moe_intermediate_size or shape.intermediate_size
    if inter % tp:
        what = "moe_intermediate_size" if shape.moe_intermediate_size else "intermediate_size"
        why.append(f"{what}={inter} is not divisible by it")
    # vllm/model_executor/layers/vocab_parallel_embedding.py: the vocabulary, padded to a
    # multiple of 64, is divided among the ranks with divide().
    padded_vocab = -(-shape.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
    if padded_vocab % tp:
        why.append(f"vocab_size={shape.vocab_size} (padded to {padded_vocab}) is not divisible by it")
    quant = _quant(hf_config)
    method = str(quant.get("quant_method", "")).lower()
    if method in MARLIN_METHODS and not inter % tp:
        group = int(quant.get("group_size") or -1)
        q_out = shape.num_attention_heads * shape.head_dim
        # AWQ, and GPTQ without act-order, zero-pad Marlin's thread tiles
        # (quantization/auto_awq.py, auto_gptq.py: allow_tile_padding; marlin_utils.py,
        # check_marlin_supports_layer): only a quantization group split across ranks fails.
        # GPTQ with desc_act keeps the strict shape rules (verify_marlin_supports_shape).
        padded = method.startswith("awq") or not quant.get("desc_act", False)
        # Row-parallel inputs (o_proj, down_proj) are split by TP.
        for name, size in (("o_proj input", q_out), ("down_proj input", inter)):
            part = size // tp
            if not padded and part % MARLIN_MIN_THREAD_K:
                why.append(f"{method}: {name} per rank {part} is not divisible by min_thread_k={MARLIN_MIN_THREAD_K}")
            elif 0 < group < size and part % group:
                why.append(f"{method}: {name} per rank {part} is not divisible by group_size={group}")
        # Column-parallel outputs (gate_up_proj) need multiples of min_thread_n.
        if not padded and (inter // tp) % MARLIN_MIN_THREAD_N:
            why.append(
                f"{method}: gate/up output per rank {inter // tp} is not divisible by min_thread_n={MARLIN_MIN_THREAD_N}"
            )
    return why


def bf16_problem(dtype: str, torch_dtype: Optional[str], gpus: Sequence[Gpu]) -> Optional[Problem]:
    """vllm/platforms/cuda.py, check_if_supports_dtype: "Bfloat16 is only supported on GPUs
    with compute capability of at least 8.0"."""
    wanted = dtype if dtype != "auto" else (torch_dtype or "bfloat16")
    if wanted not in ("bfloat16", "auto"):
        return None
    old = [g for g in gpus if g.compute_capability and tuple(g.compute_capability) < (8, 0)]
    if not old:
        return None
    g = old[0]
    cc = ".".join(str(x) for x in g.compute_capability)
    return Problem(
        "serve.dtype",
        dtype,
        f"bfloat16 needs compute capability 8.0; {g.name} (GPU {g.index}) has {cc}",
        "serve.dtype=float16",
    )


def free_memory_problem(utilization: Optional[float], gpus: Sequence[Gpu], default: float) -> Optional[Problem]:
    """vllm/v1/worker/utils.py: "Free memory on device … on startup is less than desired GPU
    memory utilization" — someone else is on the GPU."""
    util = utilization if utilization is not None else default
    tight = [g for g in gpus if g.memory_free_bytes is not None and g.memory_free_bytes < util * g.memory_total_bytes]
    if not tight:
        return None
    g = min(tight, key=lambda x: x.memory_free_bytes / x.memory_total_bytes)
    ratio = g.memory_free_bytes / g.memory_total_bytes
    fits = math.floor((ratio - 0.01) * 100) / 100
    gib = 2**30
    fix = f"serve.gpu_memory_utilization={fits:.2f}" if fits > 0.05 else "free the GPU (nvidia-smi shows who holds it)"
    return Problem(
        "serve.gpu_memory_utilization",
        util,
        f"GPU {g.index} has {g.memory_free_bytes / gib:.1f} of {g.memory_total_bytes / gib:.1f} GiB free, less than the "
        f"{util:.2f} vLLM would take",
        fix + ", or other GPUs (CUDA_VISIBLE_DEVICES)",
    )
