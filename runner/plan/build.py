"""The plan: a pure function of (config, hardware probe, model config.json, vLLM version,
inherited environment). It returns the exact argv and environment the launch will use, the
devices, an estimate, and every problem found, each naming the key, the value and the fix.

No I/O happens here, so ``mode=plan`` answers in well under a second and the tests can
enumerate every profile × model × mode.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from runner.config.schema import Device, Interconnect, Mode, ModelSource, RunnerConfig
from runner.plan import cluster as multinode
from runner.plan import compat, memory, rules, topology
from runner.probe.hardware import HardwareProbe
from runner.probe.models import DTYPE_BYTES, ModelShape, model_dir
from runner.problems import Problem
from runner.record.redact import MASK, SECRET_OPTIONS

GIB = 2**30
# vllm/config/model.py, ModelDType
VLLM_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
# Flags the runner renders from its own keys; extra_args must not say them a second time.
MANAGED_FLAGS = {
    "model": "model.path",
    "served_model_name": "serve.served_model_name",
    "host": "serve.host",
    "port": "serve.port",
    "tensor_parallel_size": "serve.tensor_parallel_size",
    "pipeline_parallel_size": "serve.pipeline_parallel_size",
    "load_format": "model.load_format",
    "dtype": "serve.dtype",
    "max_model_len": "serve.max_model_len",
    "revision": "model.revision",
    "gpu_memory_utilization": "serve.gpu_memory_utilization",
    "trust_remote_code": "serve.trust_remote_code",
}
DEFAULT_GPU_MEMORY_UTILIZATION = memory.DEFAULT_GPU_MEMORY_UTILIZATION
# Memory bandwidth per GPU (GB/s, the makers' figures) for hw=auto, by NVML name: the sweep
# report's roofline fraction. A profile's hw.memory_bandwidth_gbps wins.
KNOWN_BANDWIDTH_GBPS = {
    "H100 80GB HBM3": 3350,
    "H100 PCIe": 2000,
    "H100 NVL": 3900,
    "H200": 4800,
    "A100-SXM4-80GB": 2039,
    "A100-SXM4-40GB": 1555,
    "A100 80GB PCIe": 1935,
    "L40S": 864,
    "L4": 300,
    "RTX 6000 Ada": 960,
}
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
    placement: Dict[str, Any] = field(default_factory=dict)
    cluster: Optional[Dict[str, Any]] = None  # runner.plan.cluster.ClusterPlan, past one machine

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["problems"] = [p.to_dict() for p in self.problems]
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


def _cpu_bind(cores: Sequence[int], ranks: int, numa_nodes: Sequence[Sequence[int]] = ()) -> str:
    """VLLM_CPU_OMP_THREADS_BIND: the cores split into one block per rank, '0-3|4-7'.

    Cores are taken NUMA node by node, so with as many nodes as ranks (or a multiple) no
    rank's threads straddle two nodes' memory."""
    node_of = {c: n for n, node in enumerate(numa_nodes) for c in node}
    cores = sorted(cores, key=lambda c: (node_of.get(c, 0), c))
    per_rank = len(cores) // ranks
    if per_rank == 0:
        return "auto"  # fewer cores than ranks: already a problem; never reached at launch
    return "|".join(_core_list(cores[r * per_rank : (r + 1) * per_rank]) for r in range(ranks))


def _fit_table(shape: ModelShape, hf_config: Optional[Mapping[str, Any]], predict, limit: int) -> List[Dict[str, Any]]:
    """Every TP size up to the devices: does vLLM accept the split, and what does each GPU hold?"""
    rows = []
    for t in range(1, min(limit, 16) + 1):
        why = tp_violation(shape, t, hf_config)
        fit = predict(t)
        rows.append(
            {
                "tensor_parallel_size": t,
                "valid": why is None,
                "why_not": why or fit.why_not,
                "weights_gib_per_gpu": fit.weights_gib_per_gpu,
                "kv_cache_gib": fit.kv_cache_gib,
                "kv_cache_tokens": fit.kv_cache_tokens,
                "max_concurrency": fit.max_concurrency,
                "fits": why is None and fit.fits,
            }
        )
    return rows


def max_model_len_for(cfg: RunnerConfig) -> Optional[int]:
    return cfg.serve.max_model_len if cfg.serve.max_model_len not in (None, -1) else cfg.model.max_model_len


def _gpu_memory(hw, visible, planning_only: bool) -> Tuple[Optional[int], Optional[str], str]:
    """NVML's total bytes per GPU (the smallest card), its name, and where that came from."""
    if visible and not (
        planning_only and hw.gpu_memory_gib is not None and hw.gpu_count and hw.gpu_count > len(visible)
    ):
        smallest = min(visible, key=lambda g: g.memory_total_bytes)
        return smallest.memory_total_bytes, smallest.name, "probe"
    if hw.gpu_memory_gib:
        return int(hw.gpu_memory_gib * GIB), hw.gpu_name, f"hw.gpu_memory_gib ({hw.name})"
    return None, None, "unknown"


def _predictor(
    shape: ModelShape,
    weights: int,
    gpu_bytes: int,
    gpu_name: Optional[str],
    pp: int,
    serve,
    util: Optional[float],
    max_model_len: Optional[int],
    vllm_version: Optional[str],
):
    def predict(tp: int, **change: Any) -> memory.MemoryFit:
        args: Dict[str, Any] = dict(
            pp=pp,
            gpu_memory_utilization=util,
            max_model_len=max_model_len,
            max_num_batched_tokens=serve.max_num_batched_tokens,
            max_num_seqs=serve.max_num_seqs,
            kv_cache_dtype=serve.kv_cache_dtype,
            dtype_bytes=DTYPE_BYTES.get(str(shape.torch_dtype or "bfloat16"), 2)
            if serve.dtype == "auto"
            else DTYPE_BYTES.get(serve.dtype, 2),
            gpu_name=gpu_name,
            vllm_version=vllm_version,
            enforce_eager=serve.enforce_eager,
        )
        args.update(change)
        return memory.predict(shape, tp, weights, gpu_bytes, **args)

    return predict


def _memory_problem(fit: memory.MemoryFit, predict, valid_tps: Sequence[int], serve, util: Optional[float]) -> Problem:
    """What does not fit, and every override that would make it fit (smallest change first)."""
    fixes: List[str] = []
    bigger = [t for t in valid_tps if t > fit.tensor_parallel_size and predict(t).fits]
    if bigger:
        fixes.append(f"serve.tensor_parallel_size={bigger[0]}")
    weights_fit = fit.weights_gib_per_gpu < fit.requested_gib
    longest = memory.safe_max_model_len(fit)
    if weights_fit and longest and fit.kv_cache_tokens < fit.max_model_len:
        fixes.append(f"serve.max_model_len={longest}")
    if (
        weights_fit
        and serve.kv_cache_dtype in (None, "auto")
        and predict(fit.tensor_parallel_size, kv_cache_dtype="fp8").fits
    ):
        fixes.append("serve.kv_cache_dtype=fp8")
    current = util or memory.DEFAULT_GPU_MEMORY_UTILIZATION
    safe = fit.max_safe_utilization
    out_of_memory = bool(fit.why_not and fit.why_not.startswith("out of memory"))
    if out_of_memory:
        fixes.insert(0, f"serve.gpu_memory_utilization={safe:.2f}")
    elif weights_fit and safe > current and predict(fit.tensor_parallel_size, gpu_memory_utilization=safe).fits:
        fixes.append(f"serve.gpu_memory_utilization={safe:.2f}")
    if not weights_fit:
        key, value = "serve.tensor_parallel_size", fit.tensor_parallel_size
        what = f"{fit.why_not} ({fit.gpu_total_gib:.1f} GiB x {fit.gpu_memory_utilization:g})"
    elif fit.kv_cache_gib <= 0:
        key, value, what = "serve.tensor_parallel_size", fit.tensor_parallel_size, fit.why_not
    elif out_of_memory:
        key, value, what = "serve.gpu_memory_utilization", fit.gpu_memory_utilization, fit.why_not
    else:
        key, value = "serve.max_model_len", fit.max_model_len
        what = f"{fit.why_not} (predicted KV cache {fit.kv_cache_gib:.2f} GiB per GPU)"
    return Problem(key, value, what, ", or ".join(fixes) if fixes else "more or larger GPUs, or a quantized model")


_FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


def _weights_from_disk(on_disk: Mapping[str, Any], dtype: str) -> int:
    """The checkpoint's bytes, with floating-point tensors converted to serve.dtype if set."""
    if dtype in ("auto", None) or dtype not in DTYPE_BYTES:
        return int(on_disk["bytes"])
    target = DTYPE_BYTES[dtype]
    total = 0
    for name, size in on_disk.get("bytes_by_dtype", {}).items():
        total += size * target // _FLOAT_DTYPES[name] if name in _FLOAT_DTYPES else size
    return int(total)


def _weights_bytes(shape: ModelShape, dtype: str) -> int:
    key = dtype if dtype != "auto" else (shape.torch_dtype or "bfloat16")
    return shape.parameter_count() * DTYPE_BYTES.get(str(key), 2)


def _place(
    probe: HardwareProbe, visible, pool: Tuple[int, ...], world: int, util: Optional[float], planning_only: bool
):
    """(devices, record, problem): the GPUs for one TP x PP group, and why those."""
    first = tuple(pool[:world])
    if planning_only and len(visible) < world:
        return (
            first,
            {
                "devices": list(first),
                "reason": f"planned for the profile's declared GPUs (this machine shows {len(visible)}); the first {world} in PCI order",
            },
            None,
        )
    matrix = None
    if probe.links and probe.gpus:
        matrix = topology.matrix_from_pairs(
            max(g.index for g in probe.gpus) + 1,
            probe.links,
            [g.numa_node for g in sorted(probe.gpus, key=lambda g: g.index)],
        )
    elif probe.topology_matrix:
        try:
            matrix = topology.parse_topo_matrix(probe.topology_matrix)
        except ValueError:
            matrix = None
    candidates = [g.index for g in visible]
    if matrix is None or not candidates or any(c >= matrix.gpu_count for c in candidates):
        return (
            first,
            {"devices": list(first), "reason": f"the first {world} GPU(s) in PCI order (no topology known)"},
            None,
        )
    # vLLM refuses to start when a GPU's free memory is under utilization x total.
    need = max(
        int(memory.cuda_total_bytes(g.memory_total_bytes) * (util or DEFAULT_GPU_MEMORY_UTILIZATION)) for g in visible
    )
    free = {g.index: g.memory_free_bytes for g in visible if g.memory_free_bytes is not None}
    try:
        chosen = topology.choose_gpus(
            matrix,
            world,
            candidates=candidates,
            free_bytes=free,
            min_free_bytes=0 if planning_only else need,
            p2p=probe.p2p,
        )
    except topology.PlacementError as exc:
        if len(candidates) >= world:
            # Enough GPUs, too little free on them: place by topology alone and let the
            # free-memory rule say by how much to lower gpu_memory_utilization.
            chosen = topology.choose_gpus(matrix, world, candidates=candidates, free_bytes=free, p2p=probe.p2p)
            return (
                tuple(chosen.devices),
                _placement_record(chosen, matrix) | {"reason": f"{chosen.reason}; {exc}"},
                None,
            )
        usable = len(candidates) - sum(1 for c in candidates if c in free and free[c] < need)
        if usable == len(candidates):
            # Too few GPUs, none of them busy: the device count's own problem says so (with the
            # TP sizes that fit); "free those GPUs" would send the user after nothing.
            return first, {"devices": list(first), "reason": str(exc)}, None
        fix = "free those GPUs (nvidia-smi shows who uses them), or serve.gpu_memory_utilization=<lower>"
        if 0 < usable < world:
            fix += f", or serve.tensor_parallel_size={usable}"
        return (
            first,
            {"devices": list(first), "reason": str(exc)},
            Problem(
                "CUDA_VISIBLE_DEVICES" if probe.inherited_cuda_mask else "serve.tensor_parallel_size",
                world,
                str(exc),
                fix,
            ),
        )
    return tuple(chosen.devices), _placement_record(chosen, matrix), None


def _placement_record(chosen: "topology.Placement", matrix: "topology.TopoMatrix") -> Dict[str, Any]:
    return {
        "devices": list(chosen.devices),
        "reason": chosen.reason,
        "interconnect": chosen.interconnect,
        "worst_link": chosen.worst_link,
        # None: the machine does not say (VMs often report NUMA node -1)
        "same_numa": chosen.same_numa
        if any(n is not None for n in matrix.numa_nodes) or any(c is not None for c in matrix.cpu_affinities)
        else None,
        "skipped": {str(k): v for k, v in chosen.skipped.items()},
        "links": {f"{i}-{j}": matrix.link(i, j) for n, i in enumerate(chosen.devices) for j in chosen.devices[n + 1 :]},
    }


def make_plan(
    cfg: RunnerConfig,
    probe: HardwareProbe,
    hf_config: Optional[Mapping[str, Any]],
    vllm_version: Optional[str],
    inherited_env: Mapping[str, str],
    python: str = "python",
    weights_on_disk: Optional[Mapping[str, Any]] = None,
) -> Plan:
    """weights_on_disk: models.safetensors_weights() of the model directory, when it has
    safetensors files: their exact size replaces the estimate from the parameter count."""
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
            problems.append(
                Problem(
                    "model.path", None, "model=local needs a model directory or hub id", "model.path=/path/to/model"
                )
            )
        elif planning_only:
            # "Will it run?" is answered from the shape; where the weights are matters at launch.
            notes.append(
                f"{model.name} has no weights here: a launch needs model.path=DIR (or a hub id), or model.load_format=dummy"
            )
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
        problems.append(
            Problem("serve.pipeline_parallel_size", pp, "must be at least 1", "serve.pipeline_parallel_size=1")
        )
        pp = 1
    # ---- past one machine: Ray, TP inside a node, PP across nodes (runner/plan/cluster.py)
    cluster = None
    if hw.nodes != 1 or hw.ray_address:
        cluster = multinode.plan_cluster(
            hw, tp, pp if pp != 1 else None, shape, inherited_env, serve.distributed_executor_backend
        )
        tp, pp = cluster.tp, cluster.pp
        if cluster.devices_per_node:
            available = cluster.nodes * cluster.devices_per_node
        problems += list(cluster.problems)
        notes += list(cluster.notes)
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
                f"serve.tensor_parallel_size={_or_list(fits_devices)}"
                if fits_devices
                else "a machine with more devices",
            )
        )
    if shape is not None:
        why = tp_violation(shape, tp, hf_config)
        if why:
            problems.append(
                Problem("serve.tensor_parallel_size", tp, why, f"serve.tensor_parallel_size={_or_list(fits_devices)}")
            )
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

    # ---- memory: vLLM's own arithmetic, predicted (runner/plan/memory.py)
    estimate: Dict[str, Any] = {}
    util = serve.gpu_memory_utilization
    if util is not None and not 0 < util <= 1:
        problems.append(
            Problem("serve.gpu_memory_utilization", util, "must be in (0, 1]", "serve.gpu_memory_utilization=0.9")
        )
    util_ok = util if util and 0 < util <= 1 else None
    gpu_bytes, gpu_name, memory_source = _gpu_memory(hw, visible, planning_only)
    predict = None
    if shape is not None:
        weights = _weights_bytes(shape, serve.dtype)
        weights_source = "parameter count"
        if weights_on_disk:
            weights, weights_source = _weights_from_disk(weights_on_disk, serve.dtype), "safetensors headers"
        estimate = {
            "parameters": shape.parameter_count(),
            "weights_gib": round(weights / GIB, 2),
            "weights_source": weights_source,
        }
        quantized = serve.quantization is not None or bool((hf_config or {}).get("quantization_config"))
        if quantized and not weights_on_disk:
            notes.append(
                "memory not predicted: a quantized model's weights are sized from its safetensors files, and none are here"
            )
        if device is Device.cuda and gpu_bytes and (not quantized or weights_on_disk):
            limit = max(available // pp, 1)
            memory_version = vllm_version
            if planning_only and not visible:
                # Planning for a GPU machine from elsewhere: its vLLM is not this one.
                memory_version = memory.CALIBRATED_VLLM
            predict = _predictor(
                shape, weights, gpu_bytes, gpu_name, pp, serve, util_ok, max_model_len_for(cfg), memory_version
            )
            fit = predict(tp)
            estimate.update(fit=fit.to_dict(), memory_source=memory_source, memory_vllm=memory_version)
            bandwidth = hw.memory_bandwidth_gbps or next(
                (v for k, v in KNOWN_BANDWIDTH_GBPS.items() if gpu_name and k in gpu_name), None
            )
            if bandwidth:
                estimate["memory_bandwidth_gbps"] = bandwidth
            if memory_version != vllm_version and fit.cuda_graph_gib:
                notes.append(
                    f"memory predicted for vLLM {memory_version} (the release it is calibrated on): vLLM 0.27+ also sets "
                    f"the CUDA graphs' ~{fit.cuda_graph_gib:.2f} GiB per GPU aside, out of the KV cache"
                )
            estimate["fit_table"] = _fit_table(shape, hf_config, predict, limit)
            if serve.max_model_len == -1 and fit.kv_cache_gib > 0 and fit.weights_gib_per_gpu < fit.requested_gib:
                notes.append(
                    f"max_model_len -1: vLLM fits it to memory; predicted {min(fit.kv_cache_tokens, shape.context_length or fit.kv_cache_tokens):,} tokens"
                )
            elif fit.fits and fit.oom_risk:
                notes.append(
                    f"WARNING: only {fit.headroom_gib:.2f} GiB would stay free on each GPU after start-up; vLLM may run out of "
                    f"memory in its first full batch (measured on 80 GB cards, not on this one): serve.gpu_memory_utilization={fit.max_safe_utilization:.2f} is safer"
                )
            elif not fit.fits:
                problems.append(_memory_problem(fit, predict, fits_devices, serve, util_ok))
        elif device is Device.cpu:
            fit = memory.predict_cpu(
                shape,
                tp,
                weights,
                hw.cpu_kvcache_space_gib,
                pp=pp,
                max_model_len=max_model_len_for(cfg),
                kv_cache_dtype=serve.kv_cache_dtype,
            )
            estimate.update(
                fit=fit.to_dict(), memory_source=f"hw.cpu_kvcache_space_gib ({hw.cpu_kvcache_space_gib} GiB per rank)"
            )
            if not fit.fits and hw.cpu_kvcache_space_gib >= 1:
                need = math.ceil(fit.max_model_len * fit.kv_bytes_per_token / GIB)
                problems.append(
                    Problem(
                        "serve.max_model_len",
                        fit.max_model_len,
                        fit.why_not,
                        f"hw.cpu_kvcache_space_gib={need}, or serve.max_model_len={memory.safe_max_model_len(fit) or memory.BLOCK_SIZE}",
                    )
                )
    if predict is not None:
        # A TP size the rules allow but the memory does not is no fix to offer.
        fitting = [t for t in fits_devices if predict(t).fits]
        if fitting and fitting != fits_devices:
            old_fix = f"serve.tensor_parallel_size={_or_list(fits_devices)}"
            problems = [
                dataclasses.replace(p, fix=f"serve.tensor_parallel_size={_or_list(fitting)}") if p.fix == old_fix else p
                for p in problems
            ]

    # ---- which GPUs: placed by topology and free memory (runner/plan/topology.py)
    world = tp * pp
    placement: Dict[str, Any] = {}
    interconnect = hw.interconnect
    if device is Device.cuda and cluster is not None:
        # Ray places the ranks, node by node; the head's own GPUs are what this probe sees.
        chosen = tuple(devices_pool[: cluster.devices_per_node or world])
        placement = {
            "devices": list(chosen),
            "reason": f"Ray places the {world} ranks over {cluster.nodes} node(s); this is the head's share",
        }
    elif device is Device.cuda:
        chosen, placement, placement_problem = _place(probe, visible, devices_pool, world, util_ok, planning_only)
        if planning_only and len(visible) < available:
            notes.append(
                f"planned for {hw.name}'s declared {available} GPU(s)"
                + (f" of {hw.gpu_memory_gib:g} GiB" if hw.gpu_memory_gib else "")
                + f": {'no GPU is' if not visible else f'only {len(visible)} GPU(s) are'} visible here"
            )
        if placement_problem:
            problems.append(placement_problem)
        actual = placement.get("interconnect")
        if actual in ("nvlink", "pcie"):
            if hw.interconnect is Interconnect.nvlink and actual == "pcie":
                problems.append(
                    Problem(
                        "hw",
                        hw.name,
                        f"the profile says NVLink, but GPUs {_or_list(chosen)} are linked by {placement.get('worst_link')} (PCIe)",
                        f"hw=auto, or hw=pcie-{len(visible)}gpu",
                    )
                )
            interconnect = Interconnect(actual)
        if not planning_only and visible and not placement_problem:
            chosen_gpus = [g for g in visible if g.index in chosen]
            for found in (
                rules.bf16_problem(serve.dtype, shape.torch_dtype if shape else None, chosen_gpus),
                rules.free_memory_problem(util_ok, chosen_gpus, DEFAULT_GPU_MEMORY_UTILIZATION),
            ):
                if found:
                    problems.append(found)
    else:
        chosen = devices_pool  # every core the profile allows, shared out among the ranks

    # ---- everything else that must be positive, in range, or one of a set
    if not 0 < serve.port < 65536:
        problems.append(Problem("serve.port", serve.port, "not a TCP port (1-65535)", "serve.port=8000"))
    max_model_len = serve.max_model_len or model.max_model_len
    if serve.max_model_len is not None and serve.max_model_len <= 0 and serve.max_model_len != -1:
        problems.append(
            Problem(
                "serve.max_model_len",
                serve.max_model_len,
                "must be positive (or -1: fit to memory)",
                "serve.max_model_len=4096, or leave it unset",
            )
        )
    elif shape is not None and shape.context_length and max_model_len and max_model_len > shape.context_length:
        # vllm/config/model.py, _get_and_verify_max_len: "User-specified max_model_len … is
        # greater than the derived max_model_len".
        problems.append(
            Problem(
                "serve.max_model_len",
                max_model_len,
                f"longer than the model's context ({shape.context_length})",
                f"serve.max_model_len={shape.context_length}",
            )
        )
    for key, value in (("max_num_seqs", serve.max_num_seqs), ("max_num_batched_tokens", serve.max_num_batched_tokens)):
        if value is not None and value <= 0:
            problems.append(Problem(f"serve.{key}", value, "must be positive", f"serve.{key}=256, or leave it unset"))
    if serve.dtype not in VLLM_DTYPES:
        problems.append(
            Problem(
                "serve.dtype", serve.dtype, f"not one of vLLM's dtypes ({', '.join(VLLM_DTYPES)})", "serve.dtype=auto"
            )
        )
    if cfg.verify.max_tokens < 1:
        problems.append(
            Problem(
                "verify.max_tokens", cfg.verify.max_tokens, "the check needs at least one token", "verify.max_tokens=8"
            )
        )
    for key in ("ready_timeout_s", "request_timeout_s"):
        if getattr(cfg.verify, key) <= 0:
            problems.append(Problem(f"verify.{key}", getattr(cfg.verify, key), "must be positive", f"verify.{key}=900"))
    if hw.cpu_cores is not None and hw.cpu_cores < 1 and device is Device.cpu:
        problems.append(Problem("hw.cpu_cores", hw.cpu_cores, "must be at least 1", "hw.cpu_cores=2, or hw=auto"))
    for key in serve.extra_args:
        flag = key.replace("-", "_")
        if flag in SECRET_OPTIONS:
            problems.append(
                Problem(
                    f"serve.extra_args.{key}",
                    MASK,
                    "an API key on the command line is visible to every user (ps) and in logs",
                    "export VLLM_API_KEY=… (serve.api_key_env names the variable)",
                )
            )
        elif flag in MANAGED_FLAGS:
            owner = MANAGED_FLAGS[flag]
            problems.append(
                Problem(
                    f"serve.extra_args.{key}",
                    serve.extra_args[key],
                    f"the runner sets --{key.replace('_', '-')} itself",
                    f"{owner}={serve.extra_args[key]}",
                )
            )
    if device is Device.cuda and probe.inherited_cuda_mask:
        tokens = probe.inherited_cuda_mask.split(",")
        bad = [t for t in tokens if not (t.strip().isdigit() or t.strip().startswith(("GPU-", "MIG-")))]
        if bad:
            problems.append(
                Problem(
                    "CUDA_VISIBLE_DEVICES",
                    probe.inherited_cuda_mask,
                    f"not a list of GPU indices or UUIDs ({bad[0]!r})",
                    "export CUDA_VISIBLE_DEVICES=0,1 (or unset it)",
                )
            )
        elif len(set(t.strip() for t in tokens)) != len(tokens):
            problems.append(
                Problem(
                    "CUDA_VISIBLE_DEVICES",
                    probe.inherited_cuda_mask,
                    "names a GPU twice",
                    f"export CUDA_VISIBLE_DEVICES={','.join(dict.fromkeys(t.strip() for t in tokens))}",
                )
            )
        elif probe.gpus:
            known = {str(g.index) for g in probe.gpus}
            missing = [t.strip() for t in tokens if t.strip().isdigit() and t.strip() not in known]
            missing += [
                t.strip()
                for t in tokens
                if t.strip().startswith(("GPU-", "MIG-"))
                and not any((g.uuid or "").startswith(t.strip()) for g in probe.gpus)
            ]
            if missing:
                have = ",".join(sorted(known, key=int))
                problems.append(
                    Problem(
                        "CUDA_VISIBLE_DEVICES",
                        probe.inherited_cuda_mask,
                        f"names GPU {missing[0]}, which this machine does not have (it has {have})",
                        f"export CUDA_VISIBLE_DEVICES={have} (or unset it)",
                    )
                )

    # ---- environment: only what the runner changes; the launch adds it over the inherited one
    env: Dict[str, str] = {}
    if cluster is not None:
        env.update(cluster.env)
        env.update(cluster.node_env.get(cluster.head, {}))
        if device is Device.cuda and "NCCL_DEBUG" not in inherited_env:
            env["NCCL_DEBUG"] = "INFO"  # the manifest reads which transport NCCL chose across nodes
    if device is Device.cuda and cluster is not None:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    elif device is Device.cuda:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in chosen)
        failed = topology.p2p_failed_pairs(probe.p2p, chosen)
        if failed and "NCCL_P2P_DISABLE" not in inherited_env:
            env["NCCL_P2P_DISABLE"] = "1"
            i, j = failed[0]
            notes.append(
                f"NCCL_P2P_DISABLE=1: the driver reports P2P {probe.p2p.get((i, j))} between GPUs {i} and {j}; NCCL would hang on that path"
            )
    else:
        env["VLLM_CPU_OMP_THREADS_BIND"] = _cpu_bind(chosen, world, probe.cpu_numa_nodes)
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
            if (
                fusion_off
                and isinstance(user_cc, Mapping)
                and "fuse_allreduce_rms" not in user_cc.get("pass_config", {})
            ):
                extra["compilation_config"] = _deep_merge(fusion_off, user_cc)
                why = (
                    "switched off on this machine" if multicast_off else "not known to work here (hw.nvlink_multicast)"
                )
                notes.append(
                    f"all-reduce+RMSNorm fusion off: NVLink multicast is {why}, and vLLM's default picks "
                    "FlashInfer's mnnvl all-reduce, which then crashes TP>=2 with an illegal memory access"
                )
        if interconnect is Interconnect.pcie and tp > 2 and "disable_custom_all_reduce" not in extra:
            extra["disable_custom_all_reduce"] = True
            notes.append("custom all-reduce off: vLLM's supports at most 2 GPUs over PCIe and would warn and skip it")
    argv += render_extra_args(extra)
    if cluster is not None:
        flags = list(cluster.argv_extra)
        for i in range(0, len(flags) - 1, 2):
            if flags[i] not in argv:
                argv += flags[i : i + 2]

    if vllm_version is None and not planning_only:
        problems.append(
            Problem(
                "launch.python",
                python,
                "no vLLM is installed for this interpreter",
                "install vLLM (README: set-up), or launch.python=/path/to/python-with-vllm",
            )
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
        placement=placement,
        cluster=cluster.to_dict() if cluster is not None else None,
    )
