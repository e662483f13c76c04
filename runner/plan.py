"""The plan: a pure function of (config, hardware probe, model config.json, vLLM version,
inherited environment). It returns the exact argv and environment the launch will use, the
devices, an estimate, and every problem found, each naming the key, the value and the fix.

No I/O happens here, so ``mode=plan`` answers in well under a second and the tests can
enumerate every profile × model × mode.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from runner import compat, rules
from runner.models import DTYPE_BYTES, ModelShape, model_dir
from runner.probe import HardwareProbe
from runner.problems import Problem
from runner.redact import MASK, SECRET_OPTIONS
from runner.schema import Device, Interconnect, Mode, ModelSource, RunnerConfig

GIB = 2**30
# vllm/config/model.py, ModelDType
VLLM_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
# Flags the runner renders from its own keys; extra_args must not say them a second time.
MANAGED_FLAGS = {
    "model": "model.path", "served_model_name": "serve.served_model_name", "host": "serve.host",
    "port": "serve.port", "tensor_parallel_size": "serve.tensor_parallel_size",
    "pipeline_parallel_size": "serve.pipeline_parallel_size", "load_format": "model.load_format",
    "dtype": "serve.dtype", "max_model_len": "serve.max_model_len", "revision": "model.revision",
    "gpu_memory_utilization": "serve.gpu_memory_utilization", "trust_remote_code": "serve.trust_remote_code",
}
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's own default
# Variables that say NVLink multicast is switched off on this machine.
MULTICAST_OFF_SIGNS = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


@dataclass(frozen=True)
class Plan:
    mode: str
    device: str  # cuda | cpu
    tensor_parallel_size: int
    pipeline_parallel_size: int
    devices: Tuple[int, ...]  # GPU indices (PCI-bus order) or CPU cores
    devices_available: int
    model_name: str
    model_path: Optional[str]
    argv: Tuple[str, ...]
    env: Dict[str, str]  # what the runner sets on top of the inherited environment
    url: str
    problems: Tuple[Problem, ...] = ()
    notes: Tuple[str, ...] = ()
    estimate: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["problems"] = [asdict(p) | {"text": str(p)} for p in self.problems]
        return out


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
    return next(iter(rules.shard_violations(shape, tp, hf_config)), None)


def valid_tp_sizes(shape: Optional[ModelShape], limit: int, hf_config: Optional[Mapping[str, Any]] = None) -> List[int]:
    """Every TP size up to limit that splits heads, KV heads and weights the way vLLM needs."""
    return [tp for tp in range(1, max(limit, 1) + 1) if shape is None or tp_violation(shape, tp, hf_config) is None]


def _or_list(values: Sequence[int]) -> str:
    items = [str(v) for v in values]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def render_extra_args(extra: Mapping[str, Any]) -> List[str]:
    """{key: value} -> vLLM flags. True is a bare flag, False is --no-key, dicts are JSON."""
    out: List[str] = []
    for key, value in extra.items():
        if value is None:
            continue
        if value is True:
            out.append(_flag(key))
        elif value is False:
            out.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, (dict, list)):
            out += [_flag(key), json.dumps(value, separators=(",", ":"))]
        else:
            out += [_flag(key), str(value)]
    return out


def _deep_merge(base: Dict[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _core_list(cores: Sequence[int]) -> str:
    """'0-3' for a contiguous run, '0,2,4' otherwise (both are what vLLM's parser takes)."""
    if len(cores) > 1 and list(cores) == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(str(c) for c in cores)


def _cpu_bind(cores: Sequence[int], ranks: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND: the cores split into one block per rank, '0-3|4-7'."""
    per_rank = len(cores) // ranks
    if per_rank == 0:
        return "auto"  # fewer cores than ranks: already a problem; never reached at launch
    return "|".join(_core_list(cores[r * per_rank : (r + 1) * per_rank]) for r in range(ranks))


def _fit_table(shape: ModelShape, hf_config: Optional[Mapping[str, Any]], weights: int, pp: int, budget_gib: float, limit: int) -> List[Dict[str, Any]]:
    """Every TP size up to the devices: does vLLM accept the split, and do the weights fit?"""
    rows = []
    for t in range(1, min(limit, 16) + 1):
        why = tp_violation(shape, t, hf_config)
        per_gpu = weights / (t * pp) / GIB
        rows.append({"tensor_parallel_size": t, "valid": why is None, "why_not": why,
                     "weights_gib_per_gpu": round(per_gpu, 2), "weights_fit": per_gpu < budget_gib})
    return rows


def _weights_bytes(shape: ModelShape, dtype: str) -> int:
    key = dtype if dtype != "auto" else (shape.torch_dtype or "bfloat16")
    return shape.parameter_count() * DTYPE_BYTES.get(str(key), 2)


def make_plan(
    cfg: RunnerConfig,
    probe: HardwareProbe,
    hf_config: Optional[Mapping[str, Any]],
    vllm_version: Optional[str],
    inherited_env: Mapping[str, str],
    python: str = "python",
) -> Plan:
    hw, model, serve = cfg.hw, cfg.model, cfg.serve
    problems: List[Problem] = []
    notes: List[str] = []
    planning_only = cfg.mode is Mode.plan
    visible = probe.visible_gpus()

    # ---- which device, and how many of them may be used
    device = hw.device
    if device is Device.auto:
        # GPUs present but masked out by a mask naming none of them is a mistake to report,
        # not a reason to fall back to the CPU; an empty mask ("") does mean "no GPUs".
        masked_off = probe.inherited_cuda_mask is not None and not probe.inherited_cuda_mask.strip()
        has_gpus = bool(visible) or (bool(probe.gpus) and not masked_off)
        device = Device.cuda if (has_gpus or (planning_only and hw.gpu_count)) else Device.cpu
    if device is Device.cuda:
        declared = hw.gpu_count
        if planning_only and declared is not None:
            available = declared
        else:
            available = len(visible)
            if declared is not None and declared > available:
                problems.append(
                    Problem(
                        "hw",
                        hw.name,
                        f"the profile declares {declared} GPUs but {available} "
                        f"{'is' if available == 1 else 'are'} visible",
                        "hw=auto, or a profile for this machine"
                        + ("" if available else " (hw=cpu-2 without GPUs)")
                        + "; or mode=plan to plan for the declared machine",
                    )
                )
            elif declared is not None:
                available = declared
        devices_pool: Tuple[int, ...] = tuple(g.index for g in visible[:available])
        if len(devices_pool) < available:  # mode=plan for a machine bigger than this one
            devices_pool = tuple(range(available))
    else:
        cores = probe.cpus_allowed
        available = hw.cpu_cores if hw.cpu_cores is not None else len(cores)
        if not planning_only and available > len(cores):
            problems.append(
                Problem(
                    "hw.cpu_cores",
                    available,
                    f"only {len(cores)} cores are available to this process",
                    f"hw.cpu_cores={len(cores)} or hw=auto",
                )
            )
            available = len(cores)
        devices_pool = tuple(cores[:available]) or tuple(range(available))

    # ---- the model
    shape = ModelShape.from_hf_config(dict(hf_config)) if hf_config else None
    path = model_dir(model, cfg.cache_dir)
    if path is None:
        if model.source is ModelSource.local:
            problems.append(Problem("model.path", None, "model=local needs a model directory or hub id", "model.path=/path/to/model"))
        elif planning_only:
            # "Will it run?" is answered from the shape; where the weights are matters at launch.
            notes.append(f"{model.name} has no weights here: a launch needs model.path=DIR (or a hub id), or model.load_format=dummy")
        else:
            problems.append(
                Problem(
                    "model.path",
                    None,
                    f"{model.name} has no weights here",
                    "model.path=DIR (or a hub id) for real weights, or model.load_format=dummy to rehearse",
                )
            )
    if shape is None:
        notes.append("config.json not readable before launch: head and memory checks skipped")

    # ---- parallel sizes
    pp = serve.pipeline_parallel_size
    tp = serve.tensor_parallel_size
    if pp < 1:
        problems.append(Problem("serve.pipeline_parallel_size", pp, "must be at least 1", "serve.pipeline_parallel_size=1"))
        pp = 1
    if tp is None:
        choices = valid_tp_sizes(shape, max(available // pp, 1), hf_config)
        tp = choices[-1]
        notes.append(f"tensor_parallel_size not set: {tp}, the largest the model allows on {available} device(s)")
    elif tp < 1:
        problems.append(Problem("serve.tensor_parallel_size", tp, "must be at least 1", "serve.tensor_parallel_size=1"))
        tp = 1
    fits_devices = valid_tp_sizes(shape, max(available // pp, 1), hf_config)
    if tp * pp > available:
        unit = "GPUs" if device is Device.cuda else "CPU cores"
        problems.append(
            Problem(
                "serve.tensor_parallel_size",
                tp,
                f"TP {tp} x PP {pp} needs {tp * pp} {unit}, {available} available",
                f"serve.tensor_parallel_size={_or_list(fits_devices)}" if fits_devices else "a machine with more devices",
            )
        )
    if shape is not None:
        why = tp_violation(shape, tp, hf_config)
        if why:
            problems.append(Problem("serve.tensor_parallel_size", tp, why, f"serve.tensor_parallel_size={_or_list(fits_devices)}"))
        # vllm/distributed/utils.py, get_pp_indices: every stage needs at least one layer.
        if pp > shape.num_hidden_layers:
            problems.append(
                Problem(
                    "serve.pipeline_parallel_size",
                    pp,
                    f"more stages than num_hidden_layers={shape.num_hidden_layers}",
                    f"serve.pipeline_parallel_size<={shape.num_hidden_layers}",
                )
            )

    # ---- memory: weights per GPU against what vLLM may use (the full model is issue-3's planner)
    estimate: Dict[str, Any] = {}
    util = serve.gpu_memory_utilization
    if util is not None and not 0 < util <= 1:
        problems.append(Problem("serve.gpu_memory_utilization", util, "must be in (0, 1]", "serve.gpu_memory_utilization=0.9"))
    if shape is not None:
        weights = _weights_bytes(shape, serve.dtype)
        estimate = {"parameters": shape.parameter_count(), "weights_gib": round(weights / GIB, 2)}
        gpu_gib = hw.gpu_memory_gib
        if gpu_gib is None and visible:
            gpu_gib = min(g.memory_total_bytes for g in visible) / GIB
        if device is Device.cuda and gpu_gib and serve.quantization is None:
            per_gpu = weights / (tp * pp) / GIB
            budget = gpu_gib * (util if util and 0 < util <= 1 else DEFAULT_GPU_MEMORY_UTILIZATION)
            estimate.update(weights_gib_per_gpu=round(per_gpu, 2), budget_gib_per_gpu=round(budget, 2))
            estimate["fit_table"] = _fit_table(shape, hf_config, weights, pp, budget, max(available // pp, 1))
            if per_gpu >= budget:
                big_enough = [t for t in fits_devices if weights / (t * pp) / GIB < budget]
                problems.append(
                    Problem(
                        "serve.tensor_parallel_size",
                        tp,
                        f"weights need {per_gpu:.1f} GiB per GPU, more than the {budget:.1f} GiB vLLM may use "
                        f"({gpu_gib:.0f} GiB x {budget / gpu_gib:.2f})",
                        f"serve.tensor_parallel_size={_or_list(big_enough)}" if big_enough else "more or larger GPUs, or a quantized model",
                    )
                )

    # ---- the GPUs themselves (this machine's, so not when planning for a declared one)
    if device is Device.cuda and not planning_only and visible:
        chosen_gpus = [g for g in visible if g.index in devices_pool[: tp * pp]]
        for found in (
            rules.bf16_problem(serve.dtype, shape.torch_dtype if shape else None, chosen_gpus),
            rules.free_memory_problem(util if util and 0 < util <= 1 else None, chosen_gpus, DEFAULT_GPU_MEMORY_UTILIZATION),
        ):
            if found:
                problems.append(found)

    # ---- everything else that must be positive, in range, or one of a set
    if not 0 < serve.port < 65536:
        problems.append(Problem("serve.port", serve.port, "not a TCP port (1-65535)", "serve.port=8000"))
    max_model_len = serve.max_model_len or model.max_model_len
    if serve.max_model_len is not None and serve.max_model_len <= 0 and serve.max_model_len != -1:
        problems.append(Problem("serve.max_model_len", serve.max_model_len, "must be positive (or -1: fit to memory)", "serve.max_model_len=4096, or leave it unset"))
    elif shape is not None and shape.context_length and max_model_len and max_model_len > shape.context_length:
        # vllm/config/model.py, _get_and_verify_max_len: "User-specified max_model_len … is
        # greater than the derived max_model_len".
        problems.append(
            Problem("serve.max_model_len", max_model_len, f"longer than the model's context ({shape.context_length})", f"serve.max_model_len={shape.context_length}")
        )
    for key, value in (("max_num_seqs", serve.max_num_seqs), ("max_num_batched_tokens", serve.max_num_batched_tokens)):
        if value is not None and value <= 0:
            problems.append(Problem(f"serve.{key}", value, "must be positive", f"serve.{key}=256, or leave it unset"))
    if serve.dtype not in VLLM_DTYPES:
        problems.append(Problem("serve.dtype", serve.dtype, f"not one of vLLM's dtypes ({', '.join(VLLM_DTYPES)})", "serve.dtype=auto"))
    if cfg.verify.max_tokens < 1:
        problems.append(Problem("verify.max_tokens", cfg.verify.max_tokens, "the check needs at least one token", "verify.max_tokens=8"))
    for key in ("ready_timeout_s", "request_timeout_s"):
        if getattr(cfg.verify, key) <= 0:
            problems.append(Problem(f"verify.{key}", getattr(cfg.verify, key), "must be positive", f"verify.{key}=900"))
    if hw.cpu_cores is not None and hw.cpu_cores < 1 and device is Device.cpu:
        problems.append(Problem("hw.cpu_cores", hw.cpu_cores, "must be at least 1", "hw.cpu_cores=2, or hw=auto"))
    for key in serve.extra_args:
        flag = key.replace("-", "_")
        if flag in SECRET_OPTIONS:
            problems.append(
                Problem(f"serve.extra_args.{key}", MASK, "an API key on the command line is visible to every user (ps) and in logs", "export VLLM_API_KEY=… (serve.api_key_env names the variable)")
            )
        elif flag in MANAGED_FLAGS:
            owner = MANAGED_FLAGS[flag]
            problems.append(Problem(f"serve.extra_args.{key}", serve.extra_args[key], f"the runner sets --{key.replace('_', '-')} itself", f"{owner}={serve.extra_args[key]}"))
    if device is Device.cuda and probe.inherited_cuda_mask:
        tokens = probe.inherited_cuda_mask.split(",")
        bad = [t for t in tokens if not (t.strip().isdigit() or t.strip().startswith(("GPU-", "MIG-")))]
        if bad:
            problems.append(Problem("CUDA_VISIBLE_DEVICES", probe.inherited_cuda_mask, f"not a list of GPU indices or UUIDs ({bad[0]!r})", "export CUDA_VISIBLE_DEVICES=0,1 (or unset it)"))
        elif len(set(t.strip() for t in tokens)) != len(tokens):
            problems.append(Problem("CUDA_VISIBLE_DEVICES", probe.inherited_cuda_mask, "names a GPU twice", f"export CUDA_VISIBLE_DEVICES={','.join(dict.fromkeys(t.strip() for t in tokens))}"))
        elif probe.gpus:
            known = {str(g.index) for g in probe.gpus}
            missing = [t.strip() for t in tokens if t.strip().isdigit() and t.strip() not in known]
            missing += [t.strip() for t in tokens if t.strip().startswith(("GPU-", "MIG-")) and not any((g.uuid or "").startswith(t.strip()) for g in probe.gpus)]
            if missing:
                have = ",".join(sorted(known, key=int))
                problems.append(Problem("CUDA_VISIBLE_DEVICES", probe.inherited_cuda_mask, f"names GPU {missing[0]}, which this machine does not have (it has {have})", f"export CUDA_VISIBLE_DEVICES={have} (or unset it)"))

    # ---- environment: only what the runner changes; the launch adds it over the inherited one
    world = tp * pp
    env: Dict[str, str] = {}
    if device is Device.cuda:
        chosen = devices_pool[:world]
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in chosen)
    else:
        chosen = devices_pool  # every core the profile allows, shared out among the ranks
        env["VLLM_CPU_OMP_THREADS_BIND"] = _cpu_bind(chosen, world)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(hw.cpu_kvcache_space_gib)
    for key, default in (("VLLM_NO_USAGE_STATS", "1"), ("DO_NOT_TRACK", "1")):
        if key not in inherited_env:
            env[key] = default
    if path and path.startswith("/") and "HF_HUB_OFFLINE" not in inherited_env:
        env["HF_HUB_OFFLINE"] = "1"  # a local directory needs no hub; don't wait on one
    env.update({str(k): str(v) for k, v in hw.env.items()})
    api_key = inherited_env.get(serve.api_key_env) if serve.api_key_env else None
    if api_key and serve.api_key_env != "VLLM_API_KEY":
        env["VLLM_API_KEY"] = api_key  # redacted wherever the plan is written
    if serve.host in ("0.0.0.0", "::", "") and not api_key:
        notes.append(
            f"WARNING: serving on every interface without an API key: anyone who reaches port {serve.port} "
            f"can use the model. export {serve.api_key_env or 'VLLM_API_KEY'}=…, or serve.host=127.0.0.1"
        )

    # ---- argv
    served_name = serve.served_model_name or model.name
    argv: List[str] = [python, "-m", compat.API_SERVER_MODULE, "--model", str(path or "<model.path>")]
    argv += ["--served-model-name", served_name, "--host", serve.host, "--port", str(serve.port)]
    argv += ["--tensor-parallel-size", str(tp)]
    if pp != 1:
        argv += ["--pipeline-parallel-size", str(pp)]
    if model.load_format != "auto":
        argv += ["--load-format", model.load_format]
    if model.revision:
        argv += ["--revision", model.revision]
    if serve.dtype != "auto":
        argv += ["--dtype", serve.dtype]
    for key, value in (
        ("max_model_len", max_model_len),
        ("gpu_memory_utilization", util if device is Device.cuda else None),
        ("max_num_seqs", serve.max_num_seqs),
        ("max_num_batched_tokens", serve.max_num_batched_tokens),
        ("kv_cache_dtype", serve.kv_cache_dtype),
        ("quantization", serve.quantization),
        ("seed", serve.seed),
        ("distributed_executor_backend", serve.distributed_executor_backend),
    ):
        if value is not None:
            argv += [_flag(key), str(value)]
    if serve.enforce_eager:
        argv.append("--enforce-eager")
    if serve.trust_remote_code:
        argv.append("--trust-remote-code")

    extra = dict(serve.extra_args)
    if device is Device.cuda and tp >= 2:
        multicast_off = any(inherited_env.get(k) == v for k, v in MULTICAST_OFF_SIGNS.items())
        if hw.nvlink_multicast is not True or multicast_off:
            user_cc = extra.get("compilation_config") or {}
            if isinstance(user_cc, str) and user_cc.lstrip().startswith("{"):
                user_cc = json.loads(user_cc)
            fusion_off = compat.allreduce_rms_fusion_off(vllm_version)
            # A user's own fuse_allreduce_rms, or a compilation_config we can't merge (an
            # optimisation level such as 3), is left exactly as given.
            if fusion_off and isinstance(user_cc, Mapping) and "fuse_allreduce_rms" not in user_cc.get("pass_config", {}):
                extra["compilation_config"] = _deep_merge(fusion_off, user_cc)
                why = "switched off on this machine" if multicast_off else "not known to work here (hw.nvlink_multicast)"
                notes.append(
                    f"all-reduce+RMSNorm fusion off: NVLink multicast is {why}, and vLLM's default picks "
                    "FlashInfer's mnnvl all-reduce, which then crashes TP>=2 with an illegal memory access"
                )
        interconnect = hw.interconnect
        if interconnect is Interconnect.pcie and tp > 2 and "disable_custom_all_reduce" not in extra:
            extra["disable_custom_all_reduce"] = True
            notes.append("custom all-reduce off: vLLM's supports at most 2 GPUs over PCIe and would warn and skip it")
    argv += render_extra_args(extra)

    if vllm_version is None and not planning_only:
        problems.append(
            Problem("launch.python", python, "no vLLM is installed for this interpreter", "install vLLM (README: set-up), or launch.python=/path/to/python-with-vllm")
        )
    elif vllm_version is not None and not compat.is_supported(vllm_version):
        notes.append(f"vLLM {vllm_version} is outside the tested range 0.26-0.33")

    client_host = "127.0.0.1" if serve.host in ("0.0.0.0", "::", "") else serve.host
    return Plan(
        mode=cfg.mode.value,
        device=device.value,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        devices=tuple(chosen),
        devices_available=available,
        model_name=served_name,
        model_path=path,
        argv=tuple(argv),
        env=env,
        url=f"http://{client_host}:{serve.port}",
        problems=tuple(problems),
        notes=tuple(notes),
        estimate=estimate,
    )
