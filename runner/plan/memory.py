"""Memory model: what vLLM will give the KV cache on each GPU, predicted before it starts.

vLLM (vllm/v1/worker/gpu_worker.py, determine_available_memory; 0.26 – 0.33) measures,
after loading the weights and running one profiling forward pass:

    requested = ceil(gpu_memory_utilization x total)           # total: cudaMemGetInfo's
    kv_cache  = requested - weights - activation_peak - non_torch_increase
                [- cuda_graph_estimate, where the model runner estimates it]

and then (vllm/v1/core/kv_cache_utils.py) cuts kv_cache into blocks of 16 tokens, each
holding K and V for every layer of this rank:

    bytes_per_token = layers_per_stage x max(1, kv_heads / TP) x head_dim x 2 x kv_dtype bytes
    tokens          = floor(kv_cache / (bytes_per_token x 16)) x 16
    concurrency     = tokens / max_model_len (in whole blocks)

and refuses to start when kv_cache <= 0 ("No available memory for the cache blocks") or
tokens < max_model_len ("The model's max seq len … is larger than the maximum number of
tokens that can be stored in KV cache").

Each term here is computed from the model's shape and the serve options; the two that
vLLM measures (the activation peak and the non-torch increase) come from a model fitted to
its own start-up report on H100s ("Actual usage is … GiB for weight, … for peak
activation, … for non-torch memory, and … for CUDAGraph memory"): docs/memory-model.md
has the measured table this module reproduces.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from runner.plan.compat import parse_version
from runner.plan.shape import ModelShape

GIB = 2**30
BLOCK_SIZE = 16  # vllm/config/cache.py: the CUDA attention backends' default block size
CALIBRATED_VLLM = "0.26.0"  # the release whose reports the fitted constants come from

# vLLM's defaults when the serve options leave them unset (vllm/engine/arg_utils.py,
# get_batch_defaults: the API server on a GPU with >= 70 GiB that is not an A100, else the
# small set), and vllm/config/cache.py's gpu_memory_utilization (0.92 from 0.26 on).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
BIG_GPU_BYTES = 70 * GIB
DEFAULTS_BIG = {"max_num_batched_tokens": 8192, "max_num_seqs": 1024}
DEFAULTS_SMALL = {"max_num_batched_tokens": 2048, "max_num_seqs": 256}

KV_DTYPE_BYTES = {
    None: None,
    "auto": None,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
}

# ---- the fitted part -------------------------------------------------------------------
# Fitted to vLLM 0.26.0's own start-up reports on H100 80GB HBM3 (docs/memory-model.md has
# every point and how far each prediction is from it).
#
# cudaMemGetInfo's total is a little under NVML's (memory the driver keeps): on H100 80GB
# HBM3 NVML says 85,520,809,984 B and cudaMemGetInfo 85,017,493,504 B.
DRIVER_RESERVED_FRACTION = 1 - 85_017_493_504 / 85_520_809_984
# Non-torch memory that appears between vLLM's first snapshot (taken after NCCL is set up)
# and the end of profiling (cuBLAS workspaces and the like): 0.22 GiB on one GPU, 0.06 GiB
# per GPU at TP 2 and 4 (0.12 for Mixtral at TP 2).
NON_TORCH_GIB = {1: 0.22}
NON_TORCH_GIB_TP = 0.06
# The activation peak of the profiling pass: the larger of the forward pass over
# max_num_batched_tokens tokens and the sampler over min(tokens, max_num_seqs) rows (fused-MoE
# models add their workspace and, on the V1 model runner, its sampler: activation_peak_bytes).
#   forward = tokens x (3 x intermediate/TP + FWD_HIDDEN x hidden) x dtype bytes + FWD_GIB
#   (gate_up's 2 x I/TP outputs and the activation's I/TP alive together; the slope in
#   tokens is the measured one: +8192 tokens added 0.67 GiB to Llama-3-8B at TP 1)
#   sampler = rows x vocab x SAMPLER_BYTES_PER_LOGIT + SAMPLER_GIB
FWD_MLP = 3.0
FWD_HIDDEN = 2.2
FWD_GIB = 0.18
SAMPLER_BYTES_PER_LOGIT = 3.0
SAMPLER_GIB = 0.28
# ---- the fused-MoE workspace and the V1 runner's sampler (from vLLM 0.26.0's source) -------
# Not fitted: sizes read off the code that allocates them during profile_run. The constants above
# were fitted to dense models, which vLLM 0.26 runs on its V2 GPU model runner; the two terms here
# account for what the measured MoE points needed beyond them (docs/memory-model.md, "Fused-MoE
# models: the workspace and the V1 runner's sampler").
#
# vllm/config/vllm.py, VllmConfig.use_v2_model_runner / _is_default_v2_model_runner_model: the V2
# runner is the default for every model that is not MoE, and for the MoE architectures named in
# DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES; every other MoE model (Mixtral, Qwen3-MoE, DeepSeek-V3,
# gpt-oss, ...) runs on the V1 GPUModelRunner (vllm/v1/worker/gpu_model_runner.py), whose
# profile_run samples differently (v1_sampler_peak_bytes).
V2_RUNNER_MOE_ARCHITECTURES = frozenset(
    {
        "DeepseekV2ForCausalLM",
        "GraniteMoeForCausalLM",
        "InklingForCausalLM",
        "InklingForConditionalGeneration",
        "LongcatFlashNgramForCausalLM",
        "Qwen2MoeForCausalLM",
    }
)
# vllm/v1/sample/ops/topk_topp_triton.py, apply_top_k_top_p_triton: a float32 buffer of one vocabulary
# row per Triton program, min(next_power_of_2(min(SMs, rows)), SMs) rows, kept in _TRITON_BUFFER_CACHE.
# 132 SMs on the H100 / H200 SXM the points were measured on (108 on an A100: 0.01 GiB less there).
TOPK_TOPP_PROGRAMS = 132
FLOAT32_BYTES = 4
# vllm/v1/worker/workspace.py, WorkspaceManager.get_simultaneous: each tensor of one request is
# rounded up to 256 bytes inside the one workspace buffer.
WORKSPACE_ALIGN = 256

# Memory used before vLLM's first snapshot, outside everything above (CUDA context, and
# NCCL's buffers with more than one rank): free memory at start-up was 78.66 of 79.18 GiB
# at TP 1 and 77.64 at TP 2 and 4.
BASELINE_GIB = {1: 0.52}
BASELINE_GIB_TP = 1.54
# CUDA graphs (vLLM captures 51 sizes, PIECEWISE and FULL, up to 512 tokens by default):
#   GRAPH_GIB + layers x (GRAPH_PER_LAYER + GRAPH_PER_LAYER_TP / TP) x min(max_num_seqs, 512) / 512
GRAPH_GIB = 0.13
GRAPH_PER_LAYER = 0.0091
GRAPH_PER_LAYER_TP = 0.0139
# What a serving step allocates beyond the profiled peak: the sampler's float32 logits
# (rows x vocab x 4 B) and a margin. With less head-room than that, Llama-3.1-70B at TP 2
# and utilization 0.95 ran out of memory right after CUDA graph capture (0.91 GiB left,
# a 502 MiB allocation failed).
HEADROOM_GIB = 0.6


@dataclass(frozen=True)
class MemoryFit:
    """One TP size's prediction, in GiB per GPU unless named otherwise."""

    tensor_parallel_size: int
    gpu_total_gib: float  # as vLLM sees it (cudaMemGetInfo)
    gpu_memory_utilization: float
    requested_gib: float
    weights_gib_per_gpu: float
    activation_peak_gib: float
    non_torch_gib: float
    cuda_graph_gib: float  # subtracted from the KV cache only where vLLM does (0.27 on)
    cuda_graphs_counted: bool
    headroom_gib: float  # what stays free on the GPU once vLLM has everything it plans for
    max_safe_utilization: float  # the highest gpu_memory_utilization that keeps the head-room
    oom_risk: bool  # less head-room than a sampling step needs (a problem or, uncalibrated, a warning)
    kv_cache_gib: float
    kv_bytes_per_token: int  # per GPU
    kv_cache_tokens: int
    max_model_len: int
    max_concurrency: float
    fits: bool
    why_not: Optional[str] = None
    # PP > 1: every stage, and the one whose KV cache is smallest in blocks (vLLM gives every
    # stage that many: get_kv_cache_configs). The per-GPU figures above are that stage's.
    pipeline_stages: Tuple["StageFit", ...] = ()
    tightest_stage: Optional[int] = None
    # a multimodal model on vLLM 0.26's V2 model runner: its vision encoder's activations for the
    # largest image batch, which vLLM's memory profile leaves out, so they must stay free (in
    # the head-room figures above); 0 without an encoder, or where the profile counts it
    vision_encoder_serving_gib: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        if self.tightest_stage is None:  # one stage: the record as it always was
            del out["pipeline_stages"], out["tightest_stage"]
        else:
            out["pipeline_stages"] = [asdict(stage) for stage in self.pipeline_stages]
        return out


@dataclass(frozen=True)
class StageFit:
    """One pipeline stage, per GPU of that stage (GiB unless named otherwise)."""

    stage: int
    layers: Tuple[int, int]  # the decoder layers [start, end) get_pp_indices gives it
    holds: str  # what it holds besides its layers: the embedding (first), the norm and LM head (last)
    weights_gib_per_gpu: float
    activation_peak_gib: float
    cuda_graph_gib: float
    kv_cache_gib: float
    kv_cache_tokens: int  # what this stage alone would hold; vLLM gives every stage the smallest
    headroom_gib: float


# Quantization vLLM applies while loading a 16-bit checkpoint (serve.quantization with no
# quantization_config in config.json), and the bytes per weight of the layers it quantizes.
# fp8 (vllm/model_executor/layers/quantization/fp8.py, Fp8Config with is_checkpoint_fp8_serialized
# False): Fp8LinearMethod / Fp8MoEMethod quantize every LinearBase and FusedMoE layer's weight to
# float8_e4m3 with one float32 scale per tensor (negligible); VocabParallelEmbedding, the LM head
# and the norms are not LinearBase and keep the model dtype; the KV cache keeps it too unless
# kv_cache_dtype says fp8. Llama-3.1-70B on an H200: "Model loading took 67.7 GiB".
# The scales are one float32 per tensor as quantized, but where vLLM's Cutlass kernel serves it
# (kernels/linear/scaled_mm/cutlass.py, process_weights_after_loading: "Cutlass kernels support only
# per-tensor and per-channel") a fused module's (QKV, gate_up, MLA's fused q_a + kv_a) shard scales
# become one float32 per output row: ~0.02 GiB for a 70B model.
ONLINE_WEIGHT_BYTES = {"fp8": 1}
ONLINE_SCALE_BYTES = 4
_FUSED_SHARDS = (".q_proj", ".k_proj", ".v_proj", ".gate_proj", ".up_proj", ".q_a_proj", ".kv_a_proj_with_mqa")


def online_linear_bytes(shape: ModelShape, name: str, k: int, n: int, online_bytes: int) -> int:
    """One linear layer's weight as online quantization stores it: k x n at online_bytes, plus its
    float32 scales — one per output row for a shard of a fused module, one per tensor otherwise."""
    fused = name.endswith(_FUSED_SHARDS) and not (name.endswith(".q_proj") and shape.kv_lora_rank)
    if name.endswith((".q_a_proj", ".kv_a_proj_with_mqa")) and not shape.q_lora_rank:
        fused = False
    return k * n * online_bytes + ONLINE_SCALE_BYTES * (n if fused else 1)


# fp8 tensor cores (Ada 8.9, Hopper 9.0 and later): where online fp8 is worth offering.
FP8_MIN_CAPABILITY = (8, 9)


def online_quantization(quantization: Optional[str], hf_config: Optional[Dict[str, Any]]) -> Optional[str]:
    """The quantization vLLM would apply while loading, or None (none asked, or the checkpoint
    is quantized already: its quantization_config decides the weights then)."""
    if quantization in ONLINE_WEIGHT_BYTES and not (hf_config or {}).get("quantization_config"):
        return quantization
    return None


def weights_bytes(shape: ModelShape, dtype_bytes: int, online: Optional[str] = None) -> int:
    """The whole model's weights from its shape: parameters x dtype bytes, the linear layers in
    the online quantization's bytes where one applies."""
    total = shape.parameter_count() * dtype_bytes
    quantized = ONLINE_WEIGHT_BYTES.get(online or "")
    if quantized:
        for name, k, n, copies in shape.linear_layers():
            total -= copies * (k * n * dtype_bytes - online_linear_bytes(shape, name, k, n, quantized))
    return total


def _skipped(name: str, ignore: Sequence[str]) -> bool:
    """vLLM's is_layer_skipped, loosely: a "re:" regex (compressed-tensors), a glob (gpt-oss's
    "model.layers.*.self_attn"), else the name itself or a part of it (AWQ's substring match)."""
    for entry in ignore:
        if entry.startswith("re:"):
            if re.match(entry[3:], name):
                return True
        elif "*" in entry:
            if fnmatch.fnmatchcase(name, entry) or fnmatch.fnmatchcase(name, entry + ".*"):
                return True
        elif entry == name or entry in name:
            return True
    return False


def _packed_bytes(bits: float, k: int, n: int) -> float:
    return k * n * bits / 8


def _quantized_layer_bytes(method: str, qc: Dict[str, Any], k: int, n: int, dtype_bytes: int) -> Optional[float]:
    """One quantized linear layer's bytes as vLLM allocates them (create_weights), or None."""
    if method in ("awq", "awq_marlin", "gptq", "gptq_marlin"):
        # auto_awq.py / auto_gptq.py: qweight int32 packing `bits` per element, one row of qzeros
        # (packed like qweight) and of scales (params dtype) per group; GPTQ adds g_idx (int32 per input).
        bits = int(qc.get("bits") or qc.get("w_bit") or 4)
        group = int(qc.get("group_size") or qc.get("q_group_size") or -1)
        groups = math.ceil(k / group) if group > 0 else 1
        total = _packed_bytes(bits, k, n) + groups * n * (dtype_bytes + bits / 8)
        return total + (4 * k if method.startswith("gptq") else 0)
    if method in ("fp8", "fbgemm_fp8"):
        # fp8.py, Fp8LinearMethod for a serialized checkpoint: 1 byte a weight and float32 scales,
        # per tensor or per weight_block_size block.
        block = qc.get("weight_block_size")
        scales = math.ceil(n / block[0]) * math.ceil(k / block[1]) * 4 if block else 4 * 3
        return k * n + scales
    if method == "compressed-tensors":
        weights = _ct_weights(qc)
        if not weights:
            return None
        bits = int(weights.get("num_bits") or 8)
        strategy = str(weights.get("strategy") or "tensor")
        scale_bytes = 4 if weights.get("type") == "float" or strategy in ("tensor", "channel") else dtype_bytes
        if strategy == "group":
            rows = math.ceil(k / int(weights.get("group_size") or 128))
            scales = rows * n * (scale_bytes + (0 if weights.get("symmetric", True) else bits / 8))
        elif strategy == "block":
            block = weights.get("block_structure") or [128, 128]
            scales = math.ceil(n / block[0]) * math.ceil(k / block[1]) * 4
        elif strategy == "channel":
            scales = n * 4
        else:
            scales = 4
        return _packed_bytes(bits, k, n) + scales
    return None


def _ct_weights(qc: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """compressed-tensors: the weights scheme of the config group that targets Linear layers."""
    for group in (qc.get("config_groups") or {}).values():
        if isinstance(group, dict) and "Linear" in (group.get("targets") or []) and group.get("weights"):
            return group["weights"]
    return None


def _expert_bytes(method: str, k: int, n: int) -> Optional[float]:
    """MoE-only formats: mxfp4 (mxfp4.py, Mxfp4MoEMethod): 4 bits a weight and one uint8
    e8m0 scale per 32; vLLM leaves every LinearBase layer unquantized under it."""
    if method == "mxfp4":
        return k * n / 2 + k * n / 32
    return None


QUANT_METHODS = ("awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "fbgemm_fp8", "compressed-tensors", "mxfp4")


def checkpoint_weights_bytes(shape: ModelShape, quant_config: Dict[str, Any], dtype_bytes: int) -> Optional[int]:
    """A quantized checkpoint's weights from config.json's quantization_config alone (no file
    read): its linear layers at the method's bytes, everything else (and the layers its ignore
    list names) in the model dtype. None for a method not modelled (bitsandbytes, GGUF, …)."""
    method = str(quant_config.get("quant_method") or "").lower()
    if method not in QUANT_METHODS:
        return None
    total = (shape.parameter_count() - shape.linear_parameter_count()) * dtype_bytes
    for name, k, n, copies in shape.linear_layers():
        total += copies * _linear_layer_bytes(method, quant_config, name, k, n, dtype_bytes)
    return int(total)


def _ignored(quant_config: Dict[str, Any]) -> List[str]:
    return list(
        quant_config.get("modules_to_not_convert")
        or quant_config.get("ignored_layers")
        or quant_config.get("ignore")
        or []
    )


def _linear_layer_bytes(
    method: str, quant_config: Dict[str, Any], name: str, k: int, n: int, dtype_bytes: int
) -> float:
    """One copy of one linear layer of a quantized checkpoint: the method's bytes, or the model
    dtype's where the ignore list names it (or the method leaves it unquantized)."""
    quantized = None
    if not _skipped(name, _ignored(quant_config)):
        if ".experts." in name:
            quantized = _expert_bytes(method, k, n)
        if quantized is None and method != "mxfp4":
            quantized = _quantized_layer_bytes(method, quant_config, k, n, dtype_bytes)
    return quantized if quantized is not None else k * n * dtype_bytes


# ---- pipeline parallel -----------------------------------------------------------------
# vLLM gives each pipeline stage a contiguous run of decoder layers (vllm/distributed/utils.py,
# get_pp_indices); the first stage also builds the token embedding, the last the final norm and
# the LM head (llama.py and the models built like it: embed_tokens on is_first_rank, or on
# is_last_rank when tie_word_embeddings, so that the LM head ties to a copy of its own; norm and
# lm_head on is_last_rank, PPMissingLayer elsewhere). The vision encoder is built on every stage.


def pp_layer_partition(num_layers: int, pp: int, override: Optional[str] = None) -> Tuple[int, ...]:
    """The decoder layers of each pipeline stage, as get_pp_indices counts them.

    VLLM_PP_LAYER_PARTITION (override, e.g. "20,20,21,19") when it is set; else num_layers // pp
    each, and the remainder one layer each to the stages before the last, counting back from it
    (partitions[-2], partitions[-3], …): 62 layers over 4 stages are 15, 16, 16, 15. Raises
    ValueError where vLLM does (not integers, not pp of them, not summing to num_layers)."""
    if override is not None:
        try:
            partitions = [int(layer) for layer in override.split(",")]
        except ValueError as err:
            raise ValueError(f"Invalid partition string: {override}") from err
        if len(partitions) != pp:
            raise ValueError(f"len(partitions)={len(partitions)} does not match pp_size={pp}.")
        if sum(partitions) != num_layers:
            raise ValueError(f"sum(partitions)={sum(partitions)} does not match num_hidden_layers={num_layers}.")
        return tuple(partitions)
    partitions = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        partitions[-i] += 1
    return tuple(partitions)


def _layer_weight_bytes(
    shape: ModelShape, dtype_bytes: int, online: Optional[str], quant_config: Optional[Dict[str, Any]]
) -> List[float]:
    """Each decoder layer's weights in bytes: the model dtype, its linear layers at the online
    quantization's or the checkpoint's quantized bytes where one applies."""
    per_layer = [float(c * dtype_bytes) for c in shape.layer_parameter_counts()]
    method = str((quant_config or {}).get("quant_method") or "").lower()
    online_bytes = ONLINE_WEIGHT_BYTES.get(online or "")
    if method not in QUANT_METHODS and not online_bytes:
        return per_layer
    for name, k, n, copies in shape.linear_layers():
        if method in QUANT_METHODS:
            stored = _linear_layer_bytes(method, dict(quant_config or {}), name, k, n, dtype_bytes)
        else:
            stored = online_linear_bytes(shape, name, k, n, online_bytes)
        per_layer[int(name.split(".")[2])] -= copies * (k * n * dtype_bytes - stored)
    return per_layer


def stage_weights_bytes(
    shape: ModelShape,
    partition: Sequence[int],
    weights_bytes_total: float,
    dtype_bytes: int,
    online: Optional[str] = None,
    quant_config: Optional[Dict[str, Any]] = None,
) -> Tuple[float, ...]:
    """Each pipeline stage's weights, all its TP ranks together: its layers, the vision encoder,
    the embedding on the first stage, the final norm and one vocabulary x hidden LM head on the
    last (tied or not: a tied model's last stage builds its own embed_tokens for the head). The
    shape gives the shares; they are scaled to weights_bytes_total (the files' exact size when
    they are on disk), so one stage is the total itself."""
    if len(partition) == 1:
        return (float(weights_bytes_total),)
    per_layer = _layer_weight_bytes(shape, dtype_bytes, online, quant_config)
    embedding = shape.embedding_parameters() * dtype_bytes
    norm = shape.final_norm_parameters() * dtype_bytes
    vision = shape.vision_parameters * dtype_bytes
    whole = sum(per_layer) + embedding * (1 if shape.tie_word_embeddings else 2) + norm + vision
    scale = weights_bytes_total / whole if whole else 1.0
    stages, start = [], 0
    for i, count in enumerate(partition):
        held = sum(per_layer[start : start + count]) + vision
        held += embedding if i == 0 else 0
        held += norm + embedding if i == len(partition) - 1 else 0
        stages.append(held * scale)
        start += count
    return tuple(stages)


def serve_defaults(gpu_total_bytes: int, gpu_name: Optional[str] = None) -> Dict[str, int]:
    big = gpu_total_bytes >= BIG_GPU_BYTES and "a100" not in (gpu_name or "").lower()
    return dict(DEFAULTS_BIG if big else DEFAULTS_SMALL)


def kv_bytes_per_token(shape: ModelShape, tp: int, pp: int = 1, kv_dtype_bytes: int = 2) -> int:
    """K and V for every layer this GPU holds, per token."""
    layers = math.ceil(shape.num_hidden_layers / pp)
    return layers * shape.kv_bytes_per_token_per_layer(tp, kv_dtype_bytes)


@dataclass(frozen=True)
class KvPool:
    """How vLLM lays one GPU's KV cache out (vllm/v1/core/kv_cache_utils.py)."""

    bytes_per_block: int  # what one block id costs across the layers that share it
    groups: int  # KV-cache groups drawing block ids from the one pool
    blocks_per_request: int  # what one request of max_model_len takes, over every group
    sliding: bool  # some layers are sliding-window ones


def concurrent_batches(pp: int) -> int:
    """Batches vLLM keeps in flight (VllmConfig.max_concurrent_batches): two with async scheduling,
    its default, on one stage; PP of them with PP > 1 (the V1 model runner runs PP without it)."""
    return 2 if pp <= 1 else pp


def reported_tokens(blocks: int, blocks_per_request: int, max_model_len: int) -> int:
    """The "GPU KV cache size: N tokens" vLLM logs (get_kv_cache_capacity): the concurrency
    (blocks ÷ one max_model_len request's blocks, over every group) × max_model_len, in the same
    float arithmetic. With full attention alone it is blocks × BLOCK_SIZE; with sliding windows a
    request needs fewer blocks than its length, and the figure counts the tokens served, not stored
    (mistral-7b-v0.1 on an H200: 1,493,310 tokens from 114.02 GiB of 2 MiB blocks)."""
    if not blocks_per_request:
        return 0
    return int(blocks / blocks_per_request * max_model_len)


def kv_pool(
    shape: ModelShape,
    tp: int,
    pp: int,
    kv_dtype_bytes: int,
    max_model_len: int,
    batched: int,  # the tokens in flight (max_num_batched_tokens x concurrent_batches)
    stage: Optional[Tuple[int, int]] = None,
) -> KvPool:
    """vLLM's KV-cache groups, and what a block costs on the GPUs of one pipeline stage.

    stage: that stage's layers [start, end) (default: the first stage of pp_layer_partition).
    One attention type (every layer full, or every layer the same sliding window): one group of
    all layers, a block holds BLOCK_SIZE tokens of every layer of the stage. Full and
    sliding-window layers mixed (Gemma-2/3, gpt-oss) with one page size:
    _get_kv_cache_groups_uniform_page_size splits each type of the whole model into groups of
    group_size layers — the smaller type's count, or the larger's when it is under 1.5 times the
    smaller (padding the short type) — layers[i::num_groups] to group i, and every group draws
    block ids from one pool; get_kv_cache_configs projects the groups onto each stage's layers
    (_project_kv_cache_groups_to_worker) and a block costs the widest projected group's pages
    (_get_kv_cache_bytes_per_block), group_size of them without PP. A request takes
    cdiv(max_model_len, 16) blocks in each full group and, in each sliding group,
    cdiv(min(window - 1 + in_flight, max_model_len), 16) + 1 (SlidingWindowSpec's
    max_memory_usage_bytes; in_flight is max_num_batched_tokens per concurrent batch, see
    concurrent_batches), which is what get_max_concurrency_for_kv_cache_config divides by; the
    "GPU KV cache size" vLLM logs is that concurrency x max_model_len (reported_tokens)."""
    layers = shape.num_hidden_layers
    if stage is None:
        stage = (0, pp_layer_partition(layers, pp)[0])
    first, last = stage
    page = shape.kv_bytes_per_token_per_layer(tp, kv_dtype_bytes) * BLOCK_SIZE
    full_blocks = math.ceil(max_model_len / BLOCK_SIZE)
    kinds = shape.layer_types or ("full_attention",) * layers
    by_kind = [[i for i, k in enumerate(kinds) if (k == "sliding_attention") == s] for s in (False, True)]
    full, sliding = (len(b) for b in by_kind)
    window = shape.sliding_window or 0
    window_blocks = math.ceil(min(window - 1 + batched, max_model_len) / BLOCK_SIZE) + 1
    if not (full and sliding):
        per_request = window_blocks if sliding else full_blocks
        return KvPool(page * (last - first), 1, per_request, bool(sliding))
    size = min(full, sliding)
    if max(full, sliding) < 1.5 * size:
        size = max(full, sliding)
    groups = []
    for members in by_kind:
        count = math.ceil(len(members) / size)
        groups += [members[i::count] for i in range(count)]
    widest = max(sum(1 for i in group if first <= i < last) for group in groups)
    per_request = math.ceil(full / size) * full_blocks + math.ceil(sliding / size) * window_blocks
    return KvPool(page * widest, len(groups), per_request, True)


def uses_v1_model_runner(shape: ModelShape) -> bool:
    """Whether vLLM 0.26 runs this model on the V1 GPUModelRunner: a MoE model whose architecture
    is not one DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES names (vllm/config/vllm.py,
    _is_default_v2_model_runner_model). Mixtral and Qwen3-MoE are; dense models and
    DeepSeek-V2 are not (their logs say "Using V2 Model Runner")."""
    return shape.num_experts > 1 and shape.architecture not in V2_RUNNER_MOE_ARCHITECTURES


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def fused_moe_workspace_bytes(shape: ModelShape, tp: int, tokens: int, dtype_bytes: int = 2) -> int:
    """The fused-MoE layers' workspace after a forward pass over `tokens` tokens (0 without experts).

    vLLM 0.26 on Hopper picks the Triton experts for bf16 and online fp8 MoE layers ("Using
    TritonExperts MoE backend", "Using TRITON Fp8 MoE backend"). FusedMoEKernelModularImpl
    (vllm/model_executor/layers/fused_moe/modular_kernel.py, _allocate_buffers) asks
    TritonExperts.workspace_shapes (experts/triton_moe.py) for the whole batch, M = tokens (no
    chunking in 0.26), N = w13's rows = 2 x moe_intermediate / TP, K = hidden, in the activation
    dtype (workspace_dtype; bf16 under online fp8 too):

        workspace13 = M x top-k x max(N / 2, K)   (the activation's output; the gated SiLU halves N)
        workspace2  = M x top-k x max(N, K)       (gate_up's output, then w2's before moe_sum)
        output      = M x K                       (shares workspace13's buffer)

    and takes both from the WorkspaceManager (vllm/v1/worker/workspace.py, get_simultaneous): one
    buffer for every MoE layer, grown to the largest request and never freed, so it is alive
    from the first MoE layer to the end of profile_run, through the sampler. The router logits
    (M x experts), top-k ids and weights and moe_align_block_size's sorted ids
    (M x top-k + experts x (BLOCK_SIZE_M - 1) int32) are transient and under 3 MiB for the
    shapes served. Qwen3-30B-A3B at 8192 tokens: 2 x 8192 x 8 x 2048 x 2 B = 0.5 GiB;
    Mixtral-8x7B: 8192 x 2 x (14336 + 28672) x 2 B = 1.31 GiB at TP 1. Other expert backends
    (FlashInfer CUTLASS / TRT-LLM, Marlin, mxfp4's kernels) size their own workspaces; they get the
    Triton sizes here, unmeasured. Online fp8's quantized copies of the activations (M x K and
    M x top-k x N/2 bytes, transient) are not counted."""
    if shape.num_experts <= 1:
        return 0
    n = 2 * (shape.moe_intermediate_size or shape.intermediate_size) // tp
    k, topk = shape.hidden_size, shape.experts_per_token
    workspace13 = max(tokens * topk * max(n // 2, k), tokens * k)
    workspace2 = tokens * topk * max(n, k)
    return _round_up(workspace13 * dtype_bytes, WORKSPACE_ALIGN) + _round_up(workspace2 * dtype_bytes, WORKSPACE_ALIGN)


def v1_sampler_peak_bytes(shape: ModelShape, tokens: int, rows: int, dtype_bytes: int = 2) -> int:
    """The V1 GPUModelRunner's _dummy_sampler_run peak (vllm/v1/worker/gpu_model_runner.py), with
    the dummy forward pass's hidden states still alive (profile_run holds them).

    It samples rows = min(tokens, max_num_seqs) requests with top_k = vocab - 1 and top_p = 0.9,
    twice: through FlashInfer, then through forward_native (a per-request generator). Per logit,
    alive at the peak of either call: the logits in the model dtype (compute_logits; the full
    vocabulary on every TP rank, all-gathered), their float32 copy (Sampler.forward), and two more
    float32 tensors — FlashInfer's top_k_mask_logits output and its softmax
    (flashinfer/sampling.py, top_k_top_p_sampling_from_logits: a tensor top_k skips the fast path),
    then forward_native's probs and random_sample's exponential noise
    (vllm/v1/sample/ops/topk_topp_sampler.py). The second call adds the Triton top-k/top-p
    buffer (TOPK_TOPP_PROGRAMS rows of the vocabulary in float32). The V2 runner's sampler skips
    top-k/top-p and logprobs in its profile run and is much lighter (the fitted sampler term).
    Qwen3-30B-A3B: 1024 x 151,936 x (2 + 3 x 4) B = 2.03 GiB, + 0.07 GiB buffer, + 0.04 GiB states."""
    rows = min(tokens, rows)
    logits = rows * shape.vocab_size * (dtype_bytes + 3 * FLOAT32_BYTES)
    programs = min(TOPK_TOPP_PROGRAMS, rows)
    buffer = min(1 << max(programs - 1, 0).bit_length(), TOPK_TOPP_PROGRAMS) * shape.vocab_size * FLOAT32_BYTES
    # _dummy_run's hidden states (tokens x hidden), the rows picked for the sampler and their
    # torch.rand_like copy (rows x hidden each).
    states = (tokens + 2 * rows) * shape.hidden_size * dtype_bytes
    return int(logits + buffer + states)


def _forward_bytes(shape: ModelShape, tp: int, tokens: int, intermediate: int, dtype_bytes: int) -> float:
    """The fitted forward term: gate_up's 2 x I/TP outputs and the activation's I/TP alive together."""
    return tokens * (FWD_MLP * intermediate / tp + FWD_HIDDEN * shape.hidden_size) * dtype_bytes + FWD_GIB * GIB


def activation_peak_bytes(
    shape: ModelShape, tp: int, tokens: int, rows: int, dtype_bytes: int = 2, sampler_run: bool = True
) -> int:
    """The profiling pass's peak; sampler_run False for a pipeline stage before the last, where
    vLLM's profile_run (gpu_model_runner.py) runs no sampler (only is_last_rank does).

    Dense: the larger of the forward pass and the sampler. MoE: the routed experts' activations
    are the fused-MoE workspace (fused_moe_workspace_bytes), alive from the first MoE layer on,
    so the peak is the largest of the leading dense layers' forward (DeepSeek's
    first_k_dense_replace, run before any MoE layer), the workspace plus the forward with the
    shared experts as its MLP, and the workspace plus the sampler — the V1 runner's
    (v1_sampler_peak_bytes) for the MoE models vLLM runs on it."""
    workspace = fused_moe_workspace_bytes(shape, tp, tokens, dtype_bytes)
    if workspace:
        dense = _forward_bytes(shape, tp, tokens, shape.intermediate_size, dtype_bytes) if shape.dense_layers else 0
        moe = workspace + _forward_bytes(shape, tp, tokens, shape.shared_expert_intermediate_size, dtype_bytes)
        forward = max(dense, moe)
    else:
        forward = _forward_bytes(shape, tp, tokens, shape.intermediate_size, dtype_bytes)
    if not sampler_run:
        return int(forward)
    if uses_v1_model_runner(shape):
        sampler = v1_sampler_peak_bytes(shape, tokens, rows, dtype_bytes)
    else:
        sampler = min(tokens, rows) * shape.vocab_size * SAMPLER_BYTES_PER_LOGIT + SAMPLER_GIB * GIB
    return int(max(forward, workspace + sampler))


def vision_encoder_tokens(shape: ModelShape, max_num_batched_tokens: int) -> int:
    """The LM tokens of images the encoder runs on at once: vLLM's encoder compute budget,
    max(max_num_encoder_input_tokens (= max_num_batched_tokens), the largest item's tokens)
    (vllm/v1/core/encoder_cache_manager.py, compute_mm_encoder_budget), the largest item being
    the processor's largest image: max_pixels over (patch x merge)² pixels a token."""
    if not (shape.vision_hidden_size and shape.vision_patch_size):
        return 0
    per_token = shape.vision_patch_size**2 * shape.vision_merge
    return max(max_num_batched_tokens, shape.vision_max_pixels // per_token)


def vision_encoder_peak_bytes(shape: ModelShape, tp: int, tokens: int, dtype_bytes: int = 2) -> int:
    """The vision encoder's activations over `tokens` LM tokens of images (0 without one).

    Qwen2.5-VL's ViT (vllm/model_executor/models/qwen2_5_vl.py) runs every block on all the
    batch's patches (tokens x merge²): at its MLP the residual stream, the block input and the
    normed input (3 x width) are alive with gate_up's output and the activation's (3 x the MLP
    width / TP, split like the text model's); the pixel values come in as float32 and are cast
    to the encoder's dtype (both alive at the patch embedding, under the blocks' peak for these
    widths, so counted beside it)."""
    if not (tokens and shape.vision_hidden_size):
        return 0
    patches = tokens * shape.vision_merge
    blocks = patches * (3 * shape.vision_hidden_size + 3 * shape.vision_intermediate_size / tp) * dtype_bytes
    pixels = patches * shape.vision_patch_inputs * (4 + dtype_bytes)
    return int(blocks + pixels)


def cuda_graph_bytes(shape: ModelShape, tp: int, pp: int, rows: int, layers: Optional[int] = None) -> int:
    """layers: the pipeline stage's own (default: the whole model over pp, rounded up)."""
    layers = math.ceil(shape.num_hidden_layers / pp) if layers is None else layers
    return int((GRAPH_GIB + layers * (GRAPH_PER_LAYER + GRAPH_PER_LAYER_TP / tp) * min(rows, 512) / 512) * GIB)


def graphs_counted(vllm_version: Optional[str]) -> bool:
    """Whether vLLM takes its CUDA-graph estimate out of the KV cache. 0.26's model runner
    (vllm/v1/worker/gpu/model_runner.py, profile_cudagraph_memory) returns 0; 0.32's
    estimates it. Releases in between are taken to behave like 0.32."""
    parsed = parse_version(vllm_version)
    return parsed is None or parsed >= (0, 27)


def cuda_total_bytes(nvml_total_bytes: int) -> int:
    return int(nvml_total_bytes * (1 - DRIVER_RESERVED_FRACTION))


@dataclass(frozen=True)
class _Budget:
    """What every pipeline stage's GPUs share: the card, the request, the serve options."""

    tp: int
    total: int
    requested: int
    counted: bool  # the CUDA graphs come out of the KV cache (0.27 on)
    non_torch: float
    baseline: float
    tokens: int  # max_num_batched_tokens
    in_flight: int  # tokens scheduled but not settled: max_num_batched_tokens per concurrent batch
    rows: int  # max_num_seqs
    length: int  # max_model_len
    kv_bytes: int
    dtype_bytes: int
    enforce_eager: bool


@dataclass(frozen=True)
class _Stage:
    index: int
    layers: Tuple[int, int]
    weights: float
    peak: int
    graphs: int
    kv_cache: float
    pool: KvPool
    blocks: int
    headroom: float
    need_free: float
    max_util: float
    encoder: float = 0  # the part of need_free the vision encoder takes at serving time

    @property
    def sampling_need(self) -> float:
        """What must stay free for a sampling step, the encoder's unmeasured share left out: the
        figure a refusal rests on (with the encoder it is only a warning, oom_risk)."""
        return self.need_free - self.encoder

    def room(self) -> float:
        """KV blocks this stage could hold (negative when it has no room): the smallest binds."""
        return self.kv_cache / self.pool.bytes_per_block if self.pool.bytes_per_block else math.inf


def _stage(shape: ModelShape, b: _Budget, index: int, layers: Tuple[int, int], weights: float, last: bool) -> _Stage:
    """One pipeline stage's GPUs: vLLM's determine_available_memory on each, and its blocks."""
    peak = activation_peak_bytes(shape, b.tp, b.tokens, b.rows, b.dtype_bytes, sampler_run=last)
    # The first stage runs the vision encoder. vLLM 0.26's V1 model runner profiles it (profile_run:
    # embed_multimodal on the largest batch of dummy images, before the decoder's dummy run); its V2
    # runner does not (vllm/v1/worker/gpu/model_runner.py, profile_run runs the decoder alone), so
    # there the encoder's activations come out of what stays free at serving time.
    images = vision_encoder_tokens(shape, b.tokens) if index == 0 else 0
    encoder = vision_encoder_peak_bytes(shape, b.tp, images, b.dtype_bytes)
    profiled = uses_v1_model_runner(shape)
    if profiled:
        peak = max(peak, encoder)
    serving_encoder = 0 if profiled else encoder
    graphs = 0 if b.enforce_eager else cuda_graph_bytes(shape, b.tp, 1, b.rows, layers[1] - layers[0])
    kv_cache = b.requested - weights - peak - b.non_torch - (graphs if b.counted else 0)
    pool = kv_pool(shape, b.tp, 1, b.kv_bytes, b.length, b.in_flight, stage=layers)
    blocks = max(0, int(kv_cache // pool.bytes_per_block)) if pool.bytes_per_block else 2**62
    # Everything on the GPU once serving: what was there before vLLM's snapshot, what it
    # requested, and the CUDA graphs where they are not inside the request; the last stage
    # samples, so it needs room for the float32 logits.
    need_free = (min(b.tokens, b.rows) * shape.vocab_size * 4 if last else 0) + HEADROOM_GIB * GIB + serving_encoder
    headroom = b.total - b.baseline - b.requested - (0 if b.counted else graphs)
    max_util = math.floor((b.total - b.baseline - (0 if b.counted else graphs) - need_free) / b.total * 100) / 100
    return _Stage(
        index, layers, weights, peak, graphs, kv_cache, pool, blocks, headroom, need_free, max_util, serving_encoder
    )


def _where(stage: _Stage, stages: int) -> str:
    if stages == 1:
        return ""
    return f" on pipeline stage {stage.index} (layers {stage.layers[0]}-{stage.layers[1] - 1})"


def _why_not(stages: Sequence[_Stage], b: _Budget, kv_tokens: int, blocks: int, gpu_total_bytes: int) -> Optional[str]:
    """vLLM's refusals, in the order it meets them, naming the stage where there are several."""
    n = len(stages)
    heaviest = max(stages, key=lambda st: st.weights)
    tight = min(stages, key=_Stage.room)
    # the encoder's serving-time share is read from vLLM's source, not measured: it warns (oom_risk), it
    # does not refuse
    worst = min(stages, key=lambda st: st.headroom - st.sampling_need)
    per_request = tight.pool.blocks_per_request
    if heaviest.weights >= b.requested:
        return (
            f"weights need {heaviest.weights / GIB:.1f} GiB per GPU{_where(heaviest, n)}, "
            f"more than the {b.requested / GIB:.1f} GiB vLLM may use"
        )
    if tight.kv_cache <= 0:
        return (
            f"no memory left for the KV cache{_where(tight, n)} "
            f"({tight.kv_cache / GIB:.2f} GiB after weights and activations)"
        )
    if kv_tokens < b.length and not tight.pool.sliding:
        return f"the KV cache holds {kv_tokens:,} tokens{_where(tight, n)}, fewer than max_model_len {b.length:,}"
    if blocks < per_request:
        return (
            f"the KV cache holds {blocks:,} blocks{_where(tight, n)}, fewer than the {per_request:,} one request of "
            f"max_model_len {b.length:,} needs across its full and sliding-window layers"
        )
    if worst.headroom < worst.sampling_need and (worst.headroom < 0 or gpu_total_bytes >= BIG_GPU_BYTES):
        # Certain when vLLM's own plan exceeds the card; on other cards than the 80 GB class
        # the constants were measured on, a small margin is only a warning (oom_risk).
        return (
            f"out of memory after start-up{_where(worst, n)}: {worst.headroom / GIB:.2f} GiB would stay free, "
            f"less than the {worst.sampling_need / GIB:.2f} GiB a full sampling step allocates"
        )
    return None


def _stage_fit(st: _Stage, last: int, shape: ModelShape) -> StageFit:
    holds = ", ".join(
        part for part, here in (("embedding", st.index == 0), ("norm + LM head", st.index == last)) if here
    )
    return StageFit(
        stage=st.index,
        layers=st.layers,
        holds=holds,
        weights_gib_per_gpu=round(st.weights / GIB, 2),
        activation_peak_gib=round(st.peak / GIB, 2),
        cuda_graph_gib=round(st.graphs / GIB, 2),
        kv_cache_gib=round(st.kv_cache / GIB, 2),
        kv_cache_tokens=min(st.blocks // st.pool.groups * BLOCK_SIZE, 2**62),
        headroom_gib=round(st.headroom / GIB, 2),
    )


def predict(
    shape: ModelShape,
    tp: int,
    weights_bytes_total: int,
    gpu_total_bytes: int,
    *,
    pp: int = 1,
    gpu_memory_utilization: Optional[float] = None,
    max_model_len: Optional[int] = None,
    max_num_batched_tokens: Optional[int] = None,
    max_num_seqs: Optional[int] = None,
    kv_cache_dtype: Optional[str] = None,
    dtype_bytes: int = 2,
    gpu_name: Optional[str] = None,
    vllm_version: Optional[str] = None,
    enforce_eager: bool = False,
    layer_partition: Optional[Sequence[int]] = None,
    stage_weights: Optional[Sequence[float]] = None,
) -> MemoryFit:
    """vLLM's KV-cache size for this TP size on GPUs of gpu_total_bytes (NVML's total).

    PP > 1: each stage's GPUs are sized on their own (layer_partition: pp_layer_partition's,
    stage_weights: stage_weights_bytes's, all TP ranks of a stage together), and vLLM's
    get_kv_cache_configs gives every stage the smallest stage's number of blocks."""
    defaults = serve_defaults(gpu_total_bytes, gpu_name)
    util = gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    total = cuda_total_bytes(gpu_total_bytes)
    partition = tuple(layer_partition or pp_layer_partition(shape.num_hidden_layers, pp))
    ranks = tp * len(partition)  # NCCL and the like come with a second rank, TP or PP
    b = _Budget(
        tp=tp,
        total=total,
        requested=math.ceil(total * util),
        counted=graphs_counted(vllm_version),
        non_torch=NON_TORCH_GIB.get(ranks, NON_TORCH_GIB_TP) * GIB,
        baseline=BASELINE_GIB.get(ranks, BASELINE_GIB_TP) * GIB,
        tokens=max_num_batched_tokens or defaults["max_num_batched_tokens"],
        in_flight=(max_num_batched_tokens or defaults["max_num_batched_tokens"]) * concurrent_batches(len(partition)),
        rows=max_num_seqs or defaults["max_num_seqs"],
        length=max_model_len or shape.context_length or shape.max_position_embeddings or 2048,
        kv_bytes=KV_DTYPE_BYTES.get(kv_cache_dtype) or dtype_bytes,
        dtype_bytes=dtype_bytes,
        enforce_eager=enforce_eager,
    )
    if stage_weights is None:
        stage_weights = stage_weights_bytes(shape, partition, weights_bytes_total, dtype_bytes)
    bounds = [sum(partition[:i]) for i in range(len(partition) + 1)]
    last = len(partition) - 1
    stages = [
        _stage(shape, b, i, (bounds[i], bounds[i + 1]), stage_weights[i] / tp, i == last) for i in range(last + 1)
    ]
    # the tightest: a stage whose weights do not fit, else the one with the fewest blocks
    tight = min(stages, key=lambda st: (st.weights < b.requested, st.room()))
    blocks = min(st.blocks for st in stages)
    per_request_blocks = tight.pool.blocks_per_request
    concurrency = blocks / per_request_blocks if per_request_blocks else 0.0
    kv_tokens = reported_tokens(blocks, per_request_blocks, b.length)
    why = _why_not(stages, b, kv_tokens, blocks, gpu_total_bytes)
    headroom = min(st.headroom for st in stages)
    return MemoryFit(
        tensor_parallel_size=tp,
        gpu_total_gib=round(total / GIB, 2),
        gpu_memory_utilization=util,
        requested_gib=round(b.requested / GIB, 2),
        weights_gib_per_gpu=round(tight.weights / GIB, 2),
        activation_peak_gib=round(tight.peak / GIB, 2),
        non_torch_gib=round(b.non_torch / GIB, 2),
        cuda_graph_gib=round(tight.graphs / GIB, 2),
        cuda_graphs_counted=b.counted,
        headroom_gib=round(headroom / GIB, 2),
        max_safe_utilization=min(st.max_util for st in stages),
        oom_risk=any(st.headroom < st.need_free for st in stages),
        vision_encoder_serving_gib=round(stages[0].encoder / GIB, 2),
        kv_cache_gib=round(tight.kv_cache / GIB, 2),
        kv_bytes_per_token=(tight.layers[1] - tight.layers[0]) * shape.kv_bytes_per_token_per_layer(tp, b.kv_bytes),
        kv_cache_tokens=kv_tokens,
        max_model_len=b.length,
        max_concurrency=round(concurrency, 2),
        fits=why is None,
        why_not=why,
        pipeline_stages=tuple(_stage_fit(st, last, shape) for st in stages) if last else (),
        tightest_stage=tight.index if last else None,
    )


def predict_cpu(
    shape: ModelShape,
    tp: int,
    weights_bytes_total: int,
    kv_space_gib: int,
    *,
    pp: int = 1,
    max_model_len: Optional[int] = None,
    kv_cache_dtype: Optional[str] = None,
    dtype_bytes: int = 2,
    layer_partition: Optional[Sequence[int]] = None,
    stage_weights: Optional[Sequence[float]] = None,
) -> MemoryFit:
    """vLLM-CPU gives each rank exactly VLLM_CPU_KVCACHE_SPACE GiB of KV cache
    (vllm/platforms/cpu.py: kv_cache_memory_bytes = space x GiB); no profiling is involved.
    With PP > 1 the stage with the most layers holds the fewest blocks, and every stage gets that."""
    length = max_model_len or shape.context_length or shape.max_position_embeddings or 2048
    kv_bytes = KV_DTYPE_BYTES.get(kv_cache_dtype) or dtype_bytes
    partition = tuple(layer_partition or pp_layer_partition(shape.num_hidden_layers, pp))
    if stage_weights is None:
        stage_weights = stage_weights_bytes(shape, partition, weights_bytes_total, dtype_bytes)
    tight = partition.index(max(partition))
    per_token = partition[tight] * shape.kv_bytes_per_token_per_layer(tp, kv_bytes)
    kv_cache = kv_space_gib * GIB
    blocks = int(kv_cache // (per_token * BLOCK_SIZE))
    tokens = blocks * BLOCK_SIZE
    why = None
    if kv_space_gib < 1:
        why = "vLLM-CPU needs at least 1 GiB of KV cache per rank"
    elif tokens < length:
        why = f"the KV cache holds {tokens:,} tokens, fewer than max_model_len {length:,}"
    return MemoryFit(
        tensor_parallel_size=tp,
        gpu_total_gib=0.0,
        gpu_memory_utilization=0.0,
        requested_gib=float(kv_space_gib),
        weights_gib_per_gpu=round(stage_weights[tight] / tp / GIB, 2),
        activation_peak_gib=0.0,
        non_torch_gib=0.0,
        cuda_graph_gib=0.0,
        cuda_graphs_counted=False,
        headroom_gib=0.0,
        max_safe_utilization=0.0,
        oom_risk=False,
        kv_cache_gib=float(kv_space_gib),
        kv_bytes_per_token=per_token,
        kv_cache_tokens=tokens,
        max_model_len=length,
        max_concurrency=round(blocks / math.ceil(length / BLOCK_SIZE), 2),
        fits=why is None,
        why_not=why,
        tightest_stage=tight if len(partition) > 1 else None,
    )


# The model's KV-token predictions were within 3 % of vLLM's on every measured point; a
# suggested max_model_len keeps 5 % below the prediction so that it still fits when vLLM
# finds a little less room than predicted.
MAX_MODEL_LEN_MARGIN = 0.95


def safe_max_model_len(fit: MemoryFit) -> int:
    """A max_model_len to suggest: 5 % under the predicted KV tokens, in whole 256s (0: none)."""
    longest = int(fit.kv_cache_tokens * MAX_MODEL_LEN_MARGIN) // 256 * 256
    return longest if longest >= 256 else 0


def describe_stages(fit: Dict[str, Any]) -> List[str]:
    """mode=plan's lines for a pipeline (a MemoryFit.to_dict() with PP > 1): each stage's layers,
    weights and KV cache per GPU, and the tightest one, whose blocks every stage gets."""
    stages = fit.get("pipeline_stages") or []
    if not stages:
        return []
    lines = [
        f"  {'PP stage':<9}{'layers':<9}{'holds':<16}{'weights/GPU':>12}{'KV cache/GPU':>14}{'KV tokens alone':>17}"
    ]
    for st in stages:
        first, end = st["layers"]
        mark = "*" if st["stage"] == fit.get("tightest_stage") else " "
        lines.append(
            f"{mark} {st['stage']:<9}{f'{first}-{end - 1}':<9}{st['holds'] or '-':<16}"
            f"{st['weights_gib_per_gpu']:>8.2f} GiB{max(st['kv_cache_gib'], 0):>10.2f} GiB{st['kv_cache_tokens']:>17,}"
        )
    lines.append(
        f"pipeline: the tightest stage is {fit.get('tightest_stage')}; vLLM gives every stage its KV blocks "
        f"(get_kv_cache_configs): {fit['kv_cache_tokens']:,} tokens; the fit above is that stage's"
    )
    return lines
