"""The tensor-parallel rules, all of them: which TP sizes vLLM accepts for a model (heads, KV
heads, weight shards, quantized kernels), which TP x PP the runner picks when the user leaves
them unset (one machine or several), and the device rules checked from the probe (bf16, free
memory). Each names the vLLM file it comes from (read in 0.32; the same checks exist in 0.26).
Pure functions: the planner (runner.plan.build) and the cluster plan (runner.plan.cluster)
call them; a new TP rule goes into ``tp_violation`` or ``shard_violations``."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from runner.plan.shape import ModelShape
from runner.probe.hardware import Gpu
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


def kv_heads_split_evenly(tp: int, kv_heads: int) -> bool:
    # vllm/model_executor/layers/linear.py, QKVParallelLinear: with tp >= kv heads each KV
    # head is replicated tp // kv times, otherwise kv heads are divided among ranks.
    return tp % kv_heads == 0 if tp >= kv_heads else kv_heads % tp == 0


def tp_violation(shape: ModelShape, tp: int, hf_config: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """Why vLLM cannot split this model over tp ranks; None when it can."""
    # vllm/config/model.py, ModelConfig.verify_with_parallel_config.
    if shape.num_attention_heads % tp:
        return f"num_attention_heads={shape.num_attention_heads} is not divisible by it"
    if not kv_heads_split_evenly(tp, shape.num_key_value_heads):
        return f"num_key_value_heads={shape.num_key_value_heads} can be neither split nor replicated evenly"
    # The vision encoder is split over the same ranks (mm_encoder_tp_mode "weights", the default):
    # its attention divides its heads and its MLP its width (vllm/distributed/utils.py, divide(),
    # in e.g. qwen2_5_vl.py's Qwen2_5_VisionAttention / Qwen2_5_VisionMLP), else vLLM stops with a
    # bare "X is not divisible by Y".
    if shape.vision_heads and shape.vision_heads % tp:
        return f"vision_config num_heads={shape.vision_heads} is not divisible by it"
    if shape.vision_intermediate_size and shape.vision_intermediate_size % tp:
        return f"vision_config intermediate_size={shape.vision_intermediate_size} is not divisible by it"
    return next(iter(shard_violations(shape, tp, hf_config)), None)


def valid_tp_sizes(shape: Optional[ModelShape], limit: int, hf_config: Optional[Mapping[str, Any]] = None) -> List[int]:
    """Every TP size up to limit that splits heads, KV heads and weights the way vLLM needs."""
    return [tp for tp in range(1, max(limit, 1) + 1) if shape is None or tp_violation(shape, tp, hf_config) is None]


def cluster_sizes(
    serve_tp: Optional[int], serve_pp: Optional[int], per_node: int, nodes: int, shape: Optional[ModelShape]
) -> Tuple[int, int, List[str]]:
    """TP and PP over several nodes for what the user left unset, and notes saying so: TP fills
    a node (the largest size that divides a node and splits the model), PP spans the nodes."""
    total = per_node * nodes
    notes: List[str] = []
    if serve_tp is None and serve_pp is None:
        tp, pp = per_node, nodes
        if shape is not None and tp_violation(shape, tp) is not None:
            fitting = [t for t in range(per_node, 0, -1) if per_node % t == 0 and tp_violation(shape, t) is None]
            if fitting:
                tp, pp = fitting[0], total // fitting[0]
                notes.append(f"TP {per_node} (one node) does not split {shape.architecture}'s heads: TP {tp}, PP {pp}")
        notes.append(f"parallel sizes not set: TP {tp} inside each node x PP {pp} across {nodes} node(s)")
    elif serve_pp is None:
        tp = serve_tp
        pp = total // tp if tp > 0 and total % tp == 0 else nodes
        notes.append(f"pipeline_parallel_size not set: {pp} (TP {tp} over {total} devices)")
    elif serve_tp is None:
        pp = serve_pp
        tp = total // pp if pp > 0 and total % pp == 0 else per_node
        notes.append(f"tensor_parallel_size not set: {tp} (PP {pp} over {total} devices)")
    else:
        tp, pp = serve_tp, serve_pp
    return tp, pp, notes


def pp_violation(shape: ModelShape, pp: int) -> Optional[Problem]:
    """vllm/distributed/utils.py, get_pp_indices: every pipeline stage needs at least one layer."""
    if pp <= shape.num_hidden_layers:
        return None
    return Problem(
        "serve.pipeline_parallel_size",
        pp,
        f"more stages than num_hidden_layers={shape.num_hidden_layers}",
        f"serve.pipeline_parallel_size<={shape.num_hidden_layers}",
    )


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
                f"{method}: gate/up output per rank {inter // tp} is not divisible by "
                f"min_thread_n={MARLIN_MIN_THREAD_N}"
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
        f"GPU {g.index} has {g.memory_free_bytes / gib:.1f} of {g.memory_total_bytes / gib:.1f} GiB free, "
        f"less than the {util:.2f} vLLM would take",
        fix + ", or other GPUs (CUDA_VISIBLE_DEVICES)",
    )
