"""Why a vLLM start failed, read from its log: the root cause in one line, and the override
that fixes it.

A pure function of the log text and, optionally, what the plan knew (the TP size, the
devices, the model's valid TP sizes), so the fix can be concrete ("serve.tensor_parallel_size=2
or 4") where vLLM's own advice is generic ("reduce tensor_parallel_size"). Every pattern is
the wording vLLM, torch, NCCL or transformers prints; the comment beside it names the file
(in vLLM 0.32 unless it says otherwise). Older wordings seen in vLLM's history and its issue
threads (0.26's info-level mnnvl line, V0's KV-capacity error) are matched too, and marked.
tests/fixtures/failure_logs holds real logs from public issue threads, each with the cause its
thread established; tests/diagnose/test_corpus.py holds the rules to them (none may be wrong:
no diagnosis is better than a wrong one, so a rule that cannot tell, like a bare "Address
already in use", has a guard that reads the lines around it).

Rules are tried in RULES order, most specific first, and the first that matches wins: when one
rank hits an illegal memory access, the others time out in NCCL and the API server reports
EngineDeadError, and only the first of these is worth acting on. The fallout lines themselves
("Engine core initialization failed", "EngineDeadError") match no rule on purpose.

``context`` may carry: tensor_parallel_size, pipeline_parallel_size, device,
interconnect, gpu_count, num_attention_heads, valid_tp_sizes, max_model_len,
gpu_memory_utilization, max_num_seqs, and also port and cpu_kvcache_space_gib.
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
# Shown while vLLM still runs and waits: a launcher that polls the log can stop on these.
HANG_CAUSES = frozenset({"ray_placement"})

FUSION_OFF = "'+serve.extra_args.compilation_config={pass_config: {fuse_allreduce_rms: false}}'"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its worker prefixes


@dataclass(frozen=True)
class Diagnosis:
    cause: str  # short stable id, e.g. "heads_not_divisible"
    summary: str  # one line, human: what went wrong
    fix: str  # a Hydra override or concrete action the user can paste
    evidence: str  # the log line that matched (at most EVIDENCE_CHARS)


Explain = Callable[[re.Match, Mapping[str, Any], str], Tuple[str, str]]


# (the log's lines, the index of the matching line) -> whether that match counts
Guard = Callable[[Sequence[str], int], bool]


@dataclass(frozen=True)
class _Rule:
    cause: str
    pattern: Pattern[str]
    explain: Explain  # (match, context, log before the matched line) -> (summary, fix)
    after: Optional[Pattern[str]] = None  # counts only on a line after one matching this
    min_count: int = 1  # counts from the n-th matching line on (a wait repeated is a hang)
    guard: Optional[Guard] = None


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
    start, seen = 0, 0
    if rule.after is not None:
        start = next((i + 1 for i, line in enumerate(lines) if rule.after.search(line)), len(lines))
    for i in range(start, len(lines)):
        match = rule.pattern.search(lines[i])
        if match and (rule.guard is None or rule.guard(lines, i)):
            seen += 1
            if seen >= rule.min_count:
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
    elif "Waiting for creating a placement group" in m[0]:
        what = (
            "the placement group never formed: Ray keeps waiting for GPUs it does not have "
            "(a node that never joined the cluster, or fewer GPUs than TP x PP)"
        )
    else:
        what = "Ray could not reserve the GPUs for the workers in time"
    return (
        f"Ray could not place the workers: {what}",
        "serve.distributed_executor_backend=mp on one node; across nodes set "
        "+hw.env.VLLM_HOST_IP=<this node's IP> on every node and check `ray status`",
    )


def _model_missing(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    return (
        "vLLM found no model config (config.json) at the model path or hub id (for a hub id: no "
        "network to the hub, a wrong id, or a gated repository without a token)",
        "model.path=<a directory holding config.json, or a hub id> (mode=plan checks it without starting vLLM); "
        "for a gated hub id `export HF_TOKEN=<a read token>` first",
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
    marlin = "thread_" in m[0]  # marlin_utils.py and the Marlin 2:4 kernel name their tiles
    # vLLM's own advice names gptq; an AWQ checkpoint's non-Marlin kernel is awq.
    plain = "awq" if re.search(r"awq", before + m.string, re.IGNORECASE) else "gptq"
    other = f"serve.quantization={plain}, the kernel without Marlin's tile size"
    if smaller:
        fix = f"{smaller} (or {other})" if marlin else smaller
    elif tp == 1 and marlin:
        fix = other  # one GPU: no smaller split exists, only the other kernel
    else:
        fix = "a smaller serve.tensor_parallel_size" + (f" (or {other})" if marlin else "")
    return (
        "each rank's slice of a quantized weight is not a whole number of the kernel's blocks"
        + (": the TP size splits the layer too finely" if tp != 1 else ""),
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
    if "bytes available" in m[0]:
        mib = int(m["shm"]) // 2**20
        what = f"/dev/shm has only {mib} MiB (Ray's warning) and nothing else in the log explains the failure"
    elif "Bus error" in m[0] or "SIGBUS" in m[0]:
        what = "a process died of SIGBUS (Bus error), which in a container is /dev/shm running full"
    else:
        what = "/dev/shm is too small for NCCL's shared-memory transport"
    return (
        f"{what}; the ranks exchange data through /dev/shm (a container's default is 64 MiB)",
        "give the container a larger /dev/shm (docker run --shm-size=16g, or --ipc=host), "
        "or +hw.env.NCCL_SHM_DISABLE=1",
    )


# Frames that name the start-up phase an out-of-memory happened in, most specific first:
# profiling and CUDA-graph capture both run _dummy_run, and sampling runs inside both.
_OOM_PHASES: Tuple[Tuple[str, Pattern[str]], ...] = (
    ("sampling", re.compile(r"_dummy_sampler_run|warming up sampler|sample_tokens|/sample/|sampler\.py")),
    ("graphs", re.compile(r"capture_model|graph_capture|capture_graphs|_capture_cudagraphs|cudagraph_capture")),
    ("profiling", re.compile(r"profile_run|determine_available_memory|determine_num_available_blocks|_dummy_run")),
    ("weights", re.compile(r"load_model|load_weights|weight_loader|model_loader")),
    ("serving", re.compile(r"run_engine_loop|engine_step|step_with_batch_queue")),
)
OOM_TRACEBACK_LINES = 60  # how far above the error its traceback's frames are looked for


def _oom_phase(m: re.Match, before: str) -> Optional[str]:
    """The phase the traceback (or vLLM's own message) names; None when it names none."""
    frames = "\n".join(before.splitlines()[-OOM_TRACEBACK_LINES:]) + "\n" + m.string[: m.start()]
    if "warming up sampler" in m.string:
        return "sampling"
    return next((phase for phase, pattern in _OOM_PHASES if pattern.search(frames)), None)


_LOADING = re.compile(r"Loading model|Starting to load model|Loading weights|Loading safetensors")


def _oom_stage(before: str) -> str:
    """Without frames: the last stage vLLM logged before the error."""
    if "KV cache size" in before:
        return "after_kv"
    if "Model loading took" in before:
        return "after_weights"
    return "weights" if _LOADING.search(before) else "unknown"


def _oom(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    phase = _oom_phase(m, before) or _oom_stage(before)
    util = _float(ctx.get("gpu_memory_utilization")) or DEFAULT_GPU_MEMORY_UTILIZATION
    lower_util = f"serve.gpu_memory_utilization={util - 0.03:.2f}"
    mml = _int(ctx.get("max_model_len"))
    shorter = f"serve.max_model_len={mml // 2}" if mml else "a lower serve.max_model_len"
    seqs = _int(ctx.get("max_num_seqs")) or 256  # vLLM's default on GPUs
    kv = " after the KV cache was allocated" if "KV cache size" in before else ""
    summary, options = {
        "sampling": (
            f"CUDA ran out of memory in a sampling step{kv}: the sampler's logits for every running "
            "sequence live outside gpu_memory_utilization's share",
            [lower_util, f"serve.max_num_seqs={max(1, seqs // 2)}"],
        ),
        "graphs": (
            f"CUDA ran out of memory capturing CUDA graphs{kv}: graphs need memory outside "
            "gpu_memory_utilization's share",
            ["serve.enforce_eager=true (no CUDA graphs, slower decode)", lower_util],
        ),
        "after_kv": (
            "CUDA ran out of memory after the KV cache was allocated: CUDA graphs and sampling "
            "need memory outside gpu_memory_utilization's share",
            [lower_util, "serve.enforce_eager=true (no CUDA graphs, slower decode)"],
        ),
        "profiling": (
            "CUDA ran out of memory in vLLM's profiling run (one batch of max_num_batched_tokens at full length)",
            [shorter, _larger_tp(ctx)],
        ),
        "after_weights": (
            "CUDA ran out of memory after the weights loaded (profiling, KV cache or CUDA graphs)",
            [shorter, _larger_tp(ctx)],
        ),
        "weights": (
            "CUDA ran out of memory loading the weights: they do not fit on this many GPUs",
            [_larger_tp(ctx), shorter],
        ),
        "serving": (
            "CUDA ran out of memory serving requests, after start-up: a batch needed more than "
            "gpu_memory_utilization's share left",
            [lower_util, f"serve.max_num_seqs={max(1, seqs // 2)}"],
        ),
        "unknown": (
            "CUDA ran out of memory (neither a traceback nor vLLM's stage lines place it in start-up)",
            [_larger_tp(ctx), shorter, lower_util],
        ),
    }[phase]
    return summary, " or ".join(o for o in options if o)


def _illegal_access(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    fix = (
        "serve.enforce_eager=true (rules out compiled fusions and CUDA graphs), "
        "then +hw.env.CUDA_LAUNCH_BLOCKING=1 to name the kernel"
    )
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


def _split(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    # vllm/distributed/utils.py, divide(): every tensor TP shards (vision-encoder heads,
    # vocabulary, MoE intermediate size) must split evenly, not only the attention heads.
    whole = _int(m.group("whole"))
    tp = _int(m.group("parts")) or _int(ctx.get("tensor_parallel_size"))
    gpus = _int(ctx.get("gpu_count"))
    limit = gpus // _pp(ctx) if gpus else (tp or 8)
    sizes = [s for s in _tp_candidates(ctx) if s <= limit and s != tp and (whole is None or whole % s == 0)]
    what = f"a dimension of {whole}" if whole else "a layer's dimension"
    return (
        f"{what} cannot be split evenly over TP={tp or '?'} (vLLM splits every sharded tensor, "
        "vision-encoder heads and vocabulary included, the same on every rank)",
        _tp_override(sizes) or "serve.tensor_parallel_size=1",
    )


def _nvls(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    return (
        "NCCL's NVLink SHARP (NVLS) multicast transport failed to set up: the GPUs or the "
        "fabric manager do not support multicast here",
        "+hw.env.NCCL_NVLS_ENABLE=0 (NCCL then uses its ring/tree algorithms over NVLink)",
    )


def _arch(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    return (
        "the installed vLLM/PyTorch build has no CUDA kernels for this GPU's architecture "
        "(a GPU newer than the build, e.g. Blackwell with a CUDA 12.4 wheel)",
        "install a vLLM wheel built for this GPU: `python -c 'import torch; "
        "print(torch.cuda.get_device_capability(), torch.cuda.get_arch_list())'` shows the GPU's "
        "sm_XY and the archs the build has; `pip install -U vllm` (wheels for CUDA 12.8+ cover Blackwell)",
    )


def _quant_gpu(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    method = m.groupdict().get("method") or "its compressed-tensors scheme"
    need, have = int(m["need"]) / 10, int(m["have"]) / 10
    fix = f"model.path=<a checkpoint not quantized with {method} (bf16, or a scheme this GPU runs)>"
    if method == "fp8":
        fix += ", or `pip install -U vllm` (newer releases run fp8 weights on capability 8.x through Marlin)"
    return (
        f"the model is quantized with {method}, which this vLLM runs only on GPUs of compute "
        f"capability {need:g} or more; this one has {have:g}",
        fix,
    )


def _bf16(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    gpu = f" ({m['gpu'].strip()}, compute capability {m['cc']})" if m["gpu"] else ""
    return (
        f"the model's dtype is bfloat16, which GPUs before Ampere{gpu} cannot compute",
        "serve.dtype=float16",
    )


_HUB_ID = re.compile(r"huggingface\.co/(?:api/models/)?([\w.-]+/[\w.-]+?)(?:/resolve|/tree|[.,]?\s|[.,]?$)")


def _gated(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    found = _HUB_ID.findall(m.string) or _HUB_ID.findall(before)
    repo = found[-1] if found else "the model"
    page = f"https://huggingface.co/{repo}" if found else "the model's Hugging Face page"
    return (
        f"{repo} is a gated repository: downloading it needs an accepted licence and a token",
        f"accept the licence on {page}, then `export HF_TOKEN=<a read token of that account>` "
        "(or `huggingface-cli login`) before the run; or model.path=<a local copy>",
    )


def _remote_code(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    return (
        "the model ships its own Python code (config or modelling), which vLLM runs only when told to",
        "serve.trust_remote_code=true (after reading the code in the model's repository)",
    )


# Import names whose pip name differs by more than '_' -> '-'.
_PIP_NAMES = {"cv2": "opencv-python-headless", "PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml"}


def _module(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    name = m["module"]
    top = name.split(".")[0]
    if top == "vllm":
        return (
            f"vLLM's own module {name} is missing: the install lacks its compiled parts (a source "
            "build without kernels, or vLLM started from inside a vLLM checkout)",
            "`pip install --force-reinstall vllm==<the version>` in the Python that runs vLLM, "
            "and start it from outside the source tree",
        )
    pip = _PIP_NAMES.get(top, top.replace("_", "-"))
    importer, model_code = _importers(before)
    if importer:
        via = f" through vLLM's {model_code}" if model_code else ""
        who = f"{importer} imports it{via}"
    else:
        who = "an optional package the model's processor, quantization or attention backend imports"
    if top in _TORCH_PAIRED:
        fix = torch_paired_fix(pip)
    else:
        fix = f"`pip install {pip}` in the Python that runs vLLM (the version vLLM's requirements name)"
    return f"the Python module {name} is missing from vLLM's environment ({who})", fix


# Packages whose compiled ops are built for one torch release.
_TORCH_PAIRED = {"torchvision", "torchaudio"}


def torch_paired_fix(pip: str) -> str:
    """torchvision / torchaudio carry compiled ops built against one torch release: the build pip
    picks by name alone is a CUDA one, which a CPU torch cannot load ("operator
    torchvision::nms does not exist")."""
    return (
        f"`pip install {pip}==<the release paired with vLLM's torch>` in the Python that runs vLLM "
        "(a CPU torch needs the CPU build: `--index-url https://download.pytorch.org/whl/cpu`), "
        "or serve a text-only model"
    )


# A traceback frame in an installed package: (its path inside site-packages, the line).
_FRAME = re.compile(r'File "[^"]*?/(?:site|dist)-packages/(?P<path>[^"]+)", line (?P<line>\d+)')


def _importers(before: str) -> Tuple[Optional[str], Optional[str]]:
    """From the traceback that ends in the ModuleNotFoundError: the installed file whose import
    failed ("transformers/models/qwen2_vl/image_processing_qwen2_vl.py:26") and the vLLM model
    module that brought it in ("qwen2_vl.py"), each None when the log has no such frame."""
    frames = list(_FRAME.finditer("\n".join(before.splitlines()[-80:])))
    if not frames:
        return None, None
    last = frames[-1]
    model = next((f["path"] for f in reversed(frames) if f["path"].startswith("vllm/model_executor/models/")), None)
    if model == last["path"]:  # vLLM's model module itself did the import
        model = None
    return f"{last['path']}:{last['line']}", model and model.rsplit("/", 1)[-1]


def _profiling(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    return (
        "another process changed its GPU memory while vLLM measured its own use at start-up, so "
        "vLLM's memory profile is void",
        "give vLLM GPUs nothing else uses: `nvidia-smi --query-compute-apps=pid,process_name,used_memory "
        "--format=csv` lists the other processes; stop them, or run with CUDA_VISIBLE_DEVICES=<idle GPUs>",
    )


def _model_len(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    asked = int(m["asked"])
    derived = [int(n) for n in re.findall(r"=\s*(\d+)", m["derived"])]
    limit = min(derived) if derived else None
    fix = f"serve.max_model_len={limit}" if limit else "a lower serve.max_model_len"
    return (
        f"max_model_len={asked} is above the context length the model's config.json declares"
        + (f" ({limit})" if limit else ""),
        fix + " (or +hw.env.VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 when the model's RoPE scaling really allows more)",
    )


def _internal_port(m: re.Match, ctx: Mapping[str, Any], before: str) -> Tuple[str, str]:
    if "ZMQError" in m[0] and "ApiServer_" in before + m.string:
        # Several API server processes (--api-server-count, data-parallel LB) pick ZMQ ports in parallel.
        return (
            "two of vLLM's API server processes picked the same internal ZMQ port at start-up; "
            "the HTTP port is not the one",
            "+serve.extra_args.api_server_count=1 (one API server process picks the ports), "
            "or +hw.env.VLLM_PORT=<a base port no other engine on this node uses, e.g. 31000>",
        )
    return (
        "a port vLLM picked for its own ranks (torch's TCPStore / its internal sockets) was taken "
        "before vLLM bound it, usually by another vLLM engine starting on the same node; the API "
        "server's port is not the one",
        "+hw.env.VLLM_PORT=<a base port no other engine on this node uses, e.g. 31000> "
        "(vLLM then takes its internal ports from there), or start the engines one after another",
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

# The API server's own bind (uvicorn names the address; 0.32's launcher.py raises a bare
# OSError) as opposed to a port vLLM picks for itself (get_open_port, torch's TCPStore, zmq).
_API_BIND = re.compile(r"create_server_socket|sock\.bind\(addr\)|uvicorn|serve_http|api_server\.py")
_INTERNAL_BIND = re.compile(r"get_open_port|TCPStore|c10d|zmq|rendezvous|distributed")
BIND_CONTEXT_LINES = 8


def _api_bind(lines: Sequence[str], i: int) -> bool:
    if "attempting to bind on address" in lines[i]:
        return True
    above = "\n".join(lines[max(0, i - BIND_CONTEXT_LINES) : i])
    return bool(_API_BIND.search(above)) and not _INTERNAL_BIND.search(above)


def _internal_bind(lines: Sequence[str], i: int) -> bool:
    return bool(_INTERNAL_BIND.search("\n".join(lines[max(0, i - BIND_CONTEXT_LINES) : i])))


RULES: Tuple[_Rule, ...] = (
    _Rule("mnnvl_allreduce_crash", _ILLEGAL_ACCESS, _mnnvl, after=_MNNVL_SELECTED),
    # torch/cuda/__init__.py; vLLM's registry.py names it as the reason for spawn.
    _Rule("cuda_fork_reinit", _r(r"Cannot re-initialize CUDA in forked subprocess"), _fork),
    # torch's CUDA error text: the build lacks this GPU's sm_XY (first on every rank, before NCCL).
    _Rule("gpu_arch_unsupported", _r(r"no kernel image is available for execution on the device"), _arch),
    # NCCL transport/nvls.cc: NVLS set-up failing shows only as NCCL's WARN lines, then as a
    # generic "unhandled cuda error" from torch (NCCL 2.18+ adds the NCCL_NVLS_ENABLE hint).
    _Rule(
        "nccl_nvls",
        _r(r"transport/nvls\.cc:\d+ NCCL WARN|NVLink SHARP \(NVLS\) Multicast|Disable NVLS \(NCCL_NVLS_ENABLE=0\)"),
        _nvls,
    ),
    # vllm/v1/executor/ray_utils.py, initialize_ray_cluster (seen with vllm-cpu 0.32.0).
    _Rule(
        "ray_unsupported_platform",
        _r(r"current platform (\w+) does not support ray"),
        lambda m, ctx, before: (
            f"this vLLM build ({m[1]}) has no Ray executor",
            "hw.nodes=1 without hw.ray_address (the default multiprocessing executor), "
            "or a GPU build of vLLM on the nodes",
        ),
    ),
    # vllm/config/model.py (ModelConfig, _get_and_verify_max_len); an error unless
    # VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 (0.6 on), the same wording since 0.2.
    _Rule(
        "max_len_exceeds_model",
        _r(
            r"User-specified max_model_len \((?P<asked>\d+)\) is greater than "
            r"the derived max_model_len \((?P<derived>[^)]*)\)"
        ),
        _model_len,
    ),
    # vllm/platforms/cuda.py (0.4-0.10: _check_if_gpu_supports_dtype); torch's own bf16 check says the same.
    _Rule(
        "bf16_unsupported",
        _r(
            r"Bfloat16 is only supported on GPUs with compute capability of at least 8\.0\."
            r"(?: Your (?P<gpu>.+?) GPU has compute capability (?P<cc>\d+\.\d+))?"
        ),
        _bf16,
    ),
    # vllm/config/model.py, _verify_quantization (the wording since 0.4).
    _Rule(
        "quant_needs_newer_gpu",
        _r(
            r"The quantization method (?P<method>\S+) is not supported for the current GPU\. "
            r"Minimum capability: (?P<need>\d+)\. Current capability: (?P<have>\d+)"
        ),
        _quant_gpu,
    ),
    # vllm/model_executor/layers/quantization/compressed_tensors (a tuple printed as the message).
    _Rule(
        "quant_needs_newer_gpu",
        _r(
            r"Quantization scheme is not supported for ', 'the current GPU\. Min capability: (?P<need>\d+)\. ', "
            r"'Current capability: (?P<have>\d+)"
        ),
        _quant_gpu,
    ),
    # transformers/dynamic_module_utils.py, resolve_trust_remote_code (both wordings: the error,
    # and the prompt that fails with EOFError when nothing answers it).
    _Rule(
        "trust_remote_code_required",
        _r(
            r"requires you to execute the configuration file in that repo"
            r"|contains custom code which must be executed to correctly load the model"
        ),
        _remote_code,
    ),
    # vllm/model_executor/models/llama.py (and the other decoders), LlamaAttention.__init__:
    # "assert self.total_num_kv_heads % tp_size == 0" / "assert tp_size % self.total_num_kv_heads == 0".
    # Seen on H100s: Phi-3-medium (10 KV heads) at TP=4 (docs/validation/2026-11-27-vllm-verdicts).
    _Rule(
        "kv_heads_not_divisible",
        _r(r"assert (self\.total_num_kv_heads % tp_size|tp_size % self\.total_num_kv_heads) == 0"),
        _kv_heads,
    ),
    # vllm/config/model.py, ModelConfig.verify_with_parallel_config (same text in 0.26).
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
    # vllm/v1/executor/ray_utils.py, _wait_until_pg_ready: logged every 10/20/40 s while the
    # placement group waits; twice is a hang (the final error comes only after 30 minutes).
    _Rule("ray_placement", _r(r"Waiting for creating a placement group of specs for \d+ seconds"), _ray, min_count=2),
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
    # huggingface_hub (GatedRepoError) and transformers/utils/hub.py; "Repository Not Found" is
    # also a 401, so it is excluded here and named by model_not_found below.
    _Rule(
        "gated_repo",
        _r(r"(?:request access at|have access to it at|gated repo for url) https://huggingface\.co/"),
        _gated,
    ),
    _Rule(
        "gated_repo",
        _r(
            r"Cannot access gated repo|You are trying to access a gated repo|GatedRepoError"
            r"|is gated\. You must be authenticated|401 Client Error"
        ),
        _gated,
        guard=lambda lines, i: not any("Repository Not Found" in line for line in lines[i : i + 4]),
    ),
    _Rule(
        "model_not_found",
        _r(
            r"does not appear to have a file named config\.json"  # transformers/utils/hub.py
            r"|Invalid repository ID or local directory specified"  # vllm/transformers_utils/config.py
            r"|is not a local folder and is not a valid model identifier"  # transformers/utils/hub.py
            r"|Could not detect config format for no config file found"  # vllm/transformers_utils/config.py
            r"|No supported config format found in"  # the same check in vLLM 0.6-0.8
            r"|Repository Not Found for url|RepositoryNotFoundError"  # huggingface_hub
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
            r"|prob_[mnk] = \d+ is not divisible by thread_[mnk]"  # csrc/quantization/marlin/sparse (2:4)
            r"|is not divisible by weight quantization block_[nk]"  # quantization/utils/fp8_utils.py
            r"|is not divisible by group_size="  # vllm/distributed/utils.py
        ),
        _quant,
    ),
    # vllm/distributed/utils.py, ensure_divisibility: any sharded dimension (a vision encoder's
    # heads, the vocabulary) that TP does not divide. The frame alone when the message was cut.
    _Rule(
        "tp_split_not_divisible",
        _r(r"AssertionError: (?P<whole>\d+) is not divisible by (?P<parts>\d+)|in ensure_divisibility$"),
        _split,
    ),
    _Rule(
        "port_in_use",
        _r(
            r"error while attempting to bind on address \(.*?(?P<port>\d+)\): address already in use"
            r"|\[Errno (?:98|48)\] Address already in use",
            re.IGNORECASE,
        ),
        _port,
        guard=_api_bind,
    ),
    # torch's TCPStore (init_process_group) and vLLM's get_open_port: a port vLLM chose itself.
    _Rule(
        "internal_port_race",
        _r(r"The server socket has failed to listen on any local network address.*EADDRINUSE"),
        _internal_port,
    ),
    _Rule(
        "internal_port_race", _r(r"\[Errno (?:98|48)\] Address already in use"), _internal_port, guard=_internal_bind
    ),
    # pyzmq: the sockets vLLM's processes talk over (API servers and engines), never the HTTP port.
    _Rule("internal_port_race", _r(r"ZMQError: Address already in use"), _internal_port),
    # vllm/v1/worker/utils.py (0.32); older releases print no device name.
    _Rule(
        "free_memory_below_utilization",
        _r(
            r"Free memory on device\s*(\S*?)\s*\(([\d.]+)/([\d.]+) GiB\) on startup is less than desired "
            r"GPU memory utilization \(([\d.]+), ([\d.]+) GiB\)"
        ),
        _free_memory,
    ),
    # vllm/v1/worker/gpu_worker.py, determine_available_memory (V0: worker.py): free memory
    # grew while vLLM profiled, so another process released (or took) memory meanwhile.
    _Rule("memory_profiling_changed", _r(r"Error in memory profiling"), _profiling),
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
            # A rank writing into a full /dev/shm mapping dies of SIGBUS (Python's fault handler).
            r"|Fatal Python error: Bus error|SIGBUS received"
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
            # NCCL's P2P transport (include/checks.h CUDACHECK) when GPUs cannot reach each other.
            r"|Cuda failure 'peer access is not supported between these two devices'"
        ),
        _nccl,
    ),
    # Python's import error, in the API server or a rank (an fp8 checkpoint without
    # compressed_tensors, a flash_attn vLLM's attention backend imports). transformers_modules
    # is the remote-code cache, whose import errors are the model's own.
    _Rule(
        "python_module_missing",
        _r(r"ModuleNotFoundError: No module named '(?P<module>(?!transformers_modules)[\w.]+)'"),
        _module,
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
    # Ray's services.py warning at start-up: a 64 MiB /dev/shm is what makes TP ranks hang or
    # crash in containers, but only a suspect, so below every rule that names an error.
    _Rule("shm_too_small", _r(r"because /dev/shm has only (?P<shm>\d+) bytes available"), _shm),
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


__all__ = ["Diagnosis", "diagnose", "HANG_CAUSES", "NOTE_CAUSES", "RULES"]
