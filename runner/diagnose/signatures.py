"""Why a vLLM start failed, read from its log: the root cause in one line, and the override
that fixes it.

A pure function of the log text and, optionally, what the plan knew (the TP size, the
devices, the model's valid TP sizes), so the fix can be concrete ("serve.tensor_parallel_size=2
or 4") where vLLM's own advice is generic ("reduce tensor_parallel_size"). Every pattern is
the wording vLLM, torch, NCCL or transformers prints; the comment beside it names the file
(in vLLM 0.32 unless it says otherwise). Older wordings seen in vLLM's history and its issue
threads (0.26's info-level mnnvl line, V0's KV-capacity error) are matched too, and marked.

Rules are tried in RULES order, most specific first, and the first that matches wins: when one
rank hits an illegal memory access, the others time out in NCCL and the API server reports
EngineDeadError, and only the first of these is worth acting on. The fallout lines themselves
("Engine core initialization failed", "EngineDeadError") match no rule on purpose.

``context`` may carry: tensor_parallel_size, pipeline_parallel_size, device,
interconnect, gpu_count, num_attention_heads, valid_tp_sizes, max_model_len,
gpu_memory_utilization, and also port and cpu_kvcache_space_gib.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Pattern, Sequence, Tuple

EVIDENCE_CHARS = 300
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92  # vLLM's own default (vllm/config/cache.py, 0.26 on)
DEFAULT_PORT = 8000  # vLLM's own default; "non-default args" omits it
# Not fatal: reported only when nothing else explains the failure.
NOTE_CAUSES = frozenset({"custom_allreduce_disabled"})

FUSION_OFF = "'+serve.extra_args.compilation_config={pass_config: {fuse_allreduce_rms: false}}'"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its worker prefixes


@dataclass(frozen=True)
class Diagnosis:
    cause: str  # short stable id, e.g. "heads_not_divisible"
    summary: str  # one line, human: what went wrong
    fix: str  # a Hydra override or concrete action the user can paste
    evidence: str  # the log line that matched (at most EVIDENCE_CHARS)


Explain = Callable[[re.Match, Mapping[str, Any], str], Tuple[str, str]]


@dataclass(frozen=True)
class _Rule:
    cause: str
    pattern: Pattern[str]
    explain: Explain  # (match, context, log before the matched line) -> (summary, fix)
    after: Optional[Pattern[str]] = None  # counts only on a line after one matching this


def diagnose(log_text: str, context: Optional[Mapping[str, Any]] = None) -> Optional[Diagnosis]:
    """The most specific cause the log shows, or None when no rule matches."""
    ctx = context or {}
    lines = _ANSI.sub("", log_text).splitlines()
    for rule in RULES:
        hit = _first_hit(rule, lines)
        if hit is None:
            continue
        index, match = hit
        summary, fix = rule.explain(match, ctx, "\n".join(lines[:index]))
        return Diagnosis(rule.cause, summary, fix, _evidence(lines[index], match))
    return None


def _first_hit(rule: _Rule, lines: Sequence[str]) -> Optional[Tuple[int, re.Match]]:
    start = 0
    if rule.after is not None:
        start = next((i + 1 for i, line in enumerate(lines) if rule.after.search(line)), len(lines))
    for i in range(start, len(lines)):
        if match := rule.pattern.search(lines[i]):
            return i, match
    return None


def _evidence(line: str, match: re.Match) -> str:
    if len(line.strip()) <= EVIDENCE_CHARS:
        return line.strip()
    # A long line (a config dump, a pydantic error) is cut around the match, keeping the match's
    # end: that is where vLLM puts the numbers it computed ("... model length is 87840").
    lo = max(match.end() - EVIDENCE_CHARS, match.start() - 100)
    lo = max(0, min(lo, len(line) - EVIDENCE_CHARS))
    return line[lo : lo + EVIDENCE_CHARS].strip()


# --------------------------------------------------------------------------- helpers


def _int(value: Any) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _num(x: float) -> str:
    return f"{x:g}"


def _alternatives(items: Sequence[Any]) -> str:
    """[2] -> "2"; [2, 4] -> "2 or 4"; [1, 2, 4] -> "1, 2 or 4" (the planner's wording)."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _pp(ctx: Mapping[str, Any]) -> int:
    return _int(ctx.get("pipeline_parallel_size")) or 1


def _tp_candidates(ctx: Mapping[str, Any], heads: Optional[int] = None) -> List[int]:
    """The TP sizes the model allows: the plan's list, else the divisors of the head count."""
    if ctx.get("valid_tp_sizes"):
        return sorted({int(s) for s in ctx["valid_tp_sizes"]})
    heads = heads or _int(ctx.get("num_attention_heads"))
    if heads:
        return [d for d in range(1, heads + 1) if heads % d == 0]
    return [1, 2, 4, 8]


def _tp_override(sizes: Sequence[int]) -> Optional[str]:
    # TP=1 is offered only when nothing else fits: the user asked for tensor parallelism.
    sizes = [s for s in sizes if s != 1] or list(sizes)
    return "serve.tensor_parallel_size=" + _alternatives(sizes) if sizes else None


def _larger_tp(ctx: Mapping[str, Any]) -> Optional[str]:
    tp, gpus = _int(ctx.get("tensor_parallel_size")), _int(ctx.get("gpu_count"))
    if tp is None or gpus is None:
        return None
    return _tp_override([s for s in _tp_candidates(ctx) if tp < s <= gpus // _pp(ctx)])


def _higher_utilization(ctx: Mapping[str, Any]) -> Optional[str]:
    util = _float(ctx.get("gpu_memory_utilization")) or DEFAULT_GPU_MEMORY_UTILIZATION
    # Above 0.95 the CUDA context and NCCL buffers no longer fit beside vLLM's share.
    return f"serve.gpu_memory_utilization={_num(round(util + 0.05, 2))}" if util < 0.95 else None


def _more_kv_memory(ctx: Mapping[str, Any]) -> str:
    if ctx.get("device") == "cpu":
        # The runner sets VLLM_CPU_KVCACHE_SPACE from this key; the schema's default is 1 GiB.
        space = _int(ctx.get("cpu_kvcache_space_gib")) or 1
        return f"hw.cpu_kvcache_space_gib={space * 2}"
    options = [o for o in (_higher_utilization(ctx), _larger_tp(ctx)) if o]
    return " or ".join(options) or "a larger serve.tensor_parallel_size (more GPUs share the weights)"


# --------------------------------------------------------------------------- causes


def _mnnvl(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    return (
        "FlashInfer's mnnvl all-reduce (picked by the all-reduce+RMSNorm fusion) crashed with an "
        "illegal memory access: it needs NVLink multicast, which this machine lacks",
        f"{FUSION_OFF} (NVLink multicast unavailable here; hw.nvlink_multicast=false does the same)",
    )


def _fork(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    return (
        "a worker was forked after CUDA was initialised in its parent, and CUDA cannot start again in a forked child",
        "+hw.env.VLLM_WORKER_MULTIPROC_METHOD=spawn",
    )


def _heads(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    heads, tp = int(m[1]), int(m[2])
    gpus = _int(ctx.get("gpu_count"))
    # Without the GPU count, offer only sizes below the one asked for: those surely fit.
    limit = gpus // _pp(ctx) if gpus else tp
    sizes = [s for s in _tp_candidates(ctx, heads) if s <= limit and s != tp]
    return (
        f"the model's {heads} attention heads cannot be split evenly over TP={tp} "
        "(tensor parallelism gives every rank the same number of heads)",
        _tp_override(sizes) or "serve.tensor_parallel_size=1",
    )


def _kv_heads(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    kv = _int(ctx.get("num_key_value_heads"))
    tp = _int(ctx.get("tensor_parallel_size"))
    gpus = _int(ctx.get("gpu_count"))
    limit = gpus // _pp(ctx) if gpus else (tp or 8)
    sizes = [s for s in _tp_candidates(ctx) if s <= limit and s != tp]
    what = f"the model's {kv} KV heads" if kv else "the model's KV heads"
    return (
        f"{what} can be neither split evenly over TP={tp or '?'} ranks nor replicated evenly "
        "(vLLM asserts this while it builds the model, on every rank)",
        _tp_override(sizes) or "serve.tensor_parallel_size=1",
    )


def _too_few_gpus(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    numbers = [int(g) for g in m.groups() if g and g.isdigit()]
    tp = _int(ctx.get("tensor_parallel_size"))
    want = numbers[0] if numbers else (tp * _pp(ctx) if tp else None)
    have = numbers[1] if len(numbers) > 1 else _int(ctx.get("gpu_count"))
    if have is None:
        # The runner's default TP is every visible GPU, reduced to what the model allows.
        return (
            "more GPUs were asked for than this machine shows",
            "serve.tensor_parallel_size=null (the runner then uses every visible GPU)",
        )
    sizes = [s for s in _tp_candidates(ctx) if s * _pp(ctx) <= have and s != tp]
    asked = f"{want} GPUs were asked for" if want else "more GPUs were asked for"
    return (
        f"{asked} but only {have} are visible (CUDA_VISIBLE_DEVICES, or a container's --gpus)",
        _tp_override(sizes) or "serve.tensor_parallel_size=1",
    )


def _ray(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    if "unique IP" in m[0]:
        what = "Ray counts fewer IP addresses than nodes (VLLM_HOST_IP the same on several nodes?)"
    elif "driver node" in m[0]:
        what = "Ray put no worker on the node vLLM itself runs on"
    else:
        what = "Ray could not reserve the GPUs for the workers in time"
    return (
        f"Ray could not place the workers: {what}",
        "serve.distributed_executor_backend=mp on one node; across nodes set "
        "+hw.env.VLLM_HOST_IP=<this node's IP> on every node and check `ray status`",
    )


def _model_missing(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    return (
        "vLLM found no model config (config.json) at the model path or hub id",
        "model.path=<a directory holding config.json, or a hub id> (mode=plan checks it without starting vLLM)",
    )


def _model_unsupported(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    return (
        "this vLLM (or transformers) does not know the model's architecture",
        "pick a model from https://docs.vllm.ai/en/latest/models/supported_models.html via model.path=..., "
        "or serve.trust_remote_code=true if the model ships its own code",
    )


def _quant(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    tp = _int(ctx.get("tensor_parallel_size"))
    smaller = _tp_override([s for s in _tp_candidates(ctx) if tp and s < tp]) if tp else None
    fix = smaller or "a smaller serve.tensor_parallel_size"
    if "min_thread" in m[0]:
        fix += " (or serve.quantization=gptq, which skips the Marlin kernel)"
    return (
        "each rank's slice of a quantized weight is not a whole number of the kernel's blocks: "
        "the TP size splits the layer too finely",
        fix,
    )


def _port(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    port = _int(m.group("port"))
    if port is None:
        port = _int(ctx.get("port"))
    if port is None:
        # vLLM's own bind error names no port; its "non-default args" line does when not 8000.
        args = re.findall(r"non-default args: .*'port': (\d+)", before)
        port = int(args[-1]) if args else DEFAULT_PORT
    return f"port {port} is already taken by another process", f"serve.port={port + 1}"


def _free_memory(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    device, free, total, util, asked = m[1] or "the GPU", float(m[2]), float(m[3]), m[4], m[5]
    # What is free now, less 1 point for the CUDA context of the workers still to start.
    fits = max(0.05, math.floor(free / total * 100 - 1) / 100)
    return (
        f"only {free:g} of {total:g} GiB were free on {device} at start-up, less than the {asked} GiB "
        f"gpu_memory_utilization={util} reserves: another process holds GPU memory",
        f"serve.gpu_memory_utilization={_num(fits)} (or free the GPU: nvidia-smi lists what holds it)",
    )


def _kv_none(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    return (
        "nothing was left for the KV cache once weights and activations took their share",
        _more_kv_memory(ctx),
    )


def _kv_capacity(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    asked = m.group("asked") or m.group("asked0")
    fits = m.group("fits") or m.group("estimate")
    if fits:
        return (
            f"one sequence of max_model_len={asked} does not fit the KV cache; {fits} tokens do",
            f"serve.max_model_len={fits}",
        )
    return (
        f"not even a short sequence fits the KV cache (max_model_len={asked} asked)",
        _more_kv_memory(ctx),
    )


def _shm(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    return (
        "/dev/shm is too small for NCCL's shared-memory transport (a container's default is 64 MiB)",
        "give the container a larger /dev/shm (docker run --shm-size=16g, or --ipc=host), "
        "or +hw.env.NCCL_SHM_DISABLE=1",
    )


def _oom(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    loaded = "Model loading took" in before  # vLLM logs it once a rank's weights are in
    mml = _int(ctx.get("max_model_len"))
    shorter = f"serve.max_model_len={mml // 2}" if mml else "a lower serve.max_model_len"
    larger = _larger_tp(ctx)
    if "KV cache size" in before:
        # The KV cache was already sized, so what failed is memory outside vLLM's request:
        # CUDA graphs (0.26 does not count them) and a sampling step's float32 logits.
        util = _float(ctx.get("gpu_memory_utilization")) or DEFAULT_GPU_MEMORY_UTILIZATION
        summary = (
            "CUDA ran out of memory after the KV cache was allocated: CUDA graphs and sampling "
            "need memory outside gpu_memory_utilization's share"
        )
        options = [
            f"serve.gpu_memory_utilization={util - 0.03:.2f}",
            "serve.enforce_eager=true (no CUDA graphs, slower decode)",
        ]
    elif loaded:
        summary = "CUDA ran out of memory after the weights loaded (profiling, KV cache or CUDA graphs)"
        options = [shorter, larger]
    else:
        summary = "CUDA ran out of memory loading the weights: they do not fit on this many GPUs"
        options = [larger, shorter]
    return summary, " or ".join(o for o in options if o)


def _illegal_access(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    fix = "serve.enforce_eager=true (rules out compiled fusions and CUDA graphs), then +hw.env.CUDA_LAUNCH_BLOCKING=1 to name the kernel"
    if "'fuse_allreduce_rms': True" in before:  # vLLM's config dump at engine start
        fix = f"{FUSION_OFF} (the all-reduce+RMSNorm fusion was on), or " + fix
    return "a CUDA kernel made an illegal memory access", fix


def _nccl(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    what = "a collective never completed (NCCL watchdog timeout)" if "Watchdog" in m[0] else "NCCL failed"
    if ctx.get("interconnect") == "nvlink":
        why = "on NVLink, check that every rank started and that nvidia-fabricmanager runs"
    else:
        why = "GPU peer-to-peer over PCIe is usually blocked (ACS/IOMMU)"
    return (
        f"{what}: the ranks cannot exchange data; {why}",
        "+hw.env.NCCL_P2P_DISABLE=1, and check ACS/IOMMU (PCIe ACS off, IOMMU in passthrough: iommu=pt) "
        "to get P2P back; +hw.env.NCCL_DEBUG=INFO shows where it stops",
    )


def _device_order(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    gpus = m[1].strip(" .") if m[1] else "different models"
    return (
        f"the machine mixes GPU models ({gpus}) and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA's "
        "device indices then differ from nvidia-smi's, so vLLM may have used other GPUs than meant",
        "+hw.env.CUDA_DEVICE_ORDER=PCI_BUS_ID",
    )


def _custom_allreduce(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    summary = f"note (not fatal): vLLM turned its custom all-reduce off {m[1]}; NCCL all-reduce is used instead"
    if "P2P" in m[0]:
        summary += "; a failed P2P test also points at ACS/IOMMU blocking GPU peer-to-peer"
    return summary, "+serve.extra_args.disable_custom_all_reduce=true (says so up front and silences the warning)"


def _compile_cache(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    return (
        "a file in vLLM's torch.compile cache is truncated or unreadable (a vLLM killed while it "
        "compiled leaves one behind)",
        f"rm -rf {m['root']} (vLLM rebuilds it; the next start compiles again)",
    )


def _worker_died(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    return (
        "a tensor-parallel worker process died while vLLM started, and no error of its own explains why",
        "look above this line in vllm.log for the worker's traceback; with none, the OS killed it "
        "(out of host memory: dmesg | grep -i oom), so lower serve.max_num_seqs or hw.cpu_kvcache_space_gib",
    )


def _r(pattern: str, flags: int = 0) -> Pattern[str]:
    return re.compile(pattern, flags)


_MNNVL_SELECTED = _r(
    # vllm/distributed/device_communicators/flashinfer_all_reduce.py: info in 0.26, debug in
    # 0.32, which logs the workspace line at info instead.
    r"(?:Auto-selected|Using) flashinfer allreduce backend: mnnvl"
    r"|Initialized FlashInfer Allreduce norm fusion workspace with backend=mnnvl"
)
# torch's CUDA error text (torch.AcceleratorError / RuntimeError).
_ILLEGAL_ACCESS = _r(r"CUDA error: an illegal memory access was encountered|cudaErrorIllegalAddress")

RULES: Tuple[_Rule, ...] = (
    _Rule("mnnvl_allreduce_crash", _ILLEGAL_ACCESS, _mnnvl, after=_MNNVL_SELECTED),
    # torch/cuda/__init__.py; vLLM's registry.py names it as the reason for spawn.
    _Rule("cuda_fork_reinit", _r(r"Cannot re-initialize CUDA in forked subprocess"), _fork),
    # vllm/config/model.py, ModelConfig.verify_with_parallel_config (same text in 0.26).
    # vllm/model_executor/models/llama.py (and the other decoders), LlamaAttention.__init__:
    # "assert self.total_num_kv_heads % tp_size == 0" / "assert tp_size % self.total_num_kv_heads == 0".
    # Seen on H100s: Phi-3-medium (10 KV heads) at TP=4 (docs/validation/2026-11-27-vllm-verdicts).
    # vllm/v1/executor/ray_utils.py, initialize_ray_cluster (seen with vllm-cpu 0.32.0).
    _Rule(
        "ray_unsupported_platform",
        _r(r"current platform (\w+) does not support ray"),
        lambda m, ctx, before: (
            f"this vLLM build ({m[1]}) has no Ray executor",
            "hw.nodes=1 without hw.ray_address (the default multiprocessing executor), or a GPU build of vLLM on the nodes",
        ),
    ),
    _Rule(
        "kv_heads_not_divisible",
        _r(r"assert (self\.total_num_kv_heads % tp_size|tp_size % self\.total_num_kv_heads) == 0"),
        _kv_heads,
    ),
    _Rule(
        "heads_not_divisible",
        _r(r"Total number of attention heads \((\d+)\) must be divisible by tensor parallel size \((\d+)\)"),
        _heads,
    ),
    # vllm/config/parallel.py, ParallelConfig (default mp backend, TP x PP > visible GPUs).
    _Rule(
        "tp_exceeds_gpus",
        _r(r"World size \((\d+)\) is larger than the number of available GPUs \((\d+)\)"),
        _too_few_gpus,
    ),
    # torch: a rank asked for a GPU index CUDA_VISIBLE_DEVICES does not have.
    _Rule("tp_exceeds_gpus", _r(r"CUDA error: invalid device ordinal"), _too_few_gpus),
    # vllm/v1/executor/ray_utils.py, _wait_until_pg_ready / initialize_ray_cluster.
    _Rule("tp_exceeds_gpus", _r(r"Cannot provide a placement group requiring (\d+) GPUs"), _too_few_gpus),
    _Rule(
        "tp_exceeds_gpus",
        _r(r"The number of required GPUs exceeds the total number of available GPUs in the placement group"),
        _too_few_gpus,
    ),
    # vllm/v1/executor/ray_executor.py (unique IP); vllm/v1/executor/ray_utils.py (the rest).
    _Rule(
        "ray_placement",
        _r(
            r"Every node should have a unique IP address.*"
            r"|driver node id \S+ is not included in a placement group"
            r"|Cannot provide a placement group of placement_group_specs="
        ),
        _ray,
    ),
    # vllm/v1/executor/ray_utils.py: a warning before Ray waits, so below the unique-IP error
    # a multi-node run (which exceeds one node's GPUs on purpose) would show.
    _Rule("tp_exceeds_gpus", _r(r"Tensor parallel size \((\d+)\) exceeds available GPUs \((\d+)\)"), _too_few_gpus),
    _Rule(
        "model_not_found",
        _r(
            r"does not appear to have a file named config\.json"  # transformers/utils/hub.py
            r"|Invalid repository ID or local directory specified"  # vllm/transformers_utils/config.py
            r"|is not a local folder and is not a valid model identifier"  # transformers/utils/hub.py
            r"|Could not detect config format for no config file found"  # vllm/transformers_utils/config.py
        ),
        _model_missing,
    ),
    _Rule(
        "model_unsupported",
        _r(
            r"Model architectures? \[[^\]]*\] (?:are|is) not supported"  # vllm/model_executor/models/registry.py
            r"|Model architecture \S+ was supported in vLLM until"  # same file
            r"|Unrecognized model in \S+"  # transformers/models/auto/configuration_auto.py
        ),
        _model_unsupported,
    ),
    _Rule(
        "quant_shape_misaligned",
        _r(
            # model_executor/layers/quantization/auto_awq.py, fp_quant.py, quark/schemes/quark_w4a16_int4.py
            r"The (?:input|output) size is not aligned with the quantized weight shape"
            r"|is not divisible by\s+min_thread_[nk]"  # quantization/utils/marlin_utils.py
            r"|is not divisible by weight quantization block_[nk]"  # quantization/utils/fp8_utils.py
            r"|is not divisible by group_size="  # vllm/distributed/utils.py
        ),
        _quant,
    ),
    # uvicorn's bind error (vLLM <= 0.6) names the port; 0.32's socket.bind in
    # vllm/entrypoints/launchers/launcher.py raises Python's bare OSError. torch's TCPStore
    # EADDRINUSE is vLLM's internal port, which it retries itself (config/parallel.py).
    _Rule(
        "port_in_use",
        _r(
            r"error while attempting to bind on address \(.*?(?P<port>\d+)\): address already in use"
            r"|\[Errno (?:98|48)\] Address already in use",
            re.IGNORECASE,
        ),
        _port,
    ),
    # vllm/v1/worker/utils.py (0.32); older releases print no device name.
    _Rule(
        "free_memory_below_utilization",
        _r(
            r"Free memory on device\s*(\S*?)\s*\(([\d.]+)/([\d.]+) GiB\) on startup is less than desired "
            r"GPU memory utilization \(([\d.]+), ([\d.]+) GiB\)"
        ),
        _free_memory,
    ),
    # vllm/v1/core/kv_cache_utils.py, _check_enough_kv_cache_memory.
    _Rule("kv_cache_no_memory", _r(r"No available memory for the cache blocks"), _kv_none),
    _Rule(
        "max_len_exceeds_kv",
        _r(
            # V1 (vllm/v1/core/kv_cache_utils.py; older releases say "models's"); the estimate is
            # left out when not even one block fits.
            r"To serve at least one request with the models?'s? max seq len \((?P<asked>\d+)\)"
            r"(?:.*?the estimated maximum model length is (?P<estimate>\d+))?"
            # V0 (vllm/worker/worker.py, raise_if_cache_size_invalid, vLLM <= 0.10).
            r"|The model's max seq len \((?P<asked0>\d+)\) is larger than the maximum number of "
            r"tokens that can be stored in KV cache \((?P<fits>\d+)\)"
        ),
        _kv_capacity,
    ),
    _Rule(
        "shm_too_small",
        _r(
            # NCCL misc/shmutils.cc (2.19+) and include/shm.h (older).
            r"Error while creating shared memory segment"
            r"|posix_fallocate failed.*No space left on device"
            r"|No space left on device.*(?:/dev/shm|shm|psm_)|(?:/dev/shm|psm_)\S*.*No space left on device"
        ),
        _shm,
    ),
    # torch's caching allocator; the second form is the CUDA runtime's (NCCL, cuBLAS).
    _Rule("cuda_oom", _r(r"CUDA out of memory|CUDA error: out of memory"), _oom),
    _Rule("cuda_illegal_memory_access", _ILLEGAL_ACCESS, _illegal_access),
    _Rule(
        "nccl_failure",
        _r(
            r"Watchdog caught collective operation timeout"  # torch ProcessGroupNCCL.cpp
            # torch's DistBackendError and vLLM's pynccl_wrapper.py ("NCCL error: ...").
            r"|NCCL error.*?(?:unhandled system error|unhandled cuda error|internal error|remote process exited)"
            r"|ncclSystemError|ncclUnhandledCudaError|ncclInternalError"
        ),
        _nccl,
    ),
    # torch._inductor loading a cached artifact that a killed compile left half-written
    # (seen on vLLM-CPU 0.32 after a start-up was SIGKILLed: "… .main.so: file too short").
    _Rule(
        "compile_cache_corrupt",
        _r(
            r"(?:ImportError|EOFError|OSError|RuntimeError)[^\n]*?(?P<root>/\S*?/torch_compile_cache)/\S*"
            r"[^\n]*?(?:file too short|invalid ELF header|Ran out of input|unexpected end|truncated)"
        ),
        _compile_cache,
    ),
    # vllm/v1/executor/multiproc_executor.py: a rank process vanished (killed, OOM-killed). Below
    # every rule that names what the rank itself printed.
    _Rule(
        "worker_died",
        _r(
            r"WorkerProc initialization failed due to an exception in a background process"
            r"|Worker proc \S+ died unexpectedly|A worker process died"
        ),
        _worker_died,
    ),
    # vllm/platforms/cuda.py, log_warnings: a warning, so below every error.
    _Rule(
        "cuda_device_order",
        _r(r"Detected different devices in the system:?\s*(.*?)(?:\. Please|$)"),
        _device_order,
    ),
    # vllm/distributed/device_communicators/custom_all_reduce.py: warnings, never fatal.
    _Rule(
        "custom_allreduce_disabled", _r(r"Custom allreduce is disabled ((?:because|due to) [^.]*)"), _custom_allreduce
    ),
)


__all__ = ["Diagnosis", "diagnose", "NOTE_CAUSES", "RULES"]
