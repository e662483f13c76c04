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
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from runner.config.schema import Device, Interconnect, Mode, ModelSource, RunnerConfig
from runner.plan import cards, cluster, compat, memory, rules, topology
from runner.plan.secret_flags import MASK, SECRET_OPTIONS
from runner.plan.shape import DTYPE_BYTES, ModelShape
from runner.probe.hardware import HardwareProbe
from runner.probe.models import model_dir
from runner.problems import Problem

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
    "max_num_seqs": "serve.max_num_seqs",
    "max_num_batched_tokens": "serve.max_num_batched_tokens",
    "kv_cache_dtype": "serve.kv_cache_dtype",
    "quantization": "serve.quantization",
    "seed": "serve.seed",
    "distributed_executor_backend": "serve.distributed_executor_backend",
    "enforce_eager": "serve.enforce_eager",
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
# One entry of CUDA_VISIBLE_DEVICES as CUDA reads it: an index, or a (prefix of a) GPU or MIG UUID.
CUDA_DEVICE_TOKEN = re.compile(r"[0-9]+|GPU-[0-9a-fA-F][0-9a-fA-F-]*|MIG-[0-9A-Za-z][0-9A-Za-z/-]*", re.ASCII)
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
        why = rules.tp_violation(shape, t, hf_config)
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
            | ({"tightest_stage": fit.tightest_stage} if fit.tightest_stage is not None else {})
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
    weights_for: Callable[[Optional[str]], int],
    online: Optional[str],
    gpu_bytes: int,
    gpu_name: Optional[str],
    sizes: _Sizes,
    serve,
    util: Optional[float],
    max_model_len: Optional[int],
    vllm_version: Optional[str],
    quant_config: Optional[Mapping[str, Any]] = None,
):
    pp, partition = sizes.pp, sizes.layer_partition
    dtype_bytes = shape.served_dtype_bytes(serve.dtype)

    def predict(tp: int, quantization: Optional[str] = online, **change: Any) -> memory.MemoryFit:
        """One TP size's fit; quantization: the online quantization to size the weights for."""
        weights = weights_for(quantization)
        stages: Dict[str, Any] = {}
        if partition:
            qc = dict(quant_config) if isinstance(quant_config, Mapping) else None
            split = memory.stage_weights_bytes(shape, partition, weights, dtype_bytes, quantization, qc)
            stages = dict(layer_partition=partition, stage_weights=split)
        args: Dict[str, Any] = dict(
            pp=pp,
            **stages,
            gpu_memory_utilization=util,
            max_model_len=max_model_len,
            max_num_batched_tokens=serve.max_num_batched_tokens,
            max_num_seqs=serve.max_num_seqs,
            kv_cache_dtype=serve.kv_cache_dtype,
            dtype_bytes=dtype_bytes,
            gpu_name=gpu_name,
            vllm_version=vllm_version,
            enforce_eager=serve.enforce_eager,
        )
        args.update(change)
        return memory.predict(shape, tp, weights, gpu_bytes, **args)

    return predict


def _memory_problem(
    fit: memory.MemoryFit, predict, valid_tps: Sequence[int], serve, util: Optional[float], fp8_offered: bool = False
) -> Problem:
    """What does not fit, and every override that would make it fit (smallest change first).

    fp8_offered: serve.quantization=fp8 may be suggested (a 16-bit checkpoint not quantized yet,
    on cards with fp8 tensor cores)."""
    tp = fit.tensor_parallel_size

    def clean(**change: Any) -> bool:
        # every fix is planned again with its change before it is offered
        return predict(tp, **change).fits

    fixes: List[str] = []
    bigger = [t for t in valid_tps if t > tp and predict(t).fits]
    if bigger:
        fixes.append(f"serve.tensor_parallel_size={bigger[0]}")
    weights_fit = fit.weights_gib_per_gpu < fit.requested_gib
    longest = memory.safe_max_model_len(fit)
    if weights_fit and longest and longest < fit.max_model_len and clean(max_model_len=longest):
        fixes.append(f"serve.max_model_len={longest}")
    if serve.kv_cache_dtype in (None, "auto") and clean(kv_cache_dtype="fp8"):
        fixes.append("serve.kv_cache_dtype=fp8")
    current = util or memory.DEFAULT_GPU_MEMORY_UTILIZATION
    safe = fit.max_safe_utilization
    out_of_memory = bool(fit.why_not and fit.why_not.startswith("out of memory"))
    if out_of_memory:
        if safe < current and clean(gpu_memory_utilization=safe):
            fixes.insert(0, f"serve.gpu_memory_utilization={safe:.2f}")
    else:
        # higher when it asks for too little: vLLM's default first where it is enough, else the safe most
        higher = [u for u in (memory.DEFAULT_GPU_MEMORY_UTILIZATION, safe) if current < u <= safe]
        raised = next((u for u in higher if clean(gpu_memory_utilization=u)), None)
        if raised is not None:
            fixes.append(f"serve.gpu_memory_utilization={raised:.2f}")
    if fp8_offered and clean(quantization="fp8"):
        fixes.append("serve.quantization=fp8")
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


def _weights_bytes(shape: ModelShape, dtype: str, online: Optional[str] = None) -> int:
    return memory.weights_bytes(shape, shape.served_dtype_bytes(dtype), online)


def _fp8_capable(visible, gpu_name: Optional[str]) -> bool:
    """Whether the GPUs have fp8 tensor cores: the probe's compute capability, else the card's sheet."""
    seen = [tuple(g.compute_capability) for g in visible or () if getattr(g, "compute_capability", None)]
    if seen:
        return min(seen) >= memory.FP8_MIN_CAPABILITY
    card = cards.match_card(gpu_name)
    return card is not None and card.compute_capability >= memory.FP8_MIN_CAPABILITY


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
                "reason": f"planned for the profile's declared GPUs (this machine shows {len(visible)}); "
                f"the first {world} in PCI order",
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


@dataclass(frozen=True)
class Findings:
    """Problems and notes, in the order the plan found them; each step returns its own."""

    problems: Tuple[Problem, ...] = ()
    notes: Tuple[str, ...] = ()

    def __add__(self, other: "Findings") -> "Findings":
        return Findings(self.problems + other.problems, self.notes + other.notes)


def make_plan(
    cfg: RunnerConfig,
    probe: HardwareProbe,
    hf_config: Optional[Mapping[str, Any]],
    vllm_version: Optional[str],
    inherited_env: Mapping[str, str],
    python: str = "python",
    weights_on_disk: Optional[Mapping[str, Any]] = None,
) -> Plan:
    """The plan, step by step: devices -> the model -> TP x PP and the TP rules -> memory fit ->
    which GPUs -> every other value -> environment -> argv -> the vLLM version.

    weights_on_disk: models.safetensors_weights() of the model directory, when it has
    safetensors files: their exact size replaces the estimate from the parameter count."""
    planning_only = cfg.mode is Mode.plan
    visible = probe.visible_gpus()
    shape = ModelShape.from_hf_config(dict(hf_config)) if hf_config else None
    path = model_dir(cfg.model, cfg.cache_dir)

    devices, found = _resolve_devices(cfg, probe, visible, planning_only)
    found += _model_findings(cfg, shape, path, planning_only)
    sizes, step = _parallel_sizes(cfg, shape, hf_config, devices, inherited_env)
    found += step
    fit, step = _memory_fit(cfg, shape, hf_config, devices.device, sizes, visible, vllm_version, weights_on_disk)
    found += step
    if fit.predict is not None:
        found = _narrow_tp_fixes(found, fit.predict, sizes.fits_devices)
    place, step = _placement(cfg, probe, visible, devices, sizes, shape, fit.util, planning_only)
    found += step
    found += _value_problems(cfg, shape, devices.device)
    found += _extra_args_problems(cfg.serve.extra_args)
    if devices.device is Device.cuda and probe.inherited_cuda_mask:
        found += _cuda_mask_problems(probe)
    env, step = _environment(cfg, probe, devices.device, sizes, place.devices, path, inherited_env)
    found += step
    argv, step = _argv(cfg, python, path, devices.device, sizes, place.interconnect, vllm_version, inherited_env)
    found += step
    found += _version_findings(vllm_version, planning_only, python)

    serve = cfg.serve
    client_host = "127.0.0.1" if serve.host in ("0.0.0.0", "::", "") else serve.host
    return Plan(
        mode=cfg.mode.value,
        device=devices.device.value,
        tensor_parallel_size=sizes.tp,
        pipeline_parallel_size=sizes.pp,
        devices=tuple(place.devices),
        devices_available=sizes.available,
        model_name=serve.served_model_name or cfg.model.name,
        model_path=path,
        argv=tuple(argv),
        env=env,
        url=f"http://{client_host}:{serve.port}",
        problems=found.problems,
        notes=found.notes,
        estimate=fit.estimate,
        placement=place.record,
        cluster=sizes.cluster.to_dict() if sizes.cluster is not None else None,
    )


# --------------------------------------------------------------------------- devices and the model


@dataclass(frozen=True)
class _Devices:
    device: Device  # cuda or cpu, never auto
    available: int  # how many the plan may use (GPUs, or CPU cores)
    pool: Tuple[int, ...]  # their indices (GPUs in PCI-bus order) or core numbers


def _resolve_devices(
    cfg: RunnerConfig, probe: HardwareProbe, visible, planning_only: bool
) -> Tuple[_Devices, Findings]:
    """Which device, and how many of them may be used."""
    hw = cfg.hw
    problems: List[Problem] = []
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
        pool: Tuple[int, ...] = tuple(g.index for g in visible[:available])
        if len(pool) < available:  # mode=plan for a machine bigger than this one
            pool = tuple(range(available))
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
        pool = tuple(cores[:available]) or tuple(range(available))
    return _Devices(device, available, pool), Findings(tuple(problems))


# The largest random checkpoint model.source=generated writes (tiny-llama's is 2 MB).
GENERATED_MAX_BYTES = 2**30


def _model_findings(
    cfg: RunnerConfig, shape: Optional[ModelShape], path: Optional[str], planning_only: bool
) -> Findings:
    """Where the weights are (or why there are none), and whether config.json was readable."""
    model = cfg.model
    problems: List[Problem] = []
    notes: List[str] = []
    if model.source is ModelSource.generated and shape is not None and not model.path:
        # the runner writes these weights itself (random bfloat16, built in memory): test-sized models only
        parameters = shape.parameter_count()
        if parameters * 2 > GENERATED_MAX_BYTES:
            problems.append(
                Problem(
                    "model.source",
                    "generated",
                    f"would write {parameters * 2 / GIB:.1f} GiB of random weights ({parameters / 1e9:.2f} B "
                    f"parameters); generated models are for tests, at most {GENERATED_MAX_BYTES / GIB:.0f} GiB",
                    "model.source=shape model.load_format=dummy (vLLM makes the weights itself, nothing is written)",
                )
            )
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
                f"{model.name} has no weights here: a launch needs model.path=DIR (or a hub id), "
                "or model.load_format=dummy"
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
    return Findings(tuple(problems), tuple(notes))


# --------------------------------------------------------------------------- TP x PP


@dataclass(frozen=True)
class _Sizes:
    tp: int
    pp: int
    available: int  # the devices, counted over every node when there is a cluster
    fits_devices: Tuple[int, ...]  # the TP sizes the model allows on available // pp devices
    cluster: Optional[cluster.ClusterPlan]  # past one machine: Ray, TP inside a node, PP across nodes
    layer_partition: Tuple[int, ...] = ()  # PP > 1: each stage's decoder layers (memory.pp_layer_partition)

    @property
    def world(self) -> int:
        return self.tp * self.pp


def _parallel_sizes(
    cfg: RunnerConfig,
    shape: Optional[ModelShape],
    hf_config: Optional[Mapping[str, Any]],
    devices: _Devices,
    inherited_env: Mapping[str, str],
) -> Tuple[_Sizes, Findings]:
    """TP and PP (the user's, or the largest the model allows), checked against the devices and
    the TP rules (runner/plan/rules.py); past one machine, runner/plan/cluster.py decides."""
    hw, serve = cfg.hw, cfg.serve
    problems: List[Problem] = []
    notes: List[str] = []
    available = devices.available
    pp = serve.pipeline_parallel_size
    tp = serve.tensor_parallel_size
    if pp < 1:
        problems.append(
            Problem("serve.pipeline_parallel_size", pp, "must be at least 1", "serve.pipeline_parallel_size=1")
        )
        pp = 1
    cluster_plan = None
    if hw.nodes != 1 or hw.ray_address:
        cluster_plan = cluster.plan_cluster(
            hw, tp, pp if pp != 1 else None, shape, inherited_env, serve.distributed_executor_backend
        )
        tp, pp = cluster_plan.tp, cluster_plan.pp
        if cluster_plan.devices_per_node:
            available = cluster_plan.nodes * cluster_plan.devices_per_node
        problems += list(cluster_plan.problems)
        notes += list(cluster_plan.notes)
    if tp is None:
        allowed = rules.valid_tp_sizes(shape, max(available // pp, 1), hf_config)
        if allowed:
            tp = allowed[-1]
            notes.append(f"tensor_parallel_size not set: {tp}, the largest the model allows on {available} device(s)")
        else:  # a quantized layout no split fits: TP 1, whose rule problems say why
            tp = 1
    elif tp < 1:
        problems.append(Problem("serve.tensor_parallel_size", tp, "must be at least 1", "serve.tensor_parallel_size=1"))
        tp = 1
    fits_devices = rules.valid_tp_sizes(shape, max(available // pp, 1), hf_config)
    if tp * pp > available:
        unit = "GPUs" if devices.device is Device.cuda else "CPU cores"
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
        why = rules.tp_violation(shape, tp, hf_config)
        if why:
            fix = (
                f"serve.tensor_parallel_size={_or_list(fits_devices)}"
                if fits_devices
                else f"no TP size up to {max(available // pp, 1)} splits this checkpoint's layout: another "
                "checkpoint of the model (a quantization whose groups divide its layers), or more devices"
            )
            problems.append(Problem("serve.tensor_parallel_size", tp, why, fix))
        too_many_stages = rules.pp_violation(shape, pp)
        if too_many_stages:
            problems.append(too_many_stages)
    partition, step = _layer_partition(cfg, shape, pp, inherited_env)
    sizes = _Sizes(tp, pp, available, tuple(fits_devices), cluster_plan, partition)
    return sizes, Findings(tuple(problems), tuple(notes)) + step


def _layer_partition(
    cfg: RunnerConfig, shape: Optional[ModelShape], pp: int, inherited_env: Mapping[str, str]
) -> Tuple[Tuple[int, ...], Findings]:
    """The decoder layers of each pipeline stage, as vLLM's get_pp_indices will split them
    (VLLM_PP_LAYER_PARTITION from the environment vLLM inherits or hw.env, else its even split)."""
    if shape is None or pp <= 1 or pp > shape.num_hidden_layers:
        return (), Findings()
    env = {**inherited_env, **{str(k): str(v) for k, v in cfg.hw.env.items()}}
    override = env.get("VLLM_PP_LAYER_PARTITION")
    try:
        return memory.pp_layer_partition(shape.num_hidden_layers, pp, override), Findings()
    except ValueError as err:
        even = memory.pp_layer_partition(shape.num_hidden_layers, pp)
        problem = Problem(
            "VLLM_PP_LAYER_PARTITION",
            override,
            f"vLLM would refuse it: {err}",
            f"unset it, or {pp} layer counts summing to {shape.num_hidden_layers} (e.g. {','.join(map(str, even))})",
        )
        return even, Findings((problem,))


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class _Fit:
    estimate: Dict[str, Any]
    util: Optional[float]  # serve.gpu_memory_utilization when it is in range, else None
    predict: Optional[Callable[..., memory.MemoryFit]] = None  # TP size -> fit, on GPUs with a known size


def _memory_fit(
    cfg: RunnerConfig,
    shape: Optional[ModelShape],
    hf_config: Optional[Mapping[str, Any]],
    device: Device,
    sizes: _Sizes,
    visible,
    vllm_version: Optional[str],
    weights_on_disk: Optional[Mapping[str, Any]],
) -> Tuple[_Fit, Findings]:
    """vLLM's own memory arithmetic, predicted (runner/plan/memory.py): the estimate, and what
    does not fit with every override that would make it fit."""
    serve = cfg.serve
    problems: List[Problem] = []
    notes: List[str] = []
    util = serve.gpu_memory_utilization
    if util is not None and not 0 < util <= 1:
        problems.append(
            Problem("serve.gpu_memory_utilization", util, "must be in (0, 1]", "serve.gpu_memory_utilization=0.9")
        )
    util_ok = util if util and 0 < util <= 1 else None
    if shape is None:
        return _Fit({}, util_ok), Findings(tuple(problems), tuple(notes))
    online = memory.online_quantization(serve.quantization, dict(hf_config or {}))
    quant_config = (hf_config or {}).get("quantization_config")
    from_config = None
    if isinstance(quant_config, Mapping) and not weights_on_disk:
        # What a user has before downloading: the checkpoint's layout from its quantization_config.
        from_config = memory.checkpoint_weights_bytes(shape, dict(quant_config), shape.served_dtype_bytes(serve.dtype))

    def weights_for(quantization: Optional[str]) -> int:
        if from_config is not None:
            return from_config  # the checkpoint's quantization decides, whatever serve asks
        if not weights_on_disk:
            return _weights_bytes(shape, serve.dtype, quantization)
        # The files hold the 16-bit checkpoint: the quantized linear layers come off their size.
        saved = _weights_bytes(shape, serve.dtype) - _weights_bytes(shape, serve.dtype, quantization)
        return _weights_from_disk(weights_on_disk, serve.dtype) - saved

    weights = weights_for(online)
    weights_source = "safetensors headers" if weights_on_disk else "parameter count"
    if from_config is not None:
        weights_source = f"config.json quantization_config ({quant_config.get('quant_method')})"
    estimate: Dict[str, Any] = {
        "parameters": shape.parameter_count(),
        "weights_gib": round(weights / GIB, 2),
        "weights_source": weights_source,
    }
    if online:
        estimate["quantization"] = f"{online} (online: linear layers in {memory.ONLINE_WEIGHT_BYTES[online]} byte)"
    quantized = (serve.quantization is not None and not online) or bool(quant_config)
    if quantized and not weights_on_disk and from_config is None:
        notes.append(
            "memory not predicted: a quantized model's weights are sized from its safetensors files, and none are here"
        )
    if shape.recurrent_layers:
        # not counted as attention: that would under-count the KV cache and miscount the weights
        notes.append(
            f"memory not predicted: {shape.recurrent_layers} of {shape.num_hidden_layers} layers keep a recurrent "
            f"state ({shape.recurrent_kind}), which vLLM sizes per request and aligns the attention layers' "
            "block size to; the memory model does not cover them yet (vLLM's start-up log reports the KV cache)"
        )
        if not weights_on_disk:  # a parameter count of attention layers in their place would mislead
            for key in ("parameters", "weights_gib"):
                estimate.pop(key, None)
            estimate["weights_source"] = "not predicted (recurrent layers); the safetensors files give it exactly"
        return _Fit(estimate, util_ok), Findings(tuple(problems), tuple(notes))
    predict = None
    found = Findings(tuple(problems), tuple(notes))
    gpu_bytes, gpu_name, memory_source = _gpu_memory(cfg.hw, visible, cfg.mode is Mode.plan)
    if device is Device.cuda and gpu_bytes and (not quantized or weights_on_disk or from_config is not None):
        memory_version = vllm_version
        if cfg.mode is Mode.plan and not visible:
            # Planning for a GPU machine from elsewhere: its vLLM is not this one.
            memory_version = memory.CALIBRATED_VLLM
        predict = _predictor(
            shape,
            weights_for,
            online,
            gpu_bytes,
            gpu_name,
            sizes,
            serve,
            util_ok,
            max_model_len_for(cfg),
            memory_version,
            quant_config if isinstance(quant_config, Mapping) else None,
        )
        fit = predict(sizes.tp)
        estimate.update(fit=fit.to_dict(), memory_source=memory_source, memory_vllm=memory_version)
        bandwidth = cfg.hw.memory_bandwidth_gbps or next(
            (v for k, v in KNOWN_BANDWIDTH_GBPS.items() if gpu_name and k in gpu_name), None
        )
        if bandwidth:
            estimate["memory_bandwidth_gbps"] = bandwidth
        estimate["fit_table"] = _fit_table(shape, hf_config, predict, max(sizes.available // sizes.pp, 1))
        fp8_offered = (
            serve.quantization is None
            and not quantized
            and shape.served_dtype_bytes(serve.dtype) == 2
            and _fp8_capable(visible, gpu_name)
        )
        found += _gpu_fit_findings(cfg, shape, fit, predict, sizes, util_ok, memory_version, vllm_version, fp8_offered)
    elif device is Device.cpu:
        fit = memory.predict_cpu(
            shape,
            sizes.tp,
            weights,
            cfg.hw.cpu_kvcache_space_gib,
            pp=sizes.pp,
            max_model_len=max_model_len_for(cfg),
            kv_cache_dtype=serve.kv_cache_dtype,
            layer_partition=sizes.layer_partition or None,
            stage_weights=memory.stage_weights_bytes(
                shape, sizes.layer_partition, weights, shape.served_dtype_bytes(serve.dtype), online
            )
            if sizes.layer_partition
            else None,
        )
        estimate.update(
            fit=fit.to_dict(),
            memory_source=f"hw.cpu_kvcache_space_gib ({cfg.hw.cpu_kvcache_space_gib} GiB per rank)",
        )
        found += _cpu_fit_findings(cfg, fit)
    return _Fit(estimate, util_ok, predict), found


def _gpu_fit_findings(
    cfg: RunnerConfig,
    shape: ModelShape,
    fit: memory.MemoryFit,
    predict: Callable[..., memory.MemoryFit],
    sizes: _Sizes,
    util: Optional[float],
    memory_version: Optional[str],
    vllm_version: Optional[str],
    fp8_offered: bool = False,
) -> Findings:
    """What the GPU fit means for the user: a note on what vLLM will do, a warning, or the
    problem with every override that would make it fit."""
    if memory_version != vllm_version and fit.cuda_graph_gib:
        calibrated = (
            f"memory predicted for vLLM {memory_version} (the release it is calibrated on): vLLM 0.27+ also sets "
            f"the CUDA graphs' ~{fit.cuda_graph_gib:.2f} GiB per GPU aside, out of the KV cache"
        )
        found = Findings(notes=(calibrated,))
    else:
        found = Findings()
    if cfg.serve.max_model_len == -1 and fit.kv_cache_gib > 0 and fit.weights_gib_per_gpu < fit.requested_gib:
        tokens = min(fit.kv_cache_tokens, shape.context_length or fit.kv_cache_tokens)
        return found + Findings(notes=(f"max_model_len -1: vLLM fits it to memory; predicted {tokens:,} tokens",))
    if fit.fits and fit.oom_risk:
        encoder = fit.vision_encoder_serving_gib
        warning = (
            f"WARNING: only {fit.headroom_gib:.2f} GiB would stay free on each GPU after start-up; vLLM may run out of "
            + (
                f"memory in its first full batch, or at its first large image: the vision encoder's "
                f"{encoder:.2f} GiB for its largest image batch run outside vLLM's own memory profile (read from "
                "vLLM 0.26's source, not measured): "
                if encoder
                else "memory in its first full batch (measured on 80 GB cards, not on this one): "
            )
            + f"serve.gpu_memory_utilization={fit.max_safe_utilization:.2f} is safer"
        )
        return found + Findings(notes=(warning,))
    if not fit.fits:
        return found + Findings((_memory_problem(fit, predict, sizes.fits_devices, cfg.serve, util, fp8_offered),))
    return found


def _cpu_fit_findings(cfg: RunnerConfig, fit: memory.MemoryFit) -> Findings:
    """The KV cache against hw.cpu_kvcache_space_gib (VLLM_CPU_KVCACHE_SPACE, per rank)."""
    if fit.fits or cfg.hw.cpu_kvcache_space_gib < 1:
        return Findings()
    need = math.ceil(fit.max_model_len * fit.kv_bytes_per_token / GIB)
    shorter = memory.safe_max_model_len(fit) or memory.BLOCK_SIZE
    problem = Problem(
        "serve.max_model_len",
        fit.max_model_len,
        fit.why_not,
        f"hw.cpu_kvcache_space_gib={need}, or serve.max_model_len={shorter}",
    )
    return Findings((problem,))


def _narrow_tp_fixes(
    found: Findings, predict: Callable[..., memory.MemoryFit], fits_devices: Sequence[int]
) -> Findings:
    """A TP size the rules allow but the memory does not is no fix to offer: the TP problems
    found so far name only the sizes that also fit."""
    fitting = [t for t in fits_devices if predict(t).fits]
    if not fitting or fitting == list(fits_devices):
        return found
    old_fix = f"serve.tensor_parallel_size={_or_list(fits_devices)}"
    new_fix = f"serve.tensor_parallel_size={_or_list(fitting)}"
    problems = tuple(dataclasses.replace(p, fix=new_fix) if p.fix == old_fix else p for p in found.problems)
    return Findings(problems, found.notes)


# --------------------------------------------------------------------------- which GPUs


@dataclass(frozen=True)
class _Placement:
    devices: Tuple[int, ...]
    record: Dict[str, Any]  # the manifest's placement: devices, reason, links, …
    interconnect: Optional[Interconnect]  # what the chosen GPUs are linked by (the profile's when unknown)


def _placement(
    cfg: RunnerConfig,
    probe: HardwareProbe,
    visible,
    devices: _Devices,
    sizes: _Sizes,
    shape: Optional[ModelShape],
    util: Optional[float],
    planning_only: bool,
) -> Tuple[_Placement, Findings]:
    """Which GPUs: placed by topology and free memory (runner/plan/topology.py), then checked for
    what the chosen cards can do (bf16, free memory)."""
    hw, serve = cfg.hw, cfg.serve
    world = sizes.world
    if devices.device is Device.cpu:
        # every core the profile allows, shared out among the ranks
        return _Placement(devices.pool, {}, hw.interconnect), Findings()
    if sizes.cluster is not None:
        # Ray places the ranks, node by node; the head's own GPUs are what this probe sees.
        chosen = tuple(devices.pool[: sizes.cluster.devices_per_node or world])
        record = {
            "devices": list(chosen),
            "reason": f"Ray places the {world} ranks over {sizes.cluster.nodes} node(s); this is the head's share",
        }
        return _Placement(chosen, record, hw.interconnect), Findings()
    problems: List[Problem] = []
    notes: List[str] = []
    interconnect = hw.interconnect
    chosen, record, placement_problem = _place(probe, visible, devices.pool, world, util, planning_only)
    if planning_only and len(visible) < sizes.available:
        notes.append(
            f"planned for {hw.name}'s declared {sizes.available} GPU(s)"
            + (f" of {hw.gpu_memory_gib:g} GiB" if hw.gpu_memory_gib else "")
            + f": {'no GPU is' if not visible else f'only {len(visible)} GPU(s) are'} visible here"
        )
    if placement_problem:
        problems.append(placement_problem)
    actual = record.get("interconnect")
    if actual in ("nvlink", "pcie"):
        if hw.interconnect is Interconnect.nvlink and actual == "pcie":
            problems.append(
                Problem(
                    "hw",
                    hw.name,
                    f"the profile says NVLink, but GPUs {_or_list(chosen)} are linked by "
                    f"{record.get('worst_link')} (PCIe)",
                    f"hw=auto, or hw=pcie-{len(visible)}gpu",
                )
            )
        interconnect = Interconnect(actual)
    if not planning_only and visible and not placement_problem:
        chosen_gpus = [g for g in visible if g.index in chosen]
        for found in (
            rules.bf16_problem(serve.dtype, shape.torch_dtype if shape else None, chosen_gpus),
            rules.free_memory_problem(util, chosen_gpus, DEFAULT_GPU_MEMORY_UTILIZATION),
        ):
            if found:
                problems.append(found)
    return _Placement(tuple(chosen), record, interconnect), Findings(tuple(problems), tuple(notes))


# --------------------------------------------------------------------------- every other value


def _value_problems(cfg: RunnerConfig, shape: Optional[ModelShape], device: Device) -> Findings:
    """Everything else that must be positive, in range, or one of a set."""
    serve = cfg.serve
    problems: List[Problem] = []
    if not 0 < serve.port < 65536:
        problems.append(Problem("serve.port", serve.port, "not a TCP port (1-65535)", "serve.port=8000"))
    max_model_len = serve.max_model_len or cfg.model.max_model_len
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
    if cfg.hw.cpu_cores is not None and cfg.hw.cpu_cores < 1 and device is Device.cpu:
        problems.append(Problem("hw.cpu_cores", cfg.hw.cpu_cores, "must be at least 1", "hw.cpu_cores=2, or hw=auto"))
    return Findings(tuple(problems))


def _extra_args_problems(extra_args: Mapping[str, Any]) -> Findings:
    """serve.extra_args may not carry a secret, nor a flag the runner renders from its own keys."""
    problems: List[Problem] = []
    for key in extra_args:
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
            problems.append(
                Problem(
                    f"serve.extra_args.{key}",
                    extra_args[key],
                    f"the runner sets --{key.replace('_', '-')} itself",
                    f"{MANAGED_FLAGS[flag]}={extra_args[key]}",
                )
            )
    return Findings(tuple(problems))


def _cuda_mask_problems(probe: HardwareProbe) -> Findings:
    """The inherited CUDA_VISIBLE_DEVICES: indices or UUIDs, none twice, all on this machine."""
    mask = probe.inherited_cuda_mask
    tokens = mask.split(",")
    # ASCII digits only (str.isdigit says yes to '²' and '٠'), and a UUID prefix after GPU-/MIG-
    bad = [t for t in tokens if not CUDA_DEVICE_TOKEN.fullmatch(t.strip())]
    if bad:
        return Findings(
            (
                Problem(
                    "CUDA_VISIBLE_DEVICES",
                    mask,
                    f"not a list of GPU indices or UUIDs ({bad[0]!r})",
                    "export CUDA_VISIBLE_DEVICES=0,1 (or unset it)",
                ),
            )
        )
    if len(set(t.strip() for t in tokens)) != len(tokens):
        return Findings(
            (
                Problem(
                    "CUDA_VISIBLE_DEVICES",
                    mask,
                    "names a GPU twice",
                    f"export CUDA_VISIBLE_DEVICES={','.join(dict.fromkeys(t.strip() for t in tokens))}",
                ),
            )
        )
    if not probe.gpus:
        return Findings()
    known = {str(g.index) for g in probe.gpus}
    missing = [t.strip() for t in tokens if t.strip().isascii() and t.strip().isdigit() and t.strip() not in known]
    missing += [
        t.strip()
        for t in tokens
        if t.strip().startswith(("GPU-", "MIG-")) and not any((g.uuid or "").startswith(t.strip()) for g in probe.gpus)
    ]
    if not missing:
        return Findings()
    have = ",".join(sorted(known, key=int))
    return Findings(
        (
            Problem(
                "CUDA_VISIBLE_DEVICES",
                mask,
                f"names GPU {missing[0]}, which this machine does not have (it has {have})",
                f"export CUDA_VISIBLE_DEVICES={have} (or unset it)",
            ),
        )
    )


# --------------------------------------------------------------------------- environment and argv


def _environment(
    cfg: RunnerConfig,
    probe: HardwareProbe,
    device: Device,
    sizes: _Sizes,
    chosen: Sequence[int],
    path: Optional[str],
    inherited_env: Mapping[str, str],
) -> Tuple[Dict[str, str], Findings]:
    """Only what the runner changes; the launch adds it over the inherited environment."""
    hw, serve, cluster_plan = cfg.hw, cfg.serve, sizes.cluster
    notes: List[str] = []
    env: Dict[str, str] = {}
    if cluster_plan is not None:
        env.update(cluster_plan.env)
        env.update(cluster_plan.node_env.get(cluster_plan.head, {}))
        if device is Device.cuda and "NCCL_DEBUG" not in inherited_env:
            env["NCCL_DEBUG"] = "INFO"  # the manifest reads which transport NCCL chose across nodes
    if device is Device.cuda and cluster_plan is not None:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    elif device is Device.cuda:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in chosen)
        failed = topology.p2p_failed_pairs(probe.p2p, chosen)
        if failed and "NCCL_P2P_DISABLE" not in inherited_env:
            env["NCCL_P2P_DISABLE"] = "1"
            i, j = failed[0]
            notes.append(
                f"NCCL_P2P_DISABLE=1: the driver reports P2P {probe.p2p.get((i, j))} between GPUs {i} and {j}; "
                "NCCL would hang on that path"
            )
    else:
        env["VLLM_CPU_OMP_THREADS_BIND"] = _cpu_bind(chosen, sizes.world, probe.cpu_numa_nodes)
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
    return env, Findings(notes=tuple(notes))


def _argv(
    cfg: RunnerConfig,
    python: str,
    path: Optional[str],
    device: Device,
    sizes: _Sizes,
    interconnect: Optional[Interconnect],
    vllm_version: Optional[str],
    inherited_env: Mapping[str, str],
) -> Tuple[List[str], Findings]:
    """The API server's command line: the runner's own keys, then serve.extra_args (with the
    workarounds this machine needs merged in), then the cluster's flags."""
    model, serve = cfg.model, cfg.serve
    served_name = serve.served_model_name or model.name
    argv: List[str] = [python, "-m", compat.API_SERVER_MODULE, "--model", str(path or "<model.path>")]
    argv += ["--served-model-name", served_name, "--host", serve.host, "--port", str(serve.port)]
    argv += ["--tensor-parallel-size", str(sizes.tp)]
    if sizes.pp != 1:
        argv += ["--pipeline-parallel-size", str(sizes.pp)]
    if model.load_format != "auto":
        argv += ["--load-format", model.load_format]
    if model.revision:
        argv += ["--revision", model.revision]
    if serve.dtype != "auto":
        argv += ["--dtype", serve.dtype]
    for key, value in (
        ("max_model_len", serve.max_model_len or model.max_model_len),
        ("gpu_memory_utilization", serve.gpu_memory_utilization if device is Device.cuda else None),
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
    extra, notes = _extra_args(cfg, device, sizes.tp, interconnect, vllm_version, inherited_env)
    argv += render_extra_args(extra)
    if sizes.cluster is not None:
        flags = list(sizes.cluster.argv_extra)
        for i in range(0, len(flags) - 1, 2):
            if flags[i] not in argv:
                argv += flags[i : i + 2]
    return argv, Findings(notes=tuple(notes))


def _extra_args(
    cfg: RunnerConfig,
    device: Device,
    tp: int,
    interconnect: Optional[Interconnect],
    vllm_version: Optional[str],
    inherited_env: Mapping[str, str],
) -> Tuple[Dict[str, Any], List[str]]:
    """serve.extra_args, with what TP >= 2 needs on this machine added where the user said nothing."""
    hw = cfg.hw
    extra = dict(cfg.serve.extra_args)
    notes: List[str] = []
    if device is not Device.cuda or tp < 2:
        return extra, notes
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
    if interconnect is Interconnect.pcie and tp > 2 and "disable_custom_all_reduce" not in extra:
        extra["disable_custom_all_reduce"] = True
        notes.append("custom all-reduce off: vLLM's supports at most 2 GPUs over PCIe and would warn and skip it")
    return extra, notes


def _version_findings(vllm_version: Optional[str], planning_only: bool, python: str) -> Findings:
    if vllm_version is None and not planning_only:
        return Findings(
            (
                Problem(
                    "launch.python",
                    python,
                    "no vLLM is installed for this interpreter",
                    "install vLLM (README: set-up), or launch.python=/path/to/python-with-vllm",
                ),
            )
        )
    if vllm_version is not None and not compat.is_supported(vllm_version):
        return Findings(notes=(f"vLLM {vllm_version} is outside the tested range 0.26-0.33",))
    return Findings()
