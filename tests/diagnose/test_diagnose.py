# ruff: noqa: E501 - the logs below keep vLLM's own line lengths
"""runner.diagnose.signatures: vLLM logs of failed starts -> the cause and the override that fixes it.

Each log is shaped like vLLM's own output (process prefixes, the traceback's ERROR lines, the
fallout after the real error), with the message text as vLLM, torch or NCCL prints it (the
file is named beside each rule in runner/diagnose/signatures.py); the clean logs include the real
captures in docs/validation/."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path

import pytest

from runner.diagnose.signatures import EVIDENCE_CHARS, NOTE_CAUSES, Diagnosis, diagnose

REPO = Path(__file__).resolve().parents[2]


def _run_failed(log_path: Path) -> bool:
    manifest = log_path.with_name(log_path.name.replace(".vllm.log", ".manifest.json"))
    return manifest.is_file() and json.loads(manifest.read_text()).get("status") == "failed"


REAL_LOGS = sorted((REPO / "docs" / "validation").glob("*/*.vllm.log"))
REAL_CLEAN_LOGS = [p for p in REAL_LOGS if not _run_failed(p)]
REAL_OOM_LOG = REPO / "docs/validation/2026-11-27-h100x4-memory/70b-tp2-u95.vllm.log"


VERDICTS = REPO / "docs/validation/2026-11-27-vllm-verdicts"


def test_real_kv_head_assertion_is_named():
    """Phi-3-medium (40 heads, 10 KV heads) at TP=4 on H100s: vLLM accepted the config and
    died on every rank building the model, where Llama's attention asserts the KV split."""
    found = diagnose(
        (VERDICTS / "phi-3-medium-4k-instruct-tp4.refused.log").read_text(),
        {"tensor_parallel_size": 4, "gpu_count": 4, "num_key_value_heads": 10, "valid_tp_sizes": [1, 2]},
    )
    assert found and found.cause == "kv_heads_not_divisible"
    assert "10 KV heads" in found.summary and found.fix == "serve.tensor_parallel_size=2"


@pytest.mark.parametrize("name, heads, tp", [("cpu-qwen2.5-7b-instruct-tp3", 28, 3), ("cpu-falcon-7b-tp2", 71, 2)])
def test_real_heads_refusals_are_named(name, heads, tp):
    found = diagnose((VERDICTS / f"{name}.refused.log").read_text(), {"tensor_parallel_size": tp})
    assert found and found.cause == "heads_not_divisible" and f"{heads} attention heads" in found.summary


def test_real_oom_after_cuda_graphs_names_the_utilization():
    """Llama-3.1-70B, TP 2, utilization 0.95 on H100s: vLLM 0.26 sized the KV cache, captured
    CUDA graphs outside its request, and a sampling step's 502 MiB did not fit."""
    found = diagnose(
        REAL_OOM_LOG.read_text(), {"gpu_memory_utilization": 0.95, "max_model_len": 8192, "tensor_parallel_size": 2}
    )
    assert found and found.cause == "cuda_oom"
    assert "after the KV cache was allocated" in found.summary
    assert found.fix.startswith("serve.gpu_memory_utilization=0.92")


def log(text: str) -> str:
    return textwrap.dedent(text).strip("\n") + "\n"


# What runner.plan knows about Llama-3.1-70B on four H100s at TP=4.
H100X4 = {
    "device": "cuda",
    "interconnect": "nvlink",
    "gpu_count": 4,
    "num_attention_heads": 64,
    "valid_tp_sizes": [1, 2, 4, 8],
    "tensor_parallel_size": 4,
    "pipeline_parallel_size": 1,
    "max_model_len": 8192,
    "gpu_memory_utilization": 0.9,
}
PCIE4 = {**H100X4, "interconnect": "pcie"}

ENGINE_FALLOUT = """\
(EngineCore pid=1710) ERROR 11-27 02:40:56 [core.py:1510] EngineCore failed to start.
(APIServer pid=1236) Traceback (most recent call last):
(APIServer pid=1236)   File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/utils.py", line 1431, in wait_for_engine_startup
(APIServer pid=1236)     raise RuntimeError(
(APIServer pid=1236) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore': 1}
"""

HEADS = log("""
    (APIServer pid=4127) INFO 11-27 03:12:40 [api_utils.py:273] non-default args: {'host': '127.0.0.1', 'model': '/models/Llama-3.1-70B', 'served_model_name': ['llama70b'], 'tensor_parallel_size': 3}
    (APIServer pid=4127) INFO 11-27 03:12:52 [model.py:623] Resolved architecture: LlamaForCausalLM
    (APIServer pid=4127) INFO 11-27 03:12:52 [model.py:1788] Using max model len 8192
    (APIServer pid=4127) Traceback (most recent call last):
    (APIServer pid=4127)   File "/usr/local/lib/python3.12/dist-packages/vllm/engine/arg_utils.py", line 1911, in create_engine_config
    (APIServer pid=4127)     config = VllmConfig(
    (APIServer pid=4127)              ^^^^^^^^^^^
    (APIServer pid=4127) pydantic_core._pydantic_core.ValidationError: 1 validation error for VllmConfig
    (APIServer pid=4127)   Value error, Total number of attention heads (64) must be divisible by tensor parallel size (3). [type=value_error, input_value=ArgsKwargs((), {'model_config': ...}), input_type=ArgsKwargs]
""")

WORLD_SIZE = log("""
    (APIServer pid=2301) INFO 11-27 03:20:11 [api_utils.py:273] non-default args: {'model': '/models/Llama-3.1-70B', 'tensor_parallel_size': 4}
    (APIServer pid=2301) INFO 11-27 03:20:19 [model.py:623] Resolved architecture: LlamaForCausalLM
    (APIServer pid=2301) Traceback (most recent call last):
    (APIServer pid=2301)   File "/usr/local/lib/python3.12/dist-packages/vllm/engine/arg_utils.py", line 1760, in create_engine_config
    (APIServer pid=2301)     parallel_config = ParallelConfig(
    (APIServer pid=2301) pydantic_core._pydantic_core.ValidationError: 1 validation error for ParallelConfig
    (APIServer pid=2301)   Value error, World size (4) is larger than the number of available GPUs (2) in this node. If this is intentional and you are using:
    (APIServer pid=2301) - ray, set '--distributed-executor-backend ray'.
    (APIServer pid=2301) - multiprocessing, set '--nnodes' appropriately. [type=value_error, input_value=ArgsKwargs((), {...}), input_type=ArgsKwargs]
""")

INVALID_ORDINAL = (
    log("""
    (Worker pid=3318) INFO 11-27 03:31:02 [parallel_state.py:1615] world_size=4 rank=2 local_rank=2 distributed_init_method=tcp://127.0.0.1:41223 backend=nccl
    (Worker pid=3318) ERROR 11-27 03:31:02 [multiproc_executor.py:953] WorkerProc failed to start.
    (Worker pid=3318) ERROR 11-27 03:31:02 [multiproc_executor.py:953] Traceback (most recent call last):
    (Worker pid=3318) ERROR 11-27 03:31:02 [multiproc_executor.py:953]   File "/usr/local/lib/python3.12/dist-packages/vllm/v1/worker/gpu_worker.py", line 281, in init_device
    (Worker pid=3318) ERROR 11-27 03:31:02 [multiproc_executor.py:953]     torch.accelerator.set_device_index(self.device)
    (Worker pid=3318) ERROR 11-27 03:31:02 [multiproc_executor.py:953] torch.AcceleratorError: CUDA error: invalid device ordinal
    (Worker pid=3318) ERROR 11-27 03:31:02 [multiproc_executor.py:953] GPU device may be out of range, do you have enough GPUs?
""")
    + ENGINE_FALLOUT
)

PLACEMENT_GROUP = (
    log("""
    (EngineCore pid=880) WARNING 11-27 04:02:10 [ray_utils.py:543] Tensor parallel size (8) exceeds available GPUs (4). This may result in Ray placement group allocation failures. Consider reducing tensor_parallel_size to 4 or less, or ensure your Ray cluster has 8 GPUs available.
    (EngineCore pid=880) INFO 11-27 04:02:10 [ray_utils.py:607] No current placement group found. Creating a new placement group.
    (EngineCore pid=880) INFO 11-27 04:02:20 [ray_utils.py:466] Waiting for creating a placement group of specs for 10 seconds. specs=[{'GPU': 1.0, 'node:10.0.0.5': 0.001}, {'GPU': 1.0}, {'GPU': 1.0}, {'GPU': 1.0}, {'GPU': 1.0}, {'GPU': 1.0}, {'GPU': 1.0}, {'GPU': 1.0}]. Check `ray status` and `ray list nodes` to see if you have enough resources, and make sure the IP addresses used by ray cluster are the same as VLLM_HOST_IP environment variable specified in each node if you are running on a multi-node.
    (EngineCore pid=880) ERROR 11-27 04:32:10 [core.py:1510] ValueError: Cannot provide a placement group requiring 8 GPUs (placement_group_specs=[{'GPU': 1.0, 'node:10.0.0.5': 0.001}, {'GPU': 1.0}, {'GPU': 1.0}, {'GPU': 1.0}, {'GPU': 1.0}, {'GPU': 1.0}, {'GPU': 1.0}, {'GPU': 1.0}]) within 1800 seconds.
""")
    + ENGINE_FALLOUT
)

NCCL_WATCHDOG = (
    log("""
    (Worker pid=5120) INFO 11-27 05:10:03 [parallel_state.py:1615] world_size=4 rank=0 local_rank=0 distributed_init_method=tcp://127.0.0.1:51713 backend=nccl
    (Worker pid=5120) INFO 11-27 05:10:04 [pynccl.py:113] vLLM is using nccl==2.28.9
    (Worker_TP0 pid=5120) [rank0]:[E1127 05:20:04.537131842 ProcessGroupNCCL.cpp:632] [Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600009 milliseconds before timing out.
    (Worker_TP0 pid=5120) [rank0]:[E1127 05:20:04.537356909 ProcessGroupNCCL.cpp:2271] [PG ID 0 PG GUID 0(default_pg) Rank 0]  failure detected by watchdog at work sequence id: 1 PG status: last enqueued work: 1, last completed work: -1
    (Worker_TP0 pid=5120) [rank0]:[E1127 05:20:04.539557761 ProcessGroupNCCL.cpp:684] [Rank 0] To avoid data inconsistency, we are taking the entire process down.
""")
    + ENGINE_FALLOUT
)

NCCL_SYSTEM_ERROR = (
    log("""
    (Worker pid=6001) INFO 11-27 05:40:11 [pynccl.py:113] vLLM is using nccl==2.28.9
    (Worker pid=6001) ERROR 11-27 05:40:12 [multiproc_executor.py:953] WorkerProc failed to start.
    (Worker pid=6001) ERROR 11-27 05:40:12 [multiproc_executor.py:953]   File "/usr/local/lib/python3.12/dist-packages/vllm/distributed/device_communicators/pynccl_wrapper.py", line 448, in NCCL_CHECK
    (Worker pid=6001) ERROR 11-27 05:40:12 [multiproc_executor.py:953]     raise RuntimeError(f"NCCL error: {error_str}")
    (Worker pid=6001) ERROR 11-27 05:40:12 [multiproc_executor.py:953] RuntimeError: NCCL error: unhandled system error (run with NCCL_DEBUG=INFO for details)
""")
    + ENGINE_FALLOUT
)

SHM = (
    log("""
    (Worker pid=7002) INFO 11-27 06:01:40 [pynccl.py:113] vLLM is using nccl==2.28.9
    vllm-0:7002:7102 [0] misc/shmutils.cc:129 NCCL WARN Error while creating shared memory segment /dev/shm/nccl-Ewjreo (size 33030528), error: No space left on device (28)
    vllm-0:7002:7102 [0] NCCL INFO proxy.cc:1336 -> 2
    vllm-0:7002:7102 [0] NCCL INFO transport/shm.cc:312 -> 2
    (Worker pid=7002) ERROR 11-27 06:01:41 [multiproc_executor.py:953] WorkerProc failed to start.
    (Worker pid=7002) ERROR 11-27 06:01:41 [multiproc_executor.py:953] torch.distributed.DistBackendError: NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.cpp:77, unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.28.9
    (Worker pid=7002) ERROR 11-27 06:01:41 [multiproc_executor.py:953] ncclSystemError: System call (e.g. socket, malloc) or external library call failed or device error.
    (Worker pid=7002) ERROR 11-27 06:01:41 [multiproc_executor.py:953] Last error:
    (Worker pid=7002) ERROR 11-27 06:01:41 [multiproc_executor.py:953] Error while creating shared memory segment /dev/shm/nccl-Ewjreo (size 33030528), error: No space left on device (28)
""")
    + ENGINE_FALLOUT
)

KV_NO_MEMORY = (
    log("""
    (Worker_TP0 pid=1916) INFO 11-27 02:40:27 [model_runner.py:305] Model loading took 65.74 GiB and 12.145383 seconds
    (Worker_TP0 pid=1916) INFO 11-27 02:40:53 [monitor.py:81] Initial profiling/warmup run took 0.72 s
    (Worker_TP0 pid=1916) INFO 11-27 02:40:55 [gpu_worker.py:560] Available KV cache memory: -1.37 GiB
    (EngineCore pid=1710) ERROR 11-27 02:40:55 [core.py:1510] EngineCore failed to start.
    (EngineCore pid=1710) ERROR 11-27 02:40:55 [core.py:1510] Traceback (most recent call last):
    (EngineCore pid=1710) ERROR 11-27 02:40:55 [core.py:1510]   File "/usr/local/lib/python3.12/dist-packages/vllm/v1/core/kv_cache_utils.py", line 1010, in _check_enough_kv_cache_memory
    (EngineCore pid=1710) ERROR 11-27 02:40:55 [core.py:1510]     raise ValueError(
    (EngineCore pid=1710) ERROR 11-27 02:40:55 [core.py:1510] ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine (this flag also controls CPU memory reservation on the CPU backend, despite its name). See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.
""")
    + ENGINE_FALLOUT
)

KV_CAPACITY = (
    log("""
    (Worker_TP0 pid=268) INFO 10-21 00:34:40 [model_runner.py:305] Model loading took 58.45 GiB and 41.20 seconds
    (Worker_TP0 pid=268) INFO 10-21 00:35:02 [gpu_worker.py:560] Available KV cache memory: 8.04 GiB
    (EngineCore pid=268) ERROR 10-21 00:35:03 [core.py:1510] EngineCore failed to start.
    (EngineCore pid=268) ERROR 10-21 00:35:03 [core.py:1510] Traceback (most recent call last):
    (EngineCore pid=268) ERROR 10-21 00:35:03 [core.py:1510]   File "/usr/local/lib/python3.12/dist-packages/vllm/v1/core/kv_cache_utils.py", line 1031, in _check_enough_kv_cache_memory
    (EngineCore pid=268) ERROR 10-21 00:35:03 [core.py:1510] ValueError: To serve at least one request with the model's max seq len (262144), (24.00 GiB KV cache is needed, which is larger than the available KV cache memory (8.04 GiB). Based on the available memory, the estimated maximum model length is 87840. Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.
""")
    + ENGINE_FALLOUT
)

KV_CAPACITY_V0 = log("""
    INFO 03-02 11:04:51 model_runner.py:1077] Loading model weights took 13.4966 GB
    INFO 03-02 11:04:53 worker.py:232] Memory profiling takes 1.92 seconds
    INFO 03-02 11:04:53 gpu_executor.py:122] # GPU blocks: 1052, # CPU blocks: 2048
    ERROR 03-02 11:04:53 engine.py:366] The model's max seq len (32768) is larger than the maximum number of tokens that can be stored in KV cache (16832). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.
    ValueError: The model's max seq len (32768) is larger than the maximum number of tokens that can be stored in KV cache (16832). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.
""")

FREE_MEMORY = (
    log("""
    (EngineCore pid=17635) INFO 11-27 07:11:40 [core.py:116] Initializing a V1 LLM engine (v0.32.0) with config: model='/models/gemma-3-12b', tensor_parallel_size=1
    (EngineCore pid=17635) ERROR 11-27 07:11:44 [core.py:1510] EngineCore failed to start.
    (EngineCore pid=17635) ERROR 11-27 07:11:44 [core.py:1510] Traceback (most recent call last):
    (EngineCore pid=17635) ERROR 11-27 07:11:44 [core.py:1510]   File "/usr/local/lib/python3.12/dist-packages/vllm/v1/worker/utils.py", line 763, in request_memory
    (EngineCore pid=17635) ERROR 11-27 07:11:44 [core.py:1510] ValueError: Free memory on device cuda:0 (15.32/22.04 GiB) on startup is less than desired GPU memory utilization (0.88, 19.39 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.
""")
    + ENGINE_FALLOUT
)

FORK = (
    log("""
    (EngineCore pid=9001) INFO 11-27 08:00:01 [multiproc_executor.py:140] DP group leader: node_rank=0, node_rank_within_dp=0, master_addr=127.0.0.1, world_size=2, local_world_size=2
    (Worker pid=9100) ERROR 11-27 08:00:09 [multiproc_executor.py:953] WorkerProc failed to start.
    (Worker pid=9100) ERROR 11-27 08:00:09 [multiproc_executor.py:953] Traceback (most recent call last):
    (Worker pid=9100) ERROR 11-27 08:00:09 [multiproc_executor.py:953]   File "/usr/local/lib/python3.12/dist-packages/torch/cuda/__init__.py", line 398, in _lazy_init
    (Worker pid=9100) ERROR 11-27 08:00:09 [multiproc_executor.py:953]     raise RuntimeError(
    (Worker pid=9100) ERROR 11-27 08:00:09 [multiproc_executor.py:953] RuntimeError: Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, you must use the 'spawn' start method
""")
    + ENGINE_FALLOUT
)

RAY_IP = (
    log("""
    (EngineCore pid=880) INFO 11-27 09:01:02 [ray_utils.py:607] No current placement group found. Creating a new placement group.
    (EngineCore pid=880) ERROR 11-27 09:01:09 [core.py:1510] EngineCore failed to start.
    (EngineCore pid=880) ERROR 11-27 09:01:09 [core.py:1510]   File "/usr/local/lib/python3.12/dist-packages/vllm/v1/executor/ray_executor.py", line 311, in _init_workers_ray
    (EngineCore pid=880) ERROR 11-27 09:01:09 [core.py:1510] RuntimeError: Every node should have a unique IP address. Got 2 nodes with node ids ['8f0c1d', '3b7a9e'] and 1 unique IP addresses {'10.0.0.5'}. Please check your network configuration. If you set `VLLM_HOST_IP` environment variable, make sure it is unique for each node.
""")
    + ENGINE_FALLOUT
)

DEVICE_ORDER = (
    log("""
    (APIServer pid=5011) WARNING 11-27 10:00:02 [cuda.py:989] Detected different devices in the system: NVIDIA GeForce RTX 4080 SUPER, NVIDIA GeForce RTX 3060. Please make sure to set `CUDA_DEVICE_ORDER=PCI_BUS_ID` to avoid unexpected behavior.
    (APIServer pid=5011) INFO 11-27 10:00:03 [api_utils.py:273] non-default args: {'model': '/models/qwen2.5-7b', 'tensor_parallel_size': 2}
    (EngineCore pid=5200) INFO 11-27 10:00:21 [core.py:116] Initializing a V1 LLM engine (v0.32.0) with config: model='/models/qwen2.5-7b', tensor_parallel_size=2
    (EngineCore pid=5200) ERROR 11-27 10:01:40 [core.py:1510] EngineCore failed to start.
""")
    + ENGINE_FALLOUT
)

QUANT_MARLIN = (
    log("""
    (Worker_TP0 pid=4410) INFO 11-27 11:10:05 [gptq_marlin.py:271] Using MarlinLinearKernel for GPTQMarlinLinearMethod
    (Worker_TP0 pid=4410) ERROR 11-27 11:10:06 [multiproc_executor.py:953] WorkerProc failed to start.
    (Worker_TP0 pid=4410) ERROR 11-27 11:10:06 [multiproc_executor.py:953]   File "/usr/local/lib/python3.12/dist-packages/vllm/model_executor/layers/quantization/utils/marlin_utils.py", line 190, in verify_marlin_supports_shape
    (Worker_TP0 pid=4410) ERROR 11-27 11:10:06 [multiproc_executor.py:953] ValueError: Weight input_size_per_partition = 7392 is not divisible by min_thread_k = 128. Consider reducing tensor_parallel_size or running with --quantization gptq.
""")
    + ENGINE_FALLOUT
)

QUANT_AWQ = (
    log("""
    (Worker_TP3 pid=4413) ERROR 11-27 11:20:06 [multiproc_executor.py:953] WorkerProc failed to start.
    (Worker_TP3 pid=4413) ERROR 11-27 11:20:06 [multiproc_executor.py:953]   File "/usr/local/lib/python3.12/dist-packages/vllm/model_executor/layers/quantization/auto_awq.py", line 820, in create_weights
    (Worker_TP3 pid=4413) ERROR 11-27 11:20:06 [multiproc_executor.py:953] ValueError: The input size is not aligned with the quantized weight shape. This can be caused by too large tensor parallel size.
""")
    + ENGINE_FALLOUT
)

# vLLM 0.26 on an H100 box without NVLink multicast: the fusion picks mnnvl, the first
# compiled run faults, the other rank hangs, and the API server reports the dead engine.
MNNVL = log("""
    (EngineCore pid=1710) INFO 11-27 02:40:00 [core.py:116] Initializing a V1 LLM engine (v0.26.0) with config: model='/root/.cache/vllm-tp-runner/shapes/llama3-8b-a161e4fb8c9f', compilation_config={'pass_config': {'fuse_norm_quant': True, 'fuse_act_quant': True, 'fuse_allreduce_rms': True}}
    (Worker pid=1916) WARNING 11-27 02:40:25 [symm_mem.py:106] SymmMemCommunicator: symmetric memory multicast operations are not supported.
    (Worker_TP0 pid=1916) INFO 11-27 02:40:27 [model_runner.py:305] Model loading took 7.48 GiB and 2.145383 seconds
    (Worker_TP0 pid=1916) INFO 11-27 02:40:36 [flashinfer_all_reduce.py:103] Auto-selected flashinfer allreduce backend: mnnvl
    (Worker_TP0 pid=1916) INFO 11-27 02:40:52 [monitor.py:53] torch.compile took 24.02 s in total
    (Worker_TP0 pid=1916) ERROR 11-27 02:40:53 [multiproc_executor.py:1063] WorkerProc hit an exception.
    (Worker_TP0 pid=1916) ERROR 11-27 02:40:53 [multiproc_executor.py:1063] torch.AcceleratorError: CUDA error: an illegal memory access was encountered
    (Worker_TP0 pid=1916) ERROR 11-27 02:40:53 [multiproc_executor.py:1063] CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.
    (Worker_TP1 pid=1917) [rank1]:[E1127 02:50:53.131931664 ProcessGroupNCCL.cpp:632] [Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5730, OpType=ALLREDUCE, NumelIn=4096, NumelOut=4096, Timeout(ms)=600000) ran for 600009 milliseconds before timing out.
    (EngineCore pid=1710) ERROR 11-27 02:50:54 [core.py:1510] EngineCore failed to start.
    (APIServer pid=1236) vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause.
""")

ILLEGAL_ACCESS = (
    log("""
    (EngineCore pid=1710) INFO 11-27 02:40:00 [core.py:116] Initializing a V1 LLM engine (v0.32.0) with config: model='/models/qwen3-next', compilation_config={'pass_config': {'fuse_allreduce_rms': False}}
    (Worker_TP0 pid=1916) INFO 11-27 02:40:27 [model_runner.py:305] Model loading took 38.20 GiB and 20.145383 seconds
    (Worker_TP0 pid=1916) ERROR 11-27 02:41:53 [multiproc_executor.py:1063] WorkerProc hit an exception.
    (Worker_TP0 pid=1916) ERROR 11-27 02:41:53 [multiproc_executor.py:1063] torch.AcceleratorError: CUDA error: an illegal memory access was encountered
""")
    + ENGINE_FALLOUT
)

OOM_LOADING = (
    log("""
    (Worker_TP0 pid=2210) INFO 11-27 12:00:40 [model_runner.py:284] Loading model from scratch...
    (Worker_TP0 pid=2210) ERROR 11-27 12:01:12 [multiproc_executor.py:953] WorkerProc failed to start.
    (Worker_TP0 pid=2210) ERROR 11-27 12:01:12 [multiproc_executor.py:953]   File "/usr/local/lib/python3.12/dist-packages/vllm/model_executor/layers/linear.py", line 1180, in weight_loader
    (Worker_TP0 pid=2210) ERROR 11-27 12:01:12 [multiproc_executor.py:953] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 896.00 MiB. GPU 0 has a total capacity of 79.19 GiB of which 190.94 MiB is free. Including non-PyTorch memory, this process has 78.99 GiB memory in use.
""")
    + ENGINE_FALLOUT
)

PORT_UVICORN = log("""
    INFO 10-10 10:23:00 api_server.py:526] vLLM API server version 0.6.1
    INFO:     Started server process [4211]
    INFO:     Waiting for application startup.
    INFO:     Application startup complete.
    ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use
    INFO:     Waiting for application shutdown.
""")

PORT_BIND = log("""
    (APIServer pid=3021) INFO 11-27 13:00:01 [api_utils.py:273] non-default args: {'host': '127.0.0.1', 'model': '/models/llama3-8b', 'port': 8123, 'tensor_parallel_size': 2}
    (APIServer pid=3021) Traceback (most recent call last):
    (APIServer pid=3021)   File "/usr/local/lib/python3.12/dist-packages/vllm/entrypoints/launchers/launcher.py", line 348, in create_server_socket
    (APIServer pid=3021)     sock.bind(addr)
    (APIServer pid=3021) OSError: [Errno 98] Address already in use
""")

MODEL_MISSING = log("""
    (APIServer pid=3100) INFO 11-27 13:10:01 [api_utils.py:273] non-default args: {'model': '/models/llama', 'tensor_parallel_size': 2}
    (APIServer pid=3100) Traceback (most recent call last):
    (APIServer pid=3100)   File "/usr/local/lib/python3.12/dist-packages/transformers/utils/hub.py", line 471, in cached_files
    (APIServer pid=3100) OSError: /models/llama does not appear to have a file named config.json. Checkout 'https://huggingface.co//models/llama/tree/None' for available files.
    (APIServer pid=3100) ValueError: Invalid repository ID or local directory specified: '/models/llama'.
""")

MODEL_UNSUPPORTED = log("""
    (APIServer pid=3200) INFO 11-27 13:20:01 [api_utils.py:273] non-default args: {'model': '/models/foo-7b'}
    (APIServer pid=3200) Traceback (most recent call last):
    (APIServer pid=3200)   File "/usr/local/lib/python3.12/dist-packages/vllm/model_executor/models/registry.py", line 1205, in _raise_for_unsupported
    (APIServer pid=3200) ValueError: Model architectures ['FooForCausalLM'] are not supported for now. Supported architectures: dict_keys(['AquilaModel', 'LlamaForCausalLM', 'Qwen2ForCausalLM'])
""")

CUSTOM_ALLREDUCE_ONLY = (
    log("""
    (Worker pid=8100) INFO 11-27 14:00:11 [pynccl.py:113] vLLM is using nccl==2.28.9
    (Worker pid=8100) WARNING 11-27 14:00:12 [custom_all_reduce.py:271] Custom allreduce is disabled because it's not supported on more than two PCIe-only GPUs. To silence this warning, specify disable_custom_all_reduce=True explicitly.
    (Worker pid=8101) WARNING 11-27 14:00:12 [custom_all_reduce.py:271] Custom allreduce is disabled because it's not supported on more than two PCIe-only GPUs. To silence this warning, specify disable_custom_all_reduce=True explicitly.
    (Worker_TP0 pid=8100) INFO 11-27 14:00:20 [model_runner.py:284] Loading model from scratch...
""")
    + ENGINE_FALLOUT
)

# Captured from tests/e2e/test_faults.py: a TP=2 vLLM-CPU rank SIGKILLed during start-up.
WORKER_DIED = """\
(EngineCore pid=15002) INFO 11-27 03:19:08 [multiproc_executor.py:479] [shutdown] Executor: waiting for worker exit count=2
(Worker_TP0 pid=15012) INFO 11-27 03:19:08 [multiproc_executor.py:843] Parent process exited, terminating worker queues
(EngineCore pid=15002) ERROR 11-27 03:19:17 [core.py:1510] EngineCore failed to start.
(EngineCore pid=15002) ERROR 11-27 03:19:17 [core.py:1510] Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace for root cause.
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore': 1}
"""

# Captured in CI: a start after a SIGKILLed one read the half-written compile artifact.
COMPILE_CACHE = """\
(Worker_TP1 pid=26425) ERROR 11-27 03:50:10 [multiproc_executor.py:1063] WorkerProc hit an exception.
(Worker_TP1 pid=26425) ERROR 11-27 03:50:10 [multiproc_executor.py:1063] torch._inductor.exc.InductorError: ImportError: /root/.cache/vllm/torch_compile_cache/torch_aot_compile/3eb8e577/inductor_cache/p6/cp6ads7l.main.so: file too short
(EngineCore pid=26410) ERROR 11-27 03:50:10 [core.py:1510] Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace for root cause.
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""

# Phi-3-medium at TP=4 on H100s (docs/validation/2026-11-27-vllm-verdicts), one rank's lines.
KV_HEADS = """\
(Worker_TP1 pid=2436) ERROR 11-27 05:52:11 [multiproc_executor.py:901]   File "/tmp/site/vllm/model_executor/models/llama.py", line 148, in __init__
(Worker_TP1 pid=2436) ERROR 11-27 05:52:11 [multiproc_executor.py:901]     assert self.total_num_kv_heads % tp_size == 0
(Worker_TP1 pid=2436) ERROR 11-27 05:52:11 [multiproc_executor.py:901]            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
(Worker_TP1 pid=2436) ERROR 11-27 05:52:11 [multiproc_executor.py:901] AssertionError
"""

# vllm-cpu 0.32.0 under Ray on the CI machine (tests/e2e/test_multinode_ray.py documents it).
RAY_CPU = """\
(EngineCore pid=912) INFO worker.py:2038 -- Connected to Ray cluster.
(EngineCore pid=912)   File "/work/main/.venv/lib/python3.11/site-packages/vllm/v1/executor/ray_utils.py", line 574, in initialize_ray_cluster
(EngineCore pid=912) ValueError: current platform cpu does not support ray.
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""

CASES = [
    # (id, log, context, cause, an override the fix must contain)
    ("ray-cpu", RAY_CPU, {}, "ray_unsupported_platform", "hw.nodes=1"),
    (
        "kv-heads",
        KV_HEADS,
        {**H100X4, "tensor_parallel_size": 4, "num_key_value_heads": 10, "valid_tp_sizes": [1, 2]},
        "kv_heads_not_divisible",
        "serve.tensor_parallel_size=2",
    ),
    ("compile-cache", COMPILE_CACHE, {}, "compile_cache_corrupt", "rm -rf /root/.cache/vllm/torch_compile_cache"),
    ("worker-died", WORKER_DIED, {}, "worker_died", "dmesg | grep -i oom"),
    ("heads", HEADS, {**H100X4, "tensor_parallel_size": 3}, "heads_not_divisible", "serve.tensor_parallel_size=2 or 4"),
    ("world-size", WORLD_SIZE, {**H100X4, "gpu_count": 2}, "tp_exceeds_gpus", "serve.tensor_parallel_size=2"),
    ("invalid-ordinal", INVALID_ORDINAL, {**H100X4, "gpu_count": 2}, "tp_exceeds_gpus", "serve.tensor_parallel_size=2"),
    (
        "placement-group",
        PLACEMENT_GROUP,
        {**H100X4, "tensor_parallel_size": 8},
        "tp_exceeds_gpus",
        "serve.tensor_parallel_size=2 or 4",
    ),
    ("nccl-watchdog", NCCL_WATCHDOG, PCIE4, "nccl_failure", "+hw.env.NCCL_P2P_DISABLE=1"),
    ("nccl-system-error", NCCL_SYSTEM_ERROR, PCIE4, "nccl_failure", "+hw.env.NCCL_P2P_DISABLE=1"),
    (
        "custom-allreduce",
        CUSTOM_ALLREDUCE_ONLY,
        PCIE4,
        "custom_allreduce_disabled",
        "+serve.extra_args.disable_custom_all_reduce=true",
    ),
    ("shm", SHM, PCIE4, "shm_too_small", "+hw.env.NCCL_SHM_DISABLE=1"),
    ("kv-no-memory", KV_NO_MEMORY, H100X4, "kv_cache_no_memory", "serve.gpu_memory_utilization=0.95"),
    ("kv-capacity", KV_CAPACITY, H100X4, "max_len_exceeds_kv", "serve.max_model_len=87840"),
    ("kv-capacity-v0", KV_CAPACITY_V0, {}, "max_len_exceeds_kv", "serve.max_model_len=16832"),
    # 15.32 of 22.04 GiB free is 69.5 %; less a point for the workers' CUDA context: 0.68.
    (
        "free-memory",
        FREE_MEMORY,
        {"device": "cuda", "gpu_memory_utilization": 0.88},
        "free_memory_below_utilization",
        "serve.gpu_memory_utilization=0.68",
    ),
    ("fork", FORK, H100X4, "cuda_fork_reinit", "+hw.env.VLLM_WORKER_MULTIPROC_METHOD=spawn"),
    ("ray-ip", RAY_IP, H100X4, "ray_placement", "+hw.env.VLLM_HOST_IP="),
    ("device-order", DEVICE_ORDER, {}, "cuda_device_order", "+hw.env.CUDA_DEVICE_ORDER=PCI_BUS_ID"),
    ("quant-marlin", QUANT_MARLIN, H100X4, "quant_shape_misaligned", "serve.tensor_parallel_size=2"),
    (
        "quant-awq",
        QUANT_AWQ,
        {**H100X4, "tensor_parallel_size": 8, "gpu_count": 8},
        "quant_shape_misaligned",
        "serve.tensor_parallel_size=2 or 4",
    ),
    (
        "mnnvl",
        MNNVL,
        H100X4,
        "mnnvl_allreduce_crash",
        "'+serve.extra_args.compilation_config={pass_config: {fuse_allreduce_rms: false}}'",
    ),
    ("illegal-access", ILLEGAL_ACCESS, H100X4, "cuda_illegal_memory_access", "serve.enforce_eager=true"),
    ("oom-loading", OOM_LOADING, {**H100X4, "tensor_parallel_size": 2}, "cuda_oom", "serve.tensor_parallel_size=4"),
    ("port-uvicorn", PORT_UVICORN, {}, "port_in_use", "serve.port=8001"),
    ("port-bind", PORT_BIND, {}, "port_in_use", "serve.port=8124"),
    ("model-missing", MODEL_MISSING, {}, "model_not_found", "model.path="),
    ("model-unsupported", MODEL_UNSUPPORTED, {}, "model_unsupported", "supported_models"),
]


@pytest.mark.parametrize("text, context, cause, override", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_cause_and_its_fix(text, context, cause, override):
    d = diagnose(text, context)
    assert d is not None
    assert d.cause == cause
    assert override in d.fix
    assert d.evidence and d.evidence in text  # a real line of the log, not a paraphrase
    assert len(d.evidence) <= EVIDENCE_CHARS
    assert d.summary and "\n" not in d.summary


def test_every_cause_is_covered():
    from runner.diagnose.signatures import RULES

    # Here or in the real-log corpus (tests/diagnose/test_corpus.py).
    corpus = json.loads((REPO / "tests/fixtures/failure_logs/index.json").read_text())
    assert {r.cause for r in RULES} == {c[3] for c in CASES} | {e["cause"] for e in corpus}


# --------------------------------------------------------------------------- precedence


def test_mnnvl_beats_illegal_access_nccl_timeout_and_engine_dead():
    d = diagnose(MNNVL, H100X4)
    assert d.cause == "mnnvl_allreduce_crash"
    assert "NVLink multicast unavailable" in d.fix
    assert d.evidence.endswith("torch.AcceleratorError: CUDA error: an illegal memory access was encountered")


def test_mnnvl_needs_the_illegal_access_after_the_backend_line():
    lines = MNNVL.splitlines()
    backend = next(i for i, line in enumerate(lines) if "Auto-selected" in line)
    crash = next(i for i, line in enumerate(lines) if "illegal memory access" in line)
    # The same fault before vLLM picked mnnvl is not mnnvl's doing.
    lines.insert(backend, lines.pop(crash))
    assert diagnose("\n".join(lines), H100X4).cause == "cuda_illegal_memory_access"
    # And a 0.32 log, where mnnvl shows as the workspace line, still counts.
    v032 = MNNVL.replace(
        "[flashinfer_all_reduce.py:103] Auto-selected flashinfer allreduce backend: mnnvl",
        "[flashinfer_all_reduce.py:236] Initialized FlashInfer Allreduce norm fusion workspace with backend=mnnvl",
    )
    assert diagnose(v032, H100X4).cause == "mnnvl_allreduce_crash"


def test_illegal_access_with_the_fusion_on_offers_turning_it_off():
    on = ILLEGAL_ACCESS.replace("'fuse_allreduce_rms': False", "'fuse_allreduce_rms': True")
    assert "fuse_allreduce_rms: false" not in diagnose(ILLEGAL_ACCESS, H100X4).fix
    assert diagnose(on, H100X4).fix.startswith(
        "'+serve.extra_args.compilation_config={pass_config: {fuse_allreduce_rms: false}}'"
    )


@pytest.mark.parametrize("estimate", [87840, 3280, 1184])
def test_kv_capacity_fix_is_the_number_vllm_estimated(estimate):
    text = KV_CAPACITY.replace("model length is 87840", f"model length is {estimate}")
    d = diagnose(text, H100X4)
    assert d.cause == "max_len_exceeds_kv"
    assert d.fix == f"serve.max_model_len={estimate}"
    assert re.search(rf"model length is {estimate}\b", d.evidence)  # the number survives the trim


def test_kv_capacity_without_an_estimate_asks_for_more_memory():
    text = KV_CAPACITY.replace("Based on the available memory, the estimated maximum model length is 87840. ", "")
    d = diagnose(text, {**H100X4, "tensor_parallel_size": 2})
    assert d.cause == "max_len_exceeds_kv"
    assert d.fix == "serve.gpu_memory_utilization=0.95 or serve.tensor_parallel_size=4"


def test_shm_beats_the_nccl_system_error_it_causes():
    d = diagnose(SHM, PCIE4)
    assert d.cause == "shm_too_small"
    assert "--shm-size" in d.fix
    assert "/dev/shm/nccl-Ewjreo" in d.evidence


def test_first_real_error_beats_the_timeouts_it_leaves_on_other_ranks():
    text = NCCL_WATCHDOG.replace(ENGINE_FALLOUT, "") + OOM_LOADING
    assert diagnose(text, PCIE4).cause == "cuda_oom"


def test_notes_lose_to_any_real_error():
    warning = CUSTOM_ALLREDUCE_ONLY.splitlines()[1] + "\n"
    d = diagnose(warning + KV_CAPACITY, PCIE4)
    assert d.cause == "max_len_exceeds_kv"
    assert "custom_allreduce_disabled" in NOTE_CAUSES
    note = diagnose(CUSTOM_ALLREDUCE_ONLY, PCIE4)
    assert note.summary.startswith("note (not fatal)")
    assert "because it's not supported on more than two PCIe-only GPUs" in note.summary


def test_engine_fallout_alone_is_not_a_cause():
    dead = "(APIServer pid=1236) vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause.\n"
    assert diagnose(ENGINE_FALLOUT + dead) is None


# --------------------------------------------------------------------------- fixes from context


def test_heads_without_context_offers_only_sizes_below_the_one_asked():
    d = diagnose(HEADS)
    assert d.cause == "heads_not_divisible"
    assert d.fix == "serve.tensor_parallel_size=2"  # 64 heads: 1 and 2 surely fit where 3 did


def test_heads_uses_the_divisors_when_the_plan_gave_no_sizes():
    text = HEADS.replace("heads (64)", "heads (28)").replace("size (3)", "size (8)")
    d = diagnose(text, {"gpu_count": 8, "tensor_parallel_size": 8})
    assert d.fix == "serve.tensor_parallel_size=2, 4 or 7"  # 28 = 2 x 2 x 7


def test_world_size_with_pipeline_parallelism_counts_both():
    text = WORLD_SIZE.replace("World size (4)", "World size (8)").replace("GPUs (2)", "GPUs (4)")
    d = diagnose(text, {**H100X4, "gpu_count": 4, "pipeline_parallel_size": 2})
    assert d.fix == "serve.tensor_parallel_size=2"  # 2 x PP 2 = 4 GPUs


def test_too_few_gpus_with_nothing_known_falls_back_to_the_runner_default():
    assert diagnose(INVALID_ORDINAL).fix.startswith("serve.tensor_parallel_size=null")


def test_oom_after_loading_offers_a_shorter_context_first():
    # Without frames, the last stage line places it: after "Model loading took", not the weights.
    frameless = "\n".join(line for line in OOM_LOADING.splitlines() if "weight_loader" not in line)
    text = frameless.replace("Loading model from scratch...", "Model loading took 37.2 GiB and 20.1 seconds")
    d = diagnose(text, {**H100X4, "tensor_parallel_size": 2})
    assert d.fix == "serve.max_model_len=4096 or serve.tensor_parallel_size=4"
    assert diagnose(OOM_LOADING, {**H100X4, "tensor_parallel_size": 2}).fix == (
        "serve.tensor_parallel_size=4 or serve.max_model_len=4096"
    )


def test_oom_phase_comes_from_the_traceback_not_the_last_stage_line():
    # A weight_loader frame is the weights, whatever stage line came last.
    text = OOM_LOADING.replace("Loading model from scratch...", "Model loading took 37.2 GiB and 20.1 seconds")
    d = diagnose(text, {**H100X4, "tensor_parallel_size": 2})
    assert "loading the weights" in d.summary
    assert d.fix == "serve.tensor_parallel_size=4 or serve.max_model_len=4096"
    capture = OOM_LOADING.replace(
        'vllm/model_executor/layers/linear.py", line 1180, in weight_loader',
        'vllm/v1/worker/gpu_model_runner.py", line 4210, in capture_model',
    )
    d = diagnose(capture, H100X4)
    assert "capturing CUDA graphs" in d.summary and d.fix.startswith("serve.enforce_eager=true")
    profiling = OOM_LOADING.replace("in weight_loader", "in profile_run")
    assert "profiling run" in diagnose(profiling, H100X4).summary


def test_cpu_kv_cache_fix_is_the_runner_key():
    d = diagnose(KV_NO_MEMORY, {"device": "cpu", "cpu_kvcache_space_gib": 3})
    assert d.fix == "hw.cpu_kvcache_space_gib=6"


def test_free_memory_without_a_device_name():
    # Older releases print no device: "Free memory on device (3.27/15.98 GiB) ..."
    d = diagnose(
        "ValueError: Free memory on device (3.27/15.98 GiB) on startup is less than desired GPU memory utilization (0.9, 14.39 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
    )
    assert d.cause == "free_memory_below_utilization"
    assert d.fix.startswith("serve.gpu_memory_utilization=0.19 ")


def test_nccl_on_nvlink_does_not_blame_pcie():
    assert "PCIe" not in diagnose(NCCL_WATCHDOG, H100X4).summary
    assert "ACS/IOMMU" in diagnose(NCCL_WATCHDOG, PCIE4).summary


def test_ray_colour_codes_do_not_hide_a_match():
    line = next(line for line in FORK.splitlines() if "re-initialize" in line)
    coloured = "\x1b[36m(RayWorkerWrapper pid=4009)\x1b[0m " + line.split("] ", 1)[1]
    assert diagnose(coloured).cause == "cuda_fork_reinit"


def test_diagnosis_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        diagnose(FORK).cause = "other"  # type: ignore[misc]
    assert isinstance(diagnose(FORK), Diagnosis)


def test_long_line_evidence_is_cut_around_the_match():
    dump = "(EngineCore pid=1) INFO 11-27 02:40:00 [core.py:116] Initializing a V1 LLM engine with config: " + "x" * 900
    text = dump + " RuntimeError: Cannot re-initialize CUDA in forked subprocess." + "y" * 500
    d = diagnose(text)
    assert len(d.evidence) == EVIDENCE_CHARS
    assert "Cannot re-initialize CUDA in forked subprocess" in d.evidence


# --------------------------------------------------------------------------- clean starts

# vLLM 0.26 at TP=2 on two H100s, up and answering. Its info lines look like trouble to a
# careless matcher: "Free memory on device", "No available shared memory broadcast block",
# "multicast operations are not supported".
CLEAN = log("""
    (APIServer pid=1236) INFO 11-27 02:39:21 [api_utils.py:273] non-default args: {'host': '127.0.0.1', 'model': '/root/.cache/vllm-tp-runner/shapes/llama3-8b-a161e4fb8c9f', 'served_model_name': ['llama3-8b'], 'load_format': 'dummy', 'tensor_parallel_size': 2}
    (APIServer pid=1236) INFO 11-27 02:39:42 [model.py:623] Resolved architecture: LlamaForCausalLM
    (APIServer pid=1236) INFO 11-27 02:39:42 [model.py:1788] Using max model len 8192
    (EngineCore pid=1710) INFO 11-27 02:40:00 [core.py:116] Initializing a V1 LLM engine (v0.26.0) with config: model='/root/.cache/vllm-tp-runner/shapes/llama3-8b-a161e4fb8c9f', tensor_parallel_size=2, compilation_config={'pass_config': {'fuse_allreduce_rms': False}}
    (Worker pid=1916) INFO 11-27 02:40:21 [parallel_state.py:1615] world_size=2 rank=0 local_rank=0 distributed_init_method=tcp://127.0.0.1:44219 backend=nccl
    (Worker pid=1916) INFO 11-27 02:40:23 [pynccl.py:113] vLLM is using nccl==2.28.9
    (Worker pid=1916) WARNING 11-27 02:40:25 [symm_mem.py:106] SymmMemCommunicator: symmetric memory multicast operations are not supported.
    (Worker pid=1916) INFO 11-27 02:40:25 [cuda_communicator.py:264] Using ['CUSTOM', 'PYNCCL'] all-reduce backends (in dispatch order) for group 'tp:0'
    (Worker_TP0 pid=1916) INFO 11-27 02:40:27 [model_runner.py:305] Model loading took 7.48 GiB and 2.145383 seconds
    (Worker_TP0 pid=1916) INFO 11-27 02:40:52 [monitor.py:53] torch.compile took 24.02 s in total
    (Worker_TP0 pid=1916) INFO 11-27 02:40:55 [gpu_worker.py:560] Available KV cache memory: 64.58 GiB
    (EngineCore pid=1710) INFO 11-27 02:40:55 [kv_cache_utils.py:2177] GPU KV cache size: 1,058,128 tokens
    (EngineCore pid=1710) INFO 11-27 02:40:55 [kv_cache_utils.py:2178] Maximum concurrency for 8,192 tokens per request: 129.17x
    (Worker_TP0 pid=1916) INFO 11-27 02:41:01 [gpu_worker.py:857] Free memory on device (77.64/79.18 GiB) on startup. Desired GPU memory utilization is (0.92, 72.84 GiB). Actual usage is 7.48 GiB for weight, 0.71 GiB for peak activation
    (EngineCore pid=1710) INFO 11-27 02:41:56 [shm_broadcast.py:705] No available shared memory broadcast block found in 60 seconds. This typically happens when some processes are hanging or doing some time-consuming work (e.g. compilation, weight/kv cache quantization).
    (EngineCore pid=1710) INFO 11-27 02:42:41 [core.py:340] init engine (profile, create kv cache, warmup model) took 133.31 s (compilation: 24.02 s)
    (APIServer pid=1236) INFO 11-27 02:42:43 [api_server.py:677] Starting vLLM server on http://127.0.0.1:8000
    (APIServer pid=1236) INFO:     Started server process [1236]
    (APIServer pid=1236) INFO:     Application startup complete.
    (APIServer pid=1236) INFO:     127.0.0.1:44612 - "GET /health HTTP/1.1" 200 OK
""")


def test_clean_start_is_no_diagnosis():
    assert diagnose(CLEAN, H100X4) is None
    assert diagnose("") is None


@pytest.mark.parametrize("path", REAL_CLEAN_LOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_verified_runs_are_no_diagnosis(path):
    assert diagnose(path.read_text(), H100X4) is None


def test_real_captures_are_there():
    assert len(REAL_CLEAN_LOGS) >= 3


# --------------------------------------------------------------------------- ports and hangs

# vllm/utils.py's get_open_port in vLLM 0.6 (https://github.com/vllm-project/vllm/issues/11617).
INTERNAL_BIND = log("""
    Traceback (most recent call last):
      File "/miniforge3/envs/vllm/lib/python3.10/site-packages/vllm/utils.py", line 572, in get_open_port
        s.bind(("", 0))
    OSError: [Errno 98] Address already in use
""")


def test_address_in_use_names_the_api_port_only_when_the_api_server_bound_it():
    assert diagnose(INTERNAL_BIND, {"port": 8000}).cause == "internal_port_race"
    assert diagnose(PORT_BIND).cause == "port_in_use"
    # The bare error with nothing to say whose bind it was: no diagnosis rather than a wrong one.
    assert diagnose("OSError: [Errno 98] Address already in use\n") is None


WAITING = (
    "(EngineCore pid=880) INFO 11-27 04:02:20 [ray_utils.py:466] Waiting for creating a placement group of specs "
    "for {s} seconds. specs=[{{'GPU': 1.0}}, {{'GPU': 1.0}}]. Check `ray status` and `ray list nodes` to see if you "
    "have enough resources."
)


def test_a_placement_group_still_waiting_is_a_hang_from_the_second_wait_on():
    from runner.diagnose.signatures import HANG_CAUSES

    assert diagnose(WAITING.format(s=10)) is None
    d = diagnose(WAITING.format(s=10) + "\n" + WAITING.format(s=30))
    assert d.cause == "ray_placement" and d.cause in HANG_CAUSES
    assert "never formed" in d.summary and "ray status" in d.fix


# Real lines from the same threads as the corpus that look like the new causes but are not.
LOOKALIKES = [
    # https://github.com/vllm-project/vllm/issues/32338: transformers' notice, not a refusal.
    "The argument `trust_remote_code` is to be used with Auto classes. It has no effect here and is ignored.",
    # https://github.com/vllm-project/vllm-ascend/issues/2175: a warning; the platform plugin has its own ops.
    "WARNING 08-02 03:04:08 [_custom_ops.py:20] Failed to import from vllm._C with ModuleNotFoundError(\"No module named 'vllm._C'\")",
    # https://github.com/vllm-project/vllm/issues/6636: NCCL's info that NVLS is off, on a run that hung elsewhere.
    "8a100-5:154785:154785 [3] NCCL INFO NVLS multicast support is not available on dev 3",
    # https://github.com/vllm-project/vllm/issues/20654: the remote-code cache's import (a dotted model directory).
    "ERROR 07-09 03:24:16 [core.py:586] ModuleNotFoundError: No module named 'transformers_modules.ERNIE-4.5-VL-28B-A3B-PT' Process",
]


@pytest.mark.parametrize("line", LOOKALIKES)
def test_lookalikes_of_the_new_causes_are_no_diagnosis(line):
    assert diagnose(line + "\n") is None


def test_real_missing_module_names_the_file_that_imports_it_and_the_paired_build():
    """Qwen2.5-VL on the CPU box (vllm-cpu 0.32, transformers 5.19, no torchvision): vLLM's
    qwen2_vl.py imports transformers' Qwen2-VL image processor, which imports torchvision at
    line 26. The fix names the build paired with torch, not a bare `pip install torchvision`,
    whose CUDA wheel a CPU torch cannot load."""
    log = REPO / "docs/validation/2026-12-04-cpu-multimodal/qwen2.5-vl-7b.vllm.log"
    found = diagnose(log.read_text())
    assert found.cause == "python_module_missing"
    assert "transformers/models/qwen2_vl/image_processing_qwen2_vl.py:26 imports it" in found.summary
    assert "through vLLM's qwen2_vl.py" in found.summary
    assert "torchvision==<the release paired" in found.fix and "whl/cpu" in found.fix
    manifest = json.loads(log.with_name("qwen2.5-vl-7b.manifest.json").read_text())
    assert manifest["failure"]["cause"] == found.cause and manifest["failure"]["summary"] == found.summary


def test_missing_module_without_a_traceback_keeps_the_generic_reason():
    found = diagnose("ERROR 07-09 03:24:16 [core.py:586] ModuleNotFoundError: No module named 'compressed_tensors'")
    assert found.cause == "python_module_missing"
    assert "processor, quantization or attention backend" in found.summary
    assert found.fix.startswith("`pip install compressed-tensors`")


def test_a_module_vllm_imports_itself_is_named_without_a_through():
    lines = [
        '  File "/opt/venv/lib/python3.12/site-packages/vllm/model_executor/models/llama.py", line 30, in <module>',
        "    import flash_attn",
        "ModuleNotFoundError: No module named 'flash_attn'",
    ]
    found = diagnose("\n".join(lines))
    assert "vllm/model_executor/models/llama.py:30 imports it)" in found.summary
    assert "through" not in found.summary
