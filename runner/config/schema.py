"""The config schema: dataclasses registered in Hydra's ConfigStore.

YAML files under ``runner/conf/`` are data; these classes are the types. A misspelt key or a
wrong type fails when Hydra composes the config, not minutes later inside vLLM.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class Mode(str, enum.Enum):
    serve = "serve"  # launch, verify, keep serving until Ctrl-C
    check = "check"  # launch, verify, write the manifest, stop
    plan = "plan"  # resolve and validate only; nothing is launched
    doctor = "doctor"  # plan + the machine's own checks (vLLM imports, CUDA, /dev/shm, …)
    bench = "bench"  # check, then vLLM's own `vllm bench serve` against the server, then stop
    tune = "tune"  # plan a search space, launch the most promising, bisect the load under an SLO (runner/tune)


class Device(str, enum.Enum):
    auto = "auto"  # from the hardware probe: cuda when NVML sees a GPU, else cpu
    cuda = "cuda"
    cpu = "cpu"


class Interconnect(str, enum.Enum):
    auto = "auto"
    nvlink = "nvlink"
    pcie = "pcie"
    none = "none"


class ChatTemplate(str, enum.Enum):
    """The chat format written into the tokenizer of a model the runner writes itself."""

    plain = "plain"  # role: text lines, no special tokens (tiny models)
    llama3 = "llama3"  # <|start_header_id|>role<|end_header_id|> … <|eot_id|>
    chatml = "chatml"  # Qwen2.5: <|im_start|>role … <|im_end|>
    mistral = "mistral"  # Mistral/Mixtral: [INST] … [/INST]


class Processor(str, enum.Enum):
    """The multimodal processor whose files are written beside the tokenizer of a model the
    runner writes itself (runner/launch/generate.py's PROCESSOR_FORMATS)."""

    none = "none"  # text only: config.json and the tokenizer
    # Qwen2.5-VL: preprocessor_config.json (Qwen2VLImageProcessor, Qwen2_5_VLProcessor), the
    # vision tokens at config.json's ids, a chat template that places images and videos
    qwen2_5_vl = "qwen2_5_vl"


class ModelSource(str, enum.Enum):
    generated = "generated"  # random weights written locally (tiny-llama)
    shape = "shape"  # published config.json numbers; real weights via model.path, or dummy
    local = "local"  # any model directory (or hub id) given by model.path


@dataclass
class HwConfig:
    name: str = "auto"
    device: Device = Device.auto
    # GPUs the profile declares; None means "as many as the probe sees" (hw=auto).
    gpu_count: Optional[int] = None
    gpu_memory_gib: Optional[float] = None
    gpu_name: Optional[str] = None
    interconnect: Interconnect = Interconnect.auto
    # Whether NVLink multicast (NVLS) works on this machine. None: unknown, and the
    # runner then keeps vLLM away from the all-reduce fusion that needs it.
    nvlink_multicast: Optional[bool] = None
    # CPU profiles: how many cores to bind ranks to (None: all the runner may use).
    cpu_cores: Optional[int] = None
    cpu_kvcache_space_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE; vLLM parses it as an integer
    env: Dict[str, str] = field(default_factory=dict)
    # ---- past one machine (runner/plan/cluster.py; docs/multinode.md)
    # Machines in the cluster. 1: everything above describes this machine alone. >1: vLLM
    # runs on Ray (--distributed-executor-backend ray), TP inside a node, PP across nodes.
    nodes: int = 1
    # Devices on each node: GPUs, or CPU ranks (one core each) on device=cpu. None: gpu_count
    # (cpu_cores on the CPU). gpu_count stays what *this* machine (the Ray head) has, which
    # is what the probe checks before launch.
    gpus_per_node: Optional[int] = None
    # How the nodes reach each other: "infiniband" (NCCL over IB verbs / RoCE) or "ethernet"
    # (NCCL over TCP sockets, with IB switched off). None: unknown, NCCL picks.
    node_interconnect: Optional[str] = None
    # The network interface NCCL and gloo bind to on every node (NCCL_SOCKET_IFNAME,
    # GLOO_SOCKET_IFNAME): ib0, eth0, lo for a loopback rehearsal. None: let them guess,
    # which on multi-homed nodes is often the wrong (docker, management) interface.
    network_interface: Optional[str] = None
    # Attach to this Ray cluster (host:port of `ray start --head`, or "auto"). None: a single
    # node, or one the runner tells you how to start (runner.plan.cluster.ray_start_commands).
    ray_address: Optional[str] = None
    # Each node's IP, the head (where the runner and the API server run) first. Each node's
    # VLLM_HOST_IP and `ray start --node-ip-address`. Empty: placeholders in the commands.
    node_ips: List[str] = field(default_factory=list)
    # SLURM job settings for `-m hydra/launcher=slurm` (runner/conf/hydra/launcher/slurm.yaml reads
    # them): partition, time_min, gpus_per_node, account, qos, cpus_per_task, mem_gb, …
    slurm: Dict[str, Any] = field(default_factory=dict)
    # Each GPU's memory bandwidth in GB/s (decimal), for the sweep report's roofline
    # fraction: H100 SXM 3350, L40S 864. None: the report leaves that column empty.
    memory_bandwidth_gbps: Optional[float] = None
    # Card facts for the performance prediction (runner/plan/cards.py), over the table's figures for the
    # GPU NVML names: dense TFLOPS, link bandwidth in GB/s (both directions). A CPU or a card not in the
    # table is predicted when memory_bandwidth_gbps and peak_bf16_tflops are both set.
    peak_bf16_tflops: Optional[float] = None
    peak_fp8_tflops: Optional[float] = None
    nvlink_gbps: Optional[float] = None
    pcie_gbps: Optional[float] = None


@dataclass
class ModelConfig:
    name: str = MISSING  # the served model name clients use
    source: ModelSource = ModelSource.shape
    # A local directory or a hub id. For shape entries, None means "rehearse": it then
    # requires load_format=dummy and the runner writes config.json + a tokenizer.
    path: Optional[str] = None
    load_format: str = "auto"
    revision: Optional[str] = None
    # The architecture's published config.json (shape entries) or the generated one.
    hf_config: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # generated weights only
    # Context length the runner asks for when serve.max_model_len is not set (None: the
    # model's own). Shape entries with 128k contexts set less, so a rehearsal fits.
    max_model_len: Optional[int] = None
    # Generated and dummy-weight models only (a real checkpoint brings its own): the chat
    # format their tokenizer gets, so /v1/chat/completions answers.
    chat_template: ChatTemplate = ChatTemplate.plain
    # Likewise: the multimodal processor its directory gets (vLLM builds it at start-up, to
    # size the vision encoder's budget), none for a text model.
    processor: Processor = Processor.none


@dataclass
class ServeConfig:
    """vLLM's own long option names; anything else goes through extra_args."""

    # None: every usable device, reduced to the largest size the model allows.
    tensor_parallel_size: Optional[int] = None
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: Optional[float] = None
    max_model_len: Optional[int] = None
    max_num_seqs: Optional[int] = None
    max_num_batched_tokens: Optional[int] = None
    dtype: str = "auto"
    kv_cache_dtype: Optional[str] = None
    quantization: Optional[str] = None
    enforce_eager: bool = False
    trust_remote_code: bool = False
    seed: Optional[int] = None
    distributed_executor_backend: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: Optional[str] = None
    # The environment variable that holds the API key (never a config value: configs are
    # shared and logged). vLLM reads VLLM_API_KEY itself; another name is passed on as that.
    api_key_env: Optional[str] = "VLLM_API_KEY"
    # --flag value pairs passed through verbatim: {enable_prefix_caching: true,
    # compilation_config: {...}}. True renders as a bare flag, False as --no-flag.
    extra_args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class VerifyConfig:
    prompt: str = "The capital of France is"
    max_tokens: int = 8
    ready_timeout_s: float = 900.0
    request_timeout_s: float = 120.0
    # Compare this server's teacher-forced logprobs with a TP=1 reference (recorded for the
    # same model files and dtype, or launched in mode=check). None: on in sweeps only.
    tp_equivalence: Optional[bool] = None
    # A reference file to compare with instead (<cache_dir>/references/KEY.json).
    tp_reference: Optional[str] = None


@dataclass
class LaunchConfig:
    # Interpreter that runs vLLM; None: the runner's own.
    python: Optional[str] = None
    stop_grace_s: float = 20.0
    # Copy vLLM's output to the console as well as to vllm.log.
    echo_log: bool = False
    # Preflight: a few seconds of all-reduce over the chosen devices (NCCL on GPUs, gloo on
    # the CPU) before vLLM starts, under a timeout: catches a hanging P2P path in seconds
    # and records the bus bandwidth. If it hangs with P2P and passes with
    # NCCL_P2P_DISABLE=1, the launch gets that fallback.
    collective_check: bool = False
    collective_timeout_s: float = 60.0
    collective_size_mib: int = 64


@dataclass
class BenchConfig:
    """mode=bench's workload for vLLM's own `vllm bench serve` (runner/measure/bench.py)."""

    dataset: str = "random"  # the only one: needs no download
    input_len: int = 1024
    output_len: int = 128
    num_prompts: int = 200
    # when set: each concurrency c runs max(num_prompts, prompts_per_concurrency × c) requests
    prompts_per_concurrency: Optional[int] = None
    # one benchmark per concurrency
    concurrencies: List[int] = field(default_factory=lambda: [1, 8, 32])
    ignore_eos: bool = True  # every request makes output_len tokens
    seed: int = 0
    request_rate: Optional[float] = None  # None: all at once, the concurrency alone sets the load
    timeout_s: float = 1800.0  # per concurrency


@dataclass
class SloConfig:
    """The latency target mode=tune serves under, as vLLM's bench reports it (p99 over a run's requests)."""

    ttft_p99_ms: Optional[float] = None
    tpot_p99_ms: Optional[float] = None
    e2e_p99_ms: Optional[float] = None  # None: no end-to-end target


@dataclass
class TuneConfig:
    """mode=tune (runner/tune, docs/tune.md): which configuration to serve under a latency target."""

    slo: SloConfig = field(default_factory=SloConfig)
    # override key -> the values to try, e.g. {serve.max_num_seqs: [64, 256], serve.quantization: [null, fp8]};
    # the candidates are every combination, on top of the run's own overrides
    space: Dict[str, Any] = field(default_factory=dict)
    calibration: Optional[str] = None  # a file from `python -m runner.measure.calibrate`; None: stated defaults
    max_launches: Optional[int] = None  # None: as many as pruning leaves
    prune: bool = True  # False: measure every candidate that plans (the exhaustive grid, for comparison)
    load: str = "concurrency"  # what the bisection raises: concurrency | rate (requests/s)
    # One benchmark at the first load before the search, not judged: a server's first batches run cold
    # (the H200 grid's first probes: bf16 median TTFT 362 ms at c=32, then 150 ms at c=48)
    warmup: bool = True


@dataclass
class RunnerConfig:
    hw: HwConfig = MISSING
    model: ModelConfig = MISSING
    serve: ServeConfig = field(default_factory=ServeConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    mode: Mode = Mode.serve
    # Skip the run when its directory already holds a verified manifest of the same mode
    # (re-running a sweep with a fixed hydra.sweep.dir picks up where it stopped).
    resume: bool = False
    # Generated and materialised model directories live here.
    cache_dir: str = "~/.cache/vllm-tp-runner"
    # replay=outputs/…/manifest.json: run what that manifest ran (runner/record/replay.py)
    replay: Optional[str] = None


def _path_safe(text: str) -> str:
    """A sweep point's directory name from its overrides: no path separators in it."""
    return text.replace("/", "_").replace(" ", "") or "default"


def register_configs() -> None:
    OmegaConf.register_new_resolver("path_safe", _path_safe, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="runner_schema", node=RunnerConfig)
    cs.store(group="hw", name="base_hw", node=HwConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="serve", name="base_serve", node=ServeConfig)
    cs.store(group="bench", name="base_bench", node=BenchConfig)


__all__: List[str] = [
    "BenchConfig",
    "Device",
    "HwConfig",
    "Interconnect",
    "LaunchConfig",
    "Mode",
    "ModelConfig",
    "ModelSource",
    "RunnerConfig",
    "ServeConfig",
    "SloConfig",
    "TuneConfig",
    "VerifyConfig",
    "register_configs",
]
