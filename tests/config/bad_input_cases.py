"""The bad-input corpus: one line per case (runner/config/validate.py and friends must refuse each
bad one with exit 2 naming the key, and accept each tricky-but-valid one).

bad(key, *overrides, ...): refused, and an error line names ``key`` (and ``value`` when given).
ok(*overrides, ...): accepted (exit 0).
base: "cpu" (hw=cpu-2, tiny-llama), "gpu" (4 H100s, llama3-8b with dummy weights), "local"
(model=local on a directory whose config.json is LLAMA_CFG changed by ``cfg``), or "none".
mode: plan (default) or doctor. env: variables added to the run's environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

LLAMA_CFG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 1000,
    "max_position_embeddings": 4096,
}
DROP = object()  # in cfg: remove the key
BASES = {
    "cpu": ("hw=cpu-2", "model=tiny-llama"),
    "gpu": ("hw=nvlink-4gpu", "model=llama3-8b", "model.load_format=dummy"),
    "local": ("hw=cpu-2", "model=local"),
    "none": (),
}
HUGE = {"hidden_size": 65536, "intermediate_size": 262144, "num_hidden_layers": 400, "num_attention_heads": 512}
NO_CHUNKS = "+serve.extra_args.enable_chunked_prefill=false"
UUID = "GPU-8f6b3a2e-1c4d-4e5f-9a0b-1c2d3e4f5a6b"


@dataclass(frozen=True)
class Case:
    cls: str
    key: Optional[str]  # None: a valid case
    overrides: Tuple[str, ...]
    base: str = "cpu"
    mode: str = "plan"
    env: Dict[str, str] = field(default_factory=dict)
    cfg: Any = None  # the local model's config.json: a dict of changes to LLAMA_CFG, or raw text
    value: Optional[str] = None
    manifest: bool = True  # False: the run dir itself cannot be written

    @property
    def id(self) -> str:
        what = " ".join(self.overrides) or ""
        if self.cfg is not None:
            what += f" config.json={self.cfg if isinstance(self.cfg, str) else _short(self.cfg)}"
        if self.env:
            what += " " + " ".join(f"{k}={v}" for k, v in self.env.items())
        return f"{self.cls}:{'ok' if self.key is None else 'bad'}:{self.mode}:{what.strip()}"[:150]


def _short(changes: Dict[str, Any]) -> str:
    return ",".join(f"{k}={'<drop>' if v is DROP else v}" for k, v in changes.items())


def bad(cls, key, *overrides, **kw) -> Case:
    return Case(cls, key, tuple(overrides), **kw)


def ok(cls, *overrides, **kw) -> Case:
    return Case(cls, None, tuple(overrides), **kw)


M, N, V, A, H, C, D, S, W = (
    "model-dir",
    "numbers",
    "vllm-values",
    "argv-env",
    "hosts",
    "cuda-mask",
    "compose",
    "plus-key",
    "dirs",
)
CASES = [
    # ------------------------------------------------------------------ a malformed model directory
    bad(M, "config.json", cfg="[]", base="local"),
    bad(M, "config.json", cfg='"a string"', base="local"),
    bad(M, "config.json", cfg="null", base="local"),
    bad(M, "config.json", cfg="42", base="local"),
    bad(M, "num_attention_heads", cfg={"num_attention_heads": "eight"}, base="local"),
    bad(M, "num_attention_heads", cfg={"num_attention_heads": 0}, base="local"),
    bad(M, "num_attention_heads", cfg={"num_attention_heads": -8}, base="local"),
    bad(M, "num_attention_heads", cfg={"num_attention_heads": None}, base="local"),
    bad(M, "num_attention_heads", cfg={"num_attention_heads": 8.5}, base="local"),
    bad(M, "num_attention_heads", cfg={"num_attention_heads": True}, base="local"),
    bad(M, "num_attention_heads", cfg={"num_attention_heads": [8]}, base="local"),
    bad(M, "num_key_value_heads", cfg={"num_key_value_heads": 0}, base="local"),
    bad(M, "num_key_value_heads", cfg={"num_key_value_heads": -4}, base="local"),
    bad(M, "num_key_value_heads", cfg={"num_key_value_heads": "x"}, base="local"),
    bad(M, "num_key_value_heads", cfg={"num_key_value_heads": 3}, base="local"),
    bad(M, "num_key_value_heads", cfg={"num_key_value_heads": 16}, base="local"),
    bad(M, "hidden_size", cfg={"hidden_size": 0}, base="local"),
    bad(M, "hidden_size", cfg={"hidden_size": -256}, base="local"),
    bad(M, "hidden_size", cfg={"hidden_size": "x"}, base="local"),
    bad(M, "hidden_size", cfg={"hidden_size": None}, base="local"),
    bad(M, "hidden_size", cfg={"hidden_size": 255.5}, base="local"),
    bad(M, "num_hidden_layers", cfg={"num_hidden_layers": 0}, base="local"),
    bad(M, "num_hidden_layers", cfg={"num_hidden_layers": -2}, base="local"),
    bad(M, "num_hidden_layers", cfg={"num_hidden_layers": "two"}, base="local"),
    bad(M, "vocab_size", cfg={"vocab_size": 0}, base="local"),
    bad(M, "vocab_size", cfg={"vocab_size": -1}, base="local"),
    bad(M, "vocab_size", cfg={"vocab_size": "x"}, base="local"),
    bad(M, "intermediate_size", cfg={"intermediate_size": 0}, base="local"),
    bad(M, "intermediate_size", cfg={"intermediate_size": -512}, base="local"),
    bad(M, "intermediate_size", cfg={"intermediate_size": "x"}, base="local"),
    bad(M, "head_dim", cfg={"head_dim": 0}, base="local"),
    bad(M, "head_dim", cfg={"head_dim": "x"}, base="local"),
    bad(M, "max_position_embeddings", cfg={"max_position_embeddings": 0}, base="local"),
    bad(M, "max_position_embeddings", cfg={"max_position_embeddings": -1}, base="local"),
    bad(M, "max_position_embeddings", cfg={"max_position_embeddings": "long"}, base="local"),
    bad(M, "rope_scaling", cfg={"rope_scaling": "linear"}, base="local"),
    bad(M, "rope_scaling", cfg={"rope_scaling": {"type": "linear", "factor": "x"}}, base="local"),
    bad(M, "rope_scaling", cfg={"rope_scaling": {"type": "linear", "factor": 0}}, base="local"),
    bad(M, "rope_scaling", cfg={"rope_scaling": {"type": "linear", "factor": -2}}, base="local"),
    bad(M, "rope_scaling", cfg={"rope_scaling": [1, 2]}, base="local"),
    bad(M, "text_config", cfg={"text_config": "x"}, base="local"),
    bad(M, "architectures", cfg={"architectures": "LlamaForCausalLM"}, base="local"),
    bad(M, "num_local_experts", cfg={"num_local_experts": 0}, base="local"),
    bad(M, "num_local_experts", cfg={"num_local_experts": "x"}, base="local"),
    bad(M, "serve.max_model_len", cfg=HUGE, base="local"),  # no TP size holds it
    ok(M, cfg={"rope_scaling": {"type": "linear", "factor": 2.0}}, base="local"),
    ok(M, cfg={"num_key_value_heads": DROP}, base="local"),
    ok(M, cfg={"rope_scaling": None}, base="local"),
    # ------------------------------------------------------------------ numbers at their edges
    bad(N, "serve.tensor_parallel_size", "serve.tensor_parallel_size=0"),
    bad(N, "serve.tensor_parallel_size", "serve.tensor_parallel_size=-1"),
    bad(N, "serve.tensor_parallel_size", "serve.tensor_parallel_size=1.5"),
    bad(N, "serve.tensor_parallel_size", "serve.tensor_parallel_size=nan"),
    bad(N, "serve.tensor_parallel_size", "serve.tensor_parallel_size=inf"),
    bad(N, "serve.tensor_parallel_size", "serve.tensor_parallel_size=1000000000000"),
    bad(N, "serve.pipeline_parallel_size", "serve.pipeline_parallel_size=0"),
    bad(N, "serve.pipeline_parallel_size", "serve.pipeline_parallel_size=-1"),
    bad(N, "serve.pipeline_parallel_size", "serve.pipeline_parallel_size=2.5"),
    bad(N, "serve.pipeline_parallel_size", "serve.pipeline_parallel_size=1000000000"),
    bad(N, "serve.gpu_memory_utilization", "serve.gpu_memory_utilization=0", base="gpu"),
    bad(N, "serve.gpu_memory_utilization", "serve.gpu_memory_utilization=-0.5", base="gpu"),
    bad(N, "serve.gpu_memory_utilization", "serve.gpu_memory_utilization=1.5", base="gpu"),
    bad(N, "serve.gpu_memory_utilization", "serve.gpu_memory_utilization=nan", base="gpu"),
    bad(N, "serve.gpu_memory_utilization", "serve.gpu_memory_utilization=inf", base="gpu"),
    bad(N, "serve.gpu_memory_utilization", "serve.gpu_memory_utilization=-inf", base="gpu"),
    bad(N, "serve.gpu_memory_utilization", "serve.gpu_memory_utilization=0", base="cpu"),
    bad(N, "serve.max_model_len", "serve.max_model_len=0"),
    bad(N, "serve.max_model_len", "serve.max_model_len=-2"),
    bad(N, "serve.max_model_len", "serve.max_model_len=1.5"),
    bad(N, "serve.max_model_len", "serve.max_model_len=nan"),
    bad(N, "serve.max_model_len", "serve.max_model_len=1000000000000"),
    bad(N, "serve.max_num_seqs", "serve.max_num_seqs=0"),
    bad(N, "serve.max_num_seqs", "serve.max_num_seqs=-1"),
    bad(N, "serve.max_num_seqs", "serve.max_num_seqs=100000000000"),
    bad(N, "serve.max_num_batched_tokens", "serve.max_num_batched_tokens=0"),
    bad(N, "serve.max_num_batched_tokens", "serve.max_num_batched_tokens=-1"),
    bad(N, "serve.port", "serve.port=0"),
    bad(N, "serve.port", "serve.port=-1"),
    bad(N, "serve.port", "serve.port=65536"),
    bad(N, "serve.port", "serve.port=1.5"),
    bad(N, "serve.port", "serve.port=nan"),
    bad(N, "serve.seed", "serve.seed=-1"),
    bad(N, "serve.seed", "serve.seed=100000000000000"),
    bad(N, "model.max_model_len", "model.max_model_len=0"),
    bad(N, "model.max_model_len", "model.max_model_len=-1"),
    bad(N, "model.max_model_len", "model.max_model_len=1000000000"),
    bad(N, "model.seed", "model.seed=-1"),
    bad(N, "model.seed", "model.seed=100000000000000"),
    bad(N, "model.seed", "model.seed=1.5"),
    bad(N, "verify.max_tokens", "verify.max_tokens=-1"),
    bad(N, "verify.max_tokens", "verify.max_tokens=1000000000000"),
    bad(N, "verify.ready_timeout_s", "verify.ready_timeout_s=nan"),
    bad(N, "verify.ready_timeout_s", "verify.ready_timeout_s=inf"),
    bad(N, "verify.ready_timeout_s", "verify.ready_timeout_s=-1"),
    bad(N, "verify.request_timeout_s", "verify.request_timeout_s=0"),
    bad(N, "verify.request_timeout_s", "verify.request_timeout_s=nan"),
    bad(N, "verify.request_timeout_s", "verify.request_timeout_s=-inf"),
    bad(N, "verify.tp_reference", "verify.tp_reference=/nonexistent/reference.json"),
    bad(N, "launch.stop_grace_s", "launch.stop_grace_s=-1"),
    bad(N, "launch.stop_grace_s", "launch.stop_grace_s=nan"),
    bad(N, "launch.stop_grace_s", "launch.stop_grace_s=inf"),
    bad(N, "launch.collective_timeout_s", "launch.collective_timeout_s=0"),
    bad(N, "launch.collective_timeout_s", "launch.collective_timeout_s=nan"),
    bad(N, "launch.collective_size_mib", "launch.collective_size_mib=0"),
    bad(N, "launch.collective_size_mib", "launch.collective_size_mib=-1"),
    bad(N, "hw.cpu_cores", "hw.cpu_cores=-1"),
    bad(N, "hw.cpu_cores", "hw.cpu_cores=0"),
    bad(N, "hw.cpu_kvcache_space_gib", "hw.cpu_kvcache_space_gib=0"),
    bad(N, "hw.cpu_kvcache_space_gib", "hw.cpu_kvcache_space_gib=-1"),
    bad(N, "hw.cpu_kvcache_space_gib", "hw.cpu_kvcache_space_gib=1.5"),
    bad(N, "hw.cpu_kvcache_space_gib", "hw.cpu_kvcache_space_gib=100000000000"),
    bad(N, "hw.gpu_memory_gib", "hw.gpu_memory_gib=0", base="gpu"),
    bad(N, "hw.gpu_memory_gib", "hw.gpu_memory_gib=-1", base="gpu"),
    bad(N, "hw.gpu_memory_gib", "hw.gpu_memory_gib=nan", base="gpu"),
    bad(N, "hw.gpu_memory_gib", "hw.gpu_memory_gib=inf", base="gpu"),
    bad(N, "hw.gpu_count", "hw.gpu_count=0", base="gpu"),
    bad(N, "hw.gpu_count", "hw.gpu_count=-1", base="gpu"),
    bad(N, "hw.memory_bandwidth_gbps", "hw.memory_bandwidth_gbps=0", base="gpu"),
    bad(N, "hw.memory_bandwidth_gbps", "hw.memory_bandwidth_gbps=-1", base="gpu"),
    bad(N, "hw.memory_bandwidth_gbps", "hw.memory_bandwidth_gbps=nan", base="gpu"),
    bad(N, "hw.memory_bandwidth_gbps", "hw.memory_bandwidth_gbps=inf", base="gpu"),
    bad(N, "hw.nodes", "hw.nodes=0", base="gpu"),
    bad(N, "hw.nodes", "hw.nodes=-1", base="gpu"),
    bad(N, "hw.gpus_per_node", "hw.gpus_per_node=0", base="gpu"),
    bad(N, "bench.input_len", "bench.input_len=0"),
    bad(N, "bench.input_len", "bench.input_len=-1"),
    bad(N, "bench.output_len", "bench.output_len=0"),
    bad(N, "bench.num_prompts", "bench.num_prompts=0"),
    bad(N, "bench.num_prompts", "bench.num_prompts=-5"),
    bad(N, "bench.prompts_per_concurrency", "bench.prompts_per_concurrency=0"),
    bad(N, "bench.concurrencies", "bench.concurrencies=[0]"),
    bad(N, "bench.concurrencies", "bench.concurrencies=[4,-1]"),
    bad(N, "bench.concurrencies", "bench.concurrencies=[]"),
    bad(N, "bench.seed", "bench.seed=-1"),
    bad(N, "bench.request_rate", "bench.request_rate=0"),
    bad(N, "bench.request_rate", "bench.request_rate=-1"),
    bad(N, "bench.request_rate", "bench.request_rate=nan"),
    bad(N, "bench.timeout_s", "bench.timeout_s=0"),
    bad(N, "bench.timeout_s", "bench.timeout_s=nan"),
    bad(N, "bench.dataset", "bench.dataset=sharegpt"),
    bad(N, "bench.input_len", "bench.input_len=4096", "serve.max_model_len=2048", "mode=bench"),
    ok(N, "serve.max_model_len=-1"),
    ok(N, "serve.gpu_memory_utilization=0.8", base="gpu"),
    ok(N, "serve.seed=0"),
    ok(N, "bench.request_rate=inf"),
    ok(N, "verify.max_tokens=1"),
    ok(N, "serve.port=65535"),
    ok(N, "serve.max_model_len=2048"),
    ok(N, "hw.memory_bandwidth_gbps=3350.5", base="gpu"),
    # ------------------------------------------------------------------ vLLM's own value sets and cross-option rules
    bad(V, "model.load_format", "model.load_format=bogus"),
    bad(V, "model.load_format", "model.load_format=DUMMY"),
    bad(V, "serve.kv_cache_dtype", "serve.kv_cache_dtype=fp9", base="gpu"),
    bad(V, "serve.quantization", "serve.quantization=gptq9", base="gpu"),
    bad(V, "serve.distributed_executor_backend", "serve.distributed_executor_backend=threads"),
    bad(V, "serve.dtype", "serve.dtype=int8"),
    bad(V, "serve.dtype", "serve.dtype=BF16"),
    bad(V, "serve.max_num_batched_tokens", "serve.max_num_batched_tokens=64", "serve.max_num_seqs=128"),
    bad(V, "serve.max_num_batched_tokens", "serve.max_num_batched_tokens=512", "serve.max_model_len=2048", NO_CHUNKS),
    ok(V, "serve.max_num_batched_tokens=512", "serve.max_model_len=2048"),
    ok(V, "serve.max_num_batched_tokens=256", "serve.max_num_seqs=256"),
    ok(V, "serve.kv_cache_dtype=fp8", base="gpu"),
    ok(V, "serve.quantization=fp8", base="gpu"),
    ok(V, "serve.distributed_executor_backend=mp"),
    ok(V, "serve.dtype=float16"),
    ok(V, "serve.dtype=bfloat16"),
    ok(V, "serve.kv_cache_dtype=auto", base="gpu"),
    # ------------------------------------------------------------------ the argv and the environment
    bad(A, "serve.served_model_name", "serve.served_model_name=-x"),
    bad(A, "serve.served_model_name", "serve.served_model_name=''"),
    bad(A, "model.name", "model.name=../evil"),
    bad(A, "model.name", "model.name=a/b"),
    bad(A, "model.name", "model.name=''"),
    bad(A, "model.name", "model.name=-rf"),
    bad(A, "model.name", "model.name=" + "a" * 300),
    bad(A, "model.revision", "model.revision=--trust-remote-code", base="local", cfg={}),
    bad(A, "serve.extra_args", "+serve.extra_args={'a=b': 1}"),
    bad(A, "serve.extra_args", "+serve.extra_args={'-x': 1}"),
    bad(A, "serve.extra_args", "+serve.extra_args={'': 1}"),
    bad(A, "serve.extra_args", "+serve.extra_args={'a b': 1}"),
    bad(A, "serve.max_model_len", "+serve.extra_args.max_model_len=1024"),
    bad(A, "serve.max_num_seqs", "+serve.extra_args.max-num-seqs=4"),
    bad(A, "serve.port", "+serve.extra_args.port=9000"),
    bad(A, "serve.host", "+serve.extra_args.host=0.0.0.0"),
    bad(A, "model.path", "+serve.extra_args.model=/x"),
    bad(A, "serve.dtype", "+serve.extra_args.dtype=half"),
    bad(A, "serve.kv_cache_dtype", "+serve.extra_args.kv_cache_dtype=fp8"),
    bad(A, "serve.seed", "+serve.extra_args.seed=3"),
    bad(A, "serve.enforce_eager", "+serve.extra_args.enforce_eager=true"),
    bad(A, "hw.env.VLLM_CPU_KVCACHE_SPACE", "+hw.env.VLLM_CPU_KVCACHE_SPACE=4"),
    bad(A, "hw.env.VLLM_CPU_OMP_THREADS_BIND", "+hw.env.VLLM_CPU_OMP_THREADS_BIND=all"),
    bad(A, "hw.env.CUDA_VISIBLE_DEVICES", "+hw.env.CUDA_VISIBLE_DEVICES=0", base="gpu"),
    bad(A, "hw.env", "+hw.env={'1BAD': 'x'}"),
    bad(A, "hw.env", "+hw.env={'A B': 'x'}"),
    bad(A, "hw.env", "+hw.env={'A=B': 'x'}"),
    bad(A, "hw.env", "+hw.env={'': 'x'}"),
    bad(A, "serve.api_key_env", "serve.api_key_env=1BAD"),
    bad(A, "serve.api_key_env", "serve.api_key_env='A B'"),
    bad(A, "launch.python", "launch.python=''"),
    ok(A, "+serve.extra_args.enable_prefix_caching=true"),
    ok(A, "+hw.env.OMP_NUM_THREADS=1"),
    ok(A, "+hw.env.MY_FLAGS='a b;c'"),
    ok(A, "serve.served_model_name='my model'"),
    ok(A, "model.name=my.model_v2"),
    ok(A, "verify.prompt='It\\'s \"quoted\" $HOME; rm -rf /'"),
    # ------------------------------------------------------------------ hosts and addresses
    bad(H, "serve.host", "serve.host=999.1.1.1"),
    bad(H, "serve.host", "serve.host='not a host'"),
    bad(H, "serve.host", "serve.host=-h"),
    bad(H, "serve.host", "serve.host='[::1]'"),
    bad(H, "serve.host", "serve.host=no-such-host.invalid", mode="doctor"),
    bad(H, "serve.host", "serve.host=192.0.2.1", mode="doctor"),
    bad(H, "hw.node_ips", "hw=multinode-2x8", "hw.node_ips=[10.0.0.1,999.0.0.1]", base="none", value="999.0.0.1"),
    bad(H, "hw.node_ips", "hw=multinode-2x8", "hw.node_ips=[10.0.0.1,10.0.0.1]", base="none"),
    bad(H, "hw.node_ips", "hw=multinode-2x8", "hw.node_ips=['-x',10.0.0.2]", base="none"),
    ok(H, "serve.host=::1"),
    ok(H, "serve.host=localhost"),
    ok(H, "serve.host=0.0.0.0"),
    ok(H, "serve.host=10.1.2.3"),
    ok(H, "hw=multinode-2x8", "hw.node_ips=[10.0.0.1,10.0.0.2]", *BASES["gpu"][1:], base="none"),
    # ------------------------------------------------------------------ the inherited CUDA_VISIBLE_DEVICES
    bad(C, "CUDA_VISIBLE_DEVICES", base="gpu", env={"CUDA_VISIBLE_DEVICES": "\u0660,\u0661"}),
    bad(C, "CUDA_VISIBLE_DEVICES", base="gpu", env={"CUDA_VISIBLE_DEVICES": "\u00b2"}),
    bad(C, "CUDA_VISIBLE_DEVICES", base="gpu", env={"CUDA_VISIBLE_DEVICES": "0,x"}),
    bad(C, "CUDA_VISIBLE_DEVICES", base="gpu", env={"CUDA_VISIBLE_DEVICES": "1,1"}),
    bad(C, "CUDA_VISIBLE_DEVICES", base="gpu", env={"CUDA_VISIBLE_DEVICES": "GPU-"}),
    bad(C, "CUDA_VISIBLE_DEVICES", base="gpu", env={"CUDA_VISIBLE_DEVICES": "GPU-zz!"}),
    bad(C, "CUDA_VISIBLE_DEVICES", base="gpu", env={"CUDA_VISIBLE_DEVICES": "MIG-"}),
    bad(C, "CUDA_VISIBLE_DEVICES", base="gpu", env={"CUDA_VISIBLE_DEVICES": "0,,1"}),
    ok(C, base="gpu", env={"CUDA_VISIBLE_DEVICES": "0,1,2,3"}),
    ok(C, base="gpu", env={"CUDA_VISIBLE_DEVICES": UUID}),
    ok(C, base="gpu", env={"CUDA_VISIBLE_DEVICES": "GPU-8f6b3a2e"}),
    ok(C, base="gpu", env={"CUDA_VISIBLE_DEVICES": "MIG-" + UUID[4:]}),
    ok(C, base="gpu", env={"CUDA_VISIBLE_DEVICES": "MIG-" + UUID + "/1/0"}),
    # ------------------------------------------------------------------ compose-time errors keep Hydra's reason
    bad(D, "serve.port", "serve.port=null"),
    bad(D, "serve.enforce_eager", "serve.enforce_eager=maybe"),
    bad(D, "serve.max_num_seqs", "serve.max_num_seqs=1.5"),
    bad(D, "verify.prompt", "verify.prompt=[unclosed"),
    bad(D, "verify.prompt", "verify.prompt=a,b"),
    bad(D, "recipe", "recipe=tiny-llama-cpu-2"),
    bad(D, "hw", "hw=cpu-2", "hw=auto", base="none"),
    bad(D, "serve.foo", "serve.foo=1"),
    bad(D, "foo", "foo=1"),
    bad(D, "model.name", "model.name=${oc.env:NO_SUCH_VARIABLE_XYZ}"),
    bad(D, "serve.host", "serve.host=${nope}"),
    bad(D, "cache_dir", "cache_dir=${oc.env:NO_SUCH_VARIABLE_XYZ}", base="cpu"),
    bad(D, "mode", "mode=chek"),
    ok(D, "verify.prompt='a,b'"),
    ok(D, "+recipe=tiny-llama-cpu-2", base="none"),
    # ------------------------------------------------------------------ `+key=` does not bypass the schema
    bad(S, "serve.foo", "+serve.foo=1"),
    bad(S, "model.bar", "+model.bar=2"),
    bad(S, "hw.baz", "+hw.baz=3"),
    bad(S, "verify.qux", "+verify.qux=1"),
    bad(S, "launch.zap", "+launch.zap=1"),
    bad(S, "bench.zip", "+bench.zip=1"),
    bad(S, "serve.tensor_parallel_siz", "+serve.tensor_parallel_siz=2"),
    ok(S, "+serve.extra_args.enable_prefix_caching=true"),
    ok(S, "+hw.env.FOO=1"),
    ok(S, "+hw.slurm.partition=x"),
    # ------------------------------------------------------------------ cache_dir and run dir: tried, not asked
    bad(W, "cache_dir", "cache_dir=/proc/vllm-tp-runner-cache", mode="doctor"),
    bad(W, "cache_dir", "cache_dir=/dev/null/cache", mode="doctor"),
    bad(W, "cache_dir", "cache_dir=/sys/vllm-tp-runner-cache", mode="doctor"),
    bad(W, "hydra.run.dir", "RUNDIR=/proc/vllm-tp-runner-run", manifest=False),
]
