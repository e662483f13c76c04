"""Value checks on the composed config, before anything is probed or planned.

Hydra checks types; this module checks what the types let through: numbers at their edges
(zero, negative, NaN, inf, absurdly large), names that become argv words, file names or
environment variables, vLLM's own value sets, and keys added with ``+`` that the schema does
not know. Pure: the config in, the problems out (the pipeline rejects on any of them)."""

from __future__ import annotations

import ast
import functools
import importlib.util
import ipaddress
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from runner.config.schema import RunnerConfig
from runner.problems import Problem

INT32_MAX = 2**31 - 1  # vLLM hands sizes to torch and C kernels as 32-bit ints
SEED_MAX = 2**32 - 1  # numpy's seed range, which vLLM's seeding goes through
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
FLAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
HOST_NAME = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)
NAME_MAX = 200  # a name that becomes a directory name (+ a digest) stays under the 255-byte limit
# Variables the runner sets from its own keys: hw.env saying them too would make the plan lie.
MANAGED_ENV = {
    "CUDA_VISIBLE_DEVICES": "export CUDA_VISIBLE_DEVICES=… before the run (the plan picks among those)",
    "VLLM_CPU_OMP_THREADS_BIND": "hw.cpu_cores=N (the runner binds one core per rank)",
    "VLLM_CPU_KVCACHE_SPACE": "hw.cpu_kvcache_space_gib=N",
    "CUDA_DEVICE_ORDER": "leave it out (the runner uses PCI_BUS_ID, the order nvidia-smi shows)",
}

# vLLM's value sets, as vllm 0.32 declares them; replaced by the installed vLLM's own
# (read from its source, not imported: importing vLLM takes seconds) when it can be found.
FALLBACK_SETS: Dict[str, Tuple[str, ...]] = {
    "ModelDType": ("auto", "half", "float16", "bfloat16", "float", "float32"),
    "CacheDType": (
        "auto",
        "bfloat16",
        "fp8",
        "fp8_e4m3",
        "fp8_e5m2",
        "fp8_inc",
        "fp8_ds_mla",
    ),
    "DistributedExecutorBackend": ("ray", "mp", "uni", "external_launcher"),
    "LoadFormats": (
        "auto",
        "bitsandbytes",
        "dummy",
        "fastsafetensors",
        "gguf",
        "mistral",
        "npcache",
        "pt",
        "runai_streamer",
        "runai_streamer_sharded",
        "safetensors",
        "sharded_state",
        "tensorizer",
    ),
    "QuantizationMethods": (
        "awq",
        "fp8",
        "gptq",
        "gptq_marlin",
        "awq_marlin",
        "compressed-tensors",
        "bitsandbytes",
        "gguf",
        "modelopt",
        "modelopt_fp4",
        "fbgemm_fp8",
        "experts_int8",
        "mxfp4",
        "torchao",
        "inc",
        "quark",
        "moe_wna16",
        "ptpc_fp8",
    ),
}
_SOURCES = {
    "ModelDType": "config/model.py",
    "CacheDType": "config/cache.py",
    "DistributedExecutorBackend": "config/parallel.py",
    "LoadFormats": "model_executor/model_loader/__init__.py",
    "QuantizationMethods": "model_executor/layers/quantization/__init__.py",
}


_NOT_HERE = object()  # the statement does not decide: look further
_STATEMENT_LINES = 400  # a module-level Literal[...] longer than this is looked for the slow way


def _literal_of(node: ast.AST, name: str) -> Any:
    """``node``'s values when it assigns ``name = X[...]``; None when X[...] has no strings."""
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and isinstance(node.value, ast.Subscript):
            elts = node.value.slice.elts if isinstance(node.value.slice, ast.Tuple) else [node.value.slice]
            values = tuple(e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
            return values or None
    return _NOT_HERE


def _top_level_literal(source: str, name: str) -> Any:
    """The first module-level ``name = X[...]`` statement's values, parsing that statement alone:
    vLLM's config/model.py is 110 kB, and parsing all of it was most of ``mode=plan``'s checks.
    A statement inside a triple-quoted string, or one that never parses, leaves it undecided."""
    assign = re.compile(rf"^(?:[A-Za-z_][\w.]*\s*=\s*)*{re.escape(name)}\s*(?::[^=\n]*)?=(?!=)", re.M)
    for match in assign.finditer(source):
        before = source[: match.start()]
        if before.count('"""') % 2 or before.count("'''") % 2:
            return _NOT_HERE
        lines = source[match.start() :].split("\n", _STATEMENT_LINES)[:_STATEMENT_LINES]
        for end in range(1, len(lines) + 1):
            try:
                tree = ast.parse("\n".join(lines[:end]))
            except SyntaxError:
                continue
            found = _literal_of(tree.body[0], name) if tree.body else _NOT_HERE
            if found is not _NOT_HERE:
                return found
            break
        else:
            return _NOT_HERE
    return _NOT_HERE


def _literal_in(source: str, name: str) -> Optional[Tuple[str, ...]]:
    """The values of ``name = Literal[...]`` in a module's source (the first such assignment,
    module level before nested, as ``ast.walk`` meets them)."""
    found = _top_level_literal(source, name)
    if found is not _NOT_HERE:
        return found
    for node in ast.walk(ast.parse(source)):
        found = _literal_of(node, name)
        if found is not _NOT_HERE:
            return found
    return None


def _package_root(name: str) -> Optional[Path]:
    """The directory of an installed package, found without importing it (None when absent)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ValueError, ImportError):
        return None
    return Path(spec.origin).parent if spec and spec.origin else None


@functools.lru_cache(maxsize=None)
def vllm_value_set(name: str) -> Tuple[str, ...]:
    """The values of one of vLLM's Literal types (e.g. CacheDType) from the installed vLLM's
    source; the table above where vLLM is not installed here or no longer declares it."""
    try:
        root = _package_root("vllm")
        if root is not None:
            found = _literal_in((root / _SOURCES[name]).read_text(), name)
            if found:
                return found
    except (OSError, SyntaxError, ValueError, ImportError):
        pass
    return FALLBACK_SETS[name]


_REGISTRY = "model_executor/models/registry.py"


def _read_registry(vllm_root: Optional[Path]) -> Optional[str]:
    try:
        return (vllm_root / _REGISTRY).read_text() if vllm_root is not None else None
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def _registry_source() -> Optional[str]:
    """The installed vLLM's registry.py, read once a process."""
    return _read_registry(_package_root("vllm"))


def _registry_module(source: str, architecture: str) -> Optional[str]:
    """The model module a supported-models table of the registry names for an architecture
    (``"Arch": ("module", "Class")``), or None where no table serves it."""
    found = re.search(r'"' + re.escape(architecture) + r'":\s*\(\s*"(\w+)"', source)
    return found.group(1) if found else None


def _registry_block(source: str, name: str) -> str:
    """The text of one module-level ``NAME = { ... }`` literal of vLLM's registry."""
    start = source.find(f"\n{name} = {{")
    if start < 0:
        return ""
    end = source.find("\n}", start)
    return source[start : end if end > 0 else len(source)]


def dropped_architecture(architecture: str) -> Optional[Tuple[str, str]]:
    """Whether the installed vLLM refuses this architecture outright, read from its registry's
    source (vllm/model_executor/models/registry.py) without importing vLLM: ("removed", the last
    version that served it) for _PREVIOUSLY_SUPPORTED_MODELS, ("plugin", its URL) for
    _OOT_SUPPORTED_MODELS; None when vLLM serves it, may serve it through its Transformers
    backend, or is not installed here."""
    source = _registry_source()
    if not source or not architecture:
        return None
    quoted = f'"{architecture}":'
    for name in ("_PREVIOUSLY_SUPPORTED_MODELS", "_OOT_SUPPORTED_MODELS"):
        block = _registry_block(source, name)
        at = block.find(quoted)
        if at < 0:
            continue
        # registry.py checks every supported table first: an architecture listed there is served
        if _registry_module(source.replace(block, ""), architecture):
            return None
        value = re.match(r'\s*"([^"]+)"', block[at + len(quoted) :])
        if value:
            return ("removed" if name.startswith("_PREVIOUSLY") else "plugin", value.group(1))
    return None


# A module-level import of a sibling vLLM model module or of a transformers model module, and of
# torchvision itself (unindented lines only: imports inside functions happen later, if at all).
_MODULE_IMPORT = re.compile(r"^from (\.\w+|transformers\.models\.[\w.]+) import", re.MULTILINE)
_TORCHVISION_IMPORT = re.compile(r"^(?:from|import) torchvision\b", re.MULTILINE)


def torchvision_chain(
    architecture: str, vllm_root: Optional[Path] = None, transformers_root: Optional[Path] = None, depth: int = 3
) -> Optional[List[str]]:
    """The import chain by which vLLM's module for this architecture needs torchvision at import
    time, read from the installed vLLM's and transformers' sources (the registry names the
    module; its module-level imports of sibling model modules and of transformers model modules
    are followed): ["qwen2_5_vl.py", "qwen2_vl.py", "transformers/models/qwen2_vl/image_processing_qwen2_vl.py"],
    or None when no such chain is found (or either package is not installed here)."""
    registry = _read_registry(vllm_root) if vllm_root else _registry_source()
    vllm_root = vllm_root or _package_root("vllm")
    transformers_root = transformers_root or _package_root("transformers")
    module = _registry_module(registry, architecture) if registry else None
    if vllm_root is None or transformers_root is None or module is None:
        return None
    models = vllm_root / "model_executor" / "models"
    todo = [(models / f"{module}.py", [f"{module}.py"])]
    seen = set()
    while todo:
        path, chain = todo.pop(0)
        if path in seen:
            continue
        seen.add(path)
        try:
            text = path.read_text()
        except OSError:
            continue
        if _TORCHVISION_IMPORT.search(text):
            return chain
        if len(chain) > depth:
            continue
        for name in _MODULE_IMPORT.findall(text):
            if name.startswith("."):
                todo.append((models / f"{name[1:]}.py", chain + [f"{name[1:]}.py"]))
            else:
                rel = Path(*name.split(".")[1:]).with_suffix(".py")
                todo.append((transformers_root / rel, chain + [f"transformers/{rel.as_posix()}"]))
    return None


def _number(key: str, value: Any, fix: str, *, low: float = 0, low_ok: bool = False, high: float = math.inf):
    """One numeric key: finite, above low (or at it when low_ok), at most high."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return Problem(key, value, "must be a finite number", fix)
    if value < low or (value == low and not low_ok):
        return Problem(key, value, f"must be {'at least' if low_ok else 'more than'} {low:g}", fix)
    if value > high:
        return Problem(key, value, f"absurdly large (at most {high:g})", fix)
    return None


def _numbers(cfg: RunnerConfig) -> List[Problem]:
    s, m, v, la, hw, b = cfg.serve, cfg.model, cfg.verify, cfg.launch, cfg.hw, cfg.bench
    checks = [
        # serve.tensor_parallel_size, pipeline_parallel_size, gpu_memory_utilization, max_model_len,
        # port: the plan checks their low ends with better fixes; only their high ends here
        (
            "serve.tensor_parallel_size",
            s.tensor_parallel_size,
            "serve.tensor_parallel_size=1",
            dict(low=-math.inf, high=4096),
        ),
        (
            "serve.pipeline_parallel_size",
            s.pipeline_parallel_size,
            "serve.pipeline_parallel_size=1",
            dict(low=-math.inf, high=4096),
        ),
        (
            "serve.max_model_len",
            s.max_model_len,
            "serve.max_model_len=4096, or leave it unset",
            dict(low=-math.inf, high=INT32_MAX),
        ),
        (
            "serve.max_num_seqs",
            s.max_num_seqs,
            "serve.max_num_seqs=256, or leave it unset",
            dict(low=-math.inf, high=2**20),
        ),
        (
            "serve.max_num_batched_tokens",
            s.max_num_batched_tokens,
            "serve.max_num_batched_tokens=8192, or leave it unset",
            dict(low=-math.inf, high=INT32_MAX),
        ),
        ("serve.seed", s.seed, "serve.seed=0, or leave it unset", dict(low=0, low_ok=True, high=SEED_MAX)),
        (
            "model.max_model_len",
            m.max_model_len,
            "model.max_model_len=4096, or leave it unset (null)",
            dict(low=0, high=INT32_MAX),
        ),
        ("model.seed", m.seed, "model.seed=0", dict(low=0, low_ok=True, high=SEED_MAX)),
        ("verify.max_tokens", v.max_tokens, "verify.max_tokens=8", dict(low=-math.inf, high=2**20)),
        (
            "verify.ready_timeout_s",
            v.ready_timeout_s,
            "verify.ready_timeout_s=900",
            dict(low=-math.inf, high=7 * 86400),
        ),
        (
            "verify.request_timeout_s",
            v.request_timeout_s,
            "verify.request_timeout_s=120",
            dict(low=-math.inf, high=7 * 86400),
        ),
        ("launch.stop_grace_s", la.stop_grace_s, "launch.stop_grace_s=20", dict(low=0, low_ok=True, high=3600)),
        ("launch.collective_timeout_s", la.collective_timeout_s, "launch.collective_timeout_s=60", dict(high=86400)),
        ("launch.collective_size_mib", la.collective_size_mib, "launch.collective_size_mib=64", dict(high=2**20)),
        ("hw.cpu_cores", hw.cpu_cores, "hw.cpu_cores=2, or hw=auto", dict(high=2**16)),
        ("hw.cpu_kvcache_space_gib", hw.cpu_kvcache_space_gib, "hw.cpu_kvcache_space_gib=1", dict(high=2**16)),
        ("hw.gpu_memory_gib", hw.gpu_memory_gib, "hw.gpu_memory_gib=80, or hw=auto", dict(high=2**16)),
        (
            "hw.gpu_count",
            hw.gpu_count,
            "hw.gpu_count=1, or hw=auto",
            dict(low=0, low_ok=hw.device.value == "cpu", high=2**16),
        ),
        (
            "hw.memory_bandwidth_gbps",
            hw.memory_bandwidth_gbps,
            "hw.memory_bandwidth_gbps=3350, or leave it unset",
            dict(high=10**6),
        ),
        ("hw.peak_bf16_tflops", hw.peak_bf16_tflops, "hw.peak_bf16_tflops=989.5, or leave it unset", dict(high=10**6)),
        ("hw.peak_fp8_tflops", hw.peak_fp8_tflops, "hw.peak_fp8_tflops=1979, or leave it unset", dict(high=10**6)),
        ("hw.nvlink_gbps", hw.nvlink_gbps, "hw.nvlink_gbps=900, or leave it unset", dict(high=10**6)),
        ("hw.pcie_gbps", hw.pcie_gbps, "hw.pcie_gbps=128, or leave it unset", dict(high=10**6)),
        ("hw.nodes", hw.nodes, "hw.nodes=1", dict(high=2**16)),
        ("hw.gpus_per_node", hw.gpus_per_node, "hw.gpus_per_node=8, or leave it unset", dict(high=2**16)),
        ("bench.input_len", b.input_len, "bench.input_len=1024", dict(high=INT32_MAX)),
        ("bench.output_len", b.output_len, "bench.output_len=128", dict(high=INT32_MAX)),
        ("bench.num_prompts", b.num_prompts, "bench.num_prompts=200", dict(high=10**9)),
        (
            "bench.prompts_per_concurrency",
            b.prompts_per_concurrency,
            "bench.prompts_per_concurrency=4, or leave it unset",
            dict(high=10**9),
        ),
        ("bench.seed", b.seed, "bench.seed=0", dict(low=0, low_ok=True, high=SEED_MAX)),
        ("bench.timeout_s", b.timeout_s, "bench.timeout_s=1800", dict(high=30 * 86400)),
    ]
    found = [p for key, value, fix, kw in checks if (p := _number(key, value, fix, **kw))]
    # the low ends the plan leaves unchecked (NaN passes every comparison, so it is checked here)
    for key, value, fix in (
        ("serve.gpu_memory_utilization", s.gpu_memory_utilization, "serve.gpu_memory_utilization=0.9"),
        ("verify.ready_timeout_s", v.ready_timeout_s, "verify.ready_timeout_s=900"),
        ("verify.request_timeout_s", v.request_timeout_s, "verify.request_timeout_s=120"),
    ):
        if isinstance(value, float) and not math.isfinite(value) and not any(p.key == key for p in found):
            found.append(Problem(key, value, "must be a finite number", fix))
    if s.max_model_len is not None and s.max_model_len <= 0 and s.max_model_len != -1:
        found.append(
            Problem(
                "serve.max_model_len",
                s.max_model_len,
                "must be positive (or -1: fit to memory)",
                "serve.max_model_len=4096, or leave it unset",
            )
        )
    context = m.hf_config.get("max_position_embeddings") if isinstance(m.hf_config, dict) else None
    if (
        isinstance(context, int)
        and context > 0
        and m.max_model_len
        and m.max_model_len > context
        and not any(p.key == "model.max_model_len" for p in found)
    ):
        found.append(
            Problem(
                "model.max_model_len",
                m.max_model_len,
                f"longer than the model's context ({context})",
                f"model.max_model_len={context}",
            )
        )
    if b.request_rate is not None and (math.isnan(b.request_rate) or b.request_rate <= 0):
        found.append(
            Problem(
                "bench.request_rate",
                b.request_rate,
                "must be more than 0 (inf: all at once)",
                "bench.request_rate=10, or leave it unset",
            )
        )
    if not b.concurrencies:
        found.append(Problem("bench.concurrencies", "[]", "no concurrency to run", "bench.concurrencies=[1,8,32]"))
    elif bad := [c for c in b.concurrencies if not isinstance(c, int) or isinstance(c, bool) or not 0 < c <= 2**20]:
        found.append(
            Problem(
                "bench.concurrencies",
                list(b.concurrencies),
                f"{bad[0]!r} is not a positive number of clients",
                "bench.concurrencies=[1,8,32]",
            )
        )
    if b.dataset != "random":
        found.append(
            Problem(
                "bench.dataset", b.dataset, "only the random dataset runs without a download", "bench.dataset=random"
            )
        )
    if cfg.mode.value == "bench" and b.input_len > 0 and b.output_len > 0:
        limit = s.max_model_len or m.max_model_len
        if limit and limit > 0 and b.input_len + b.output_len > limit:
            found.append(
                Problem(
                    "bench.input_len",
                    b.input_len,
                    f"input_len + output_len ({b.input_len + b.output_len}) exceed max_model_len {limit}",
                    f"bench.input_len={max(1, limit - b.output_len)}",
                )
            )
    return found


def _value_sets(cfg: RunnerConfig) -> List[Problem]:
    found = []
    for key, value, name in (
        ("model.load_format", cfg.model.load_format, "LoadFormats"),
        ("serve.dtype", cfg.serve.dtype, "ModelDType"),
        ("serve.kv_cache_dtype", cfg.serve.kv_cache_dtype, "CacheDType"),
        ("serve.quantization", cfg.serve.quantization, "QuantizationMethods"),
        ("serve.distributed_executor_backend", cfg.serve.distributed_executor_backend, "DistributedExecutorBackend"),
    ):
        if value is None:  # unset: vLLM's default, and no source of vLLM's to read
            continue
        allowed = vllm_value_set(name)
        if value not in allowed:
            close = [a for a in allowed if a.lower() == str(value).lower()]
            fix = (
                f"{key}={close[0]}" if close else f"{key}=" + "|".join(allowed[:8]) + ("|…" if len(allowed) > 8 else "")
            )
            found.append(Problem(key, value, f"not one of vLLM's values ({', '.join(allowed)})", fix))
    s = cfg.serve
    if s.max_num_batched_tokens and s.max_num_seqs and 0 < s.max_num_batched_tokens < s.max_num_seqs:
        found.append(
            Problem(
                "serve.max_num_batched_tokens",
                s.max_num_batched_tokens,
                f"smaller than serve.max_num_seqs={s.max_num_seqs} (vLLM refuses it)",
                f"serve.max_num_batched_tokens={s.max_num_seqs}, or serve.max_num_seqs={s.max_num_batched_tokens}",
            )
        )
    chunked = s.extra_args.get("enable_chunked_prefill", s.extra_args.get("enable-chunked-prefill"))
    limit = s.max_model_len or cfg.model.max_model_len
    if chunked is False and s.max_num_batched_tokens and limit and 0 < s.max_num_batched_tokens < limit:
        found.append(
            Problem(
                "serve.max_num_batched_tokens",
                s.max_num_batched_tokens,
                f"smaller than max_model_len {limit} with chunked prefill off (vLLM refuses it)",
                f"serve.max_num_batched_tokens={limit}, or drop serve.extra_args.enable_chunked_prefill",
            )
        )
    return found


def _word(key: str, value: Optional[str], fix: str, *, file_name: bool = False) -> Optional[Problem]:
    """A value that becomes one argv word (and, with file_name, a directory name)."""
    if value is None:
        return None
    if value == "":
        return Problem(key, "''", "empty", fix)
    if value.startswith("-"):
        return Problem(key, value, "starts with '-': vLLM would read it as an option", fix)
    if len(value) > (NAME_MAX if file_name else 4096):
        return Problem(key, value[:40] + "…", f"{len(value)} characters long", fix)
    if file_name and ("/" in value or "\\" in value or value in (".", "..") or "\0" in value):
        return Problem(key, value, "becomes a directory name: no path separators, '.' or '..'", fix)
    if any(ord(c) < 32 for c in value):
        return Problem(key, value.encode("unicode_escape").decode(), "holds a control character", fix)
    return None


def host_problem(host: str) -> Optional[Problem]:
    """serve.host: an IPv4 or IPv6 address (unbracketed) or a host name; whether it resolves is
    the doctor's and the launch's question (mode=plan may plan for another machine)."""
    fix = "serve.host=127.0.0.1 (this machine only), or serve.host=0.0.0.0 (every interface)"
    if host == "":
        return None  # vLLM's own "every interface"
    if host.startswith("[") and host.endswith("]"):
        return Problem(
            "serve.host", host, "an address without brackets (they belong in URLs only)", f"serve.host={host[1:-1]}"
        )
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host) or not HOST_NAME.match(host):
        return Problem("serve.host", host, "not an IP address or a host name", fix)
    return None


def _flag_like(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name.lstrip("-")) or "enable_prefix_caching"


def _names(cfg: RunnerConfig) -> List[Problem]:
    found = [
        _word("model.name", cfg.model.name, "model.name=my-model", file_name=True),
        _word(
            "serve.served_model_name",
            cfg.serve.served_model_name,
            "serve.served_model_name=my-model, or leave it unset",
        ),
        _word("model.revision", cfg.model.revision, "model.revision=main, or leave it unset"),
        _word("model.path", cfg.model.path, "model.path=/path/to/model"),
        _word("launch.python", cfg.launch.python, "launch.python=/path/to/python, or leave it unset"),
        host_problem(cfg.serve.host),
    ]
    if cfg.serve.host.startswith("-"):
        found[-1] = Problem(
            "serve.host", cfg.serve.host, "starts with '-': vLLM would read it as an option", "serve.host=127.0.0.1"
        )
    key_env = cfg.serve.api_key_env
    if key_env is not None and key_env != "" and not ENV_NAME.match(key_env):
        found.append(
            Problem("serve.api_key_env", key_env, "not an environment variable name", "serve.api_key_env=VLLM_API_KEY")
        )
    for name in cfg.serve.extra_args:
        flag = str(name)
        if not FLAG_NAME.match(flag):
            shown = flag or "''"
            found.append(
                Problem(
                    "serve.extra_args",
                    shown,
                    "not an option name (letters, digits, '_' or '-', without leading dashes or '=')",
                    f"+serve.extra_args.{_flag_like(flag)}=VALUE",
                )
            )
    for name in cfg.hw.env:
        name = str(name)
        if not ENV_NAME.match(name):
            found.append(
                Problem(
                    "hw.env",
                    name or "''",
                    "not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    "+hw.env.MY_VARIABLE=VALUE",
                )
            )
        elif name in MANAGED_ENV:
            found.append(
                Problem(f"hw.env.{name}", cfg.hw.env[name], "the runner sets this variable itself", MANAGED_ENV[name])
            )
    ips = [str(ip) for ip in cfg.hw.node_ips]
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            if ip.startswith("-") or not HOST_NAME.match(ip) or re.fullmatch(r"[0-9.]+", ip):
                found.append(
                    Problem(
                        "hw.node_ips",
                        ip,
                        "not an IP address",
                        "hw.node_ips=[10.0.0.1,10.0.0.2] (one per node, head first)",
                    )
                )
    if len(set(ips)) != len(ips):
        found.append(
            Problem(
                "hw.node_ips", ",".join(ips), "names a node twice", "hw.node_ips=[one distinct IP per node, head first]"
            )
        )
    return [p for p in found if p is not None]


SCHEMA_GROUPS = ("serve", "model", "hw", "verify", "launch", "bench")
OPEN_MAPS = {"serve.extra_args", "hw.env", "hw.slurm", "model.hf_config", "tune.space"}


def unknown_keys(node: DictConfig) -> List[Problem]:
    """Keys a ``+key=`` added under a schema group: Hydra lets ``+`` add to a structured config."""
    from runner.config.compose_errors import problem_for_unknown_key

    found = []
    for group in SCHEMA_GROUPS:
        sub = node.get(group)
        if not isinstance(sub, DictConfig):
            continue
        known = _schema_keys(group)
        for key in sub.keys():
            if f"{group}.{key}" in OPEN_MAPS:
                continue
            if key not in known:
                found.append(
                    problem_for_unknown_key(
                        f"{group}.{key}", OmegaConf.select(node, f"{group}.{key}", throw_on_missing=False)
                    )
                )
    return found


@functools.lru_cache(maxsize=None)
def _schema_keys(group: str) -> frozenset:
    import dataclasses
    import typing

    node = typing.get_type_hints(RunnerConfig)[group]
    return frozenset(f.name for f in dataclasses.fields(node))


def _reference(cfg: RunnerConfig) -> List[Problem]:
    """verify.tp_reference is read after minutes of start-up; read it now."""
    given = cfg.verify.tp_reference
    if not given:
        return []
    fix = "verify.tp_reference=<cache_dir>/references/KEY.json (a file a TP=1 check wrote), or leave it unset"
    try:
        data = json.loads(Path(os.path.expanduser(given)).read_text())
    except OSError as e:
        return [Problem("verify.tp_reference", given, f"cannot be read ({e.strerror or e})", fix)]
    except ValueError as e:
        return [Problem("verify.tp_reference", given, f"is not JSON ({str(e)[:60]})", fix)]
    if not isinstance(data, dict):
        return [Problem("verify.tp_reference", given, "is not a reference (a JSON object)", fix)]
    return []


def config_problems(cfg: RunnerConfig) -> List[Problem]:
    """Every value problem of the composed config, in the schema's order."""
    return _numbers(cfg) + _value_sets(cfg) + _names(cfg) + _reference(cfg)


def run_dir_problem(path: os.PathLike) -> Optional[str]:
    """Why path can't hold a run (tried, not asked: os.access says yes to root on a read-only
    or pseudo file system); None when a file could be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return e.strerror or str(e)
    return None


def creatable_dir_problem(path: os.PathLike) -> Optional[str]:
    """Why path could not be created and written, found by creating (and removing) a directory
    in its nearest existing ancestor: nothing is left behind. None when it could."""
    path = Path(path).absolute()
    ancestor = path
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            return "no existing parent"
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=ancestor))
    except OSError as e:
        return e.strerror or str(e)
    return None


__all__: Sequence[str] = (
    "config_problems",
    "creatable_dir_problem",
    "host_problem",
    "run_dir_problem",
    "unknown_keys",
    "vllm_value_set",
)
