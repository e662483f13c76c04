"""runner.diagnose.signatures against real failure logs users posted in public issue threads.

tests/fixtures/failure_logs/index.json names, for every log, the thread it comes from, the cause
the thread established (in the diagnoser's vocabulary) and what the runner's plan would have
known (the context). The logs are trimmed, never edited. A log the diagnoser gets wrong fails
its own test; the aggregate holds the corpus to at least 90 % right and none wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from runner.diagnose.signatures import EVIDENCE_CHARS, diagnose

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "failure_logs"
INDEX = json.loads((CORPUS / "index.json").read_text())

# What each cause's fix must contain: the override or command that addresses it.
FIX_NAMES = {
    "heads_not_divisible": "serve.tensor_parallel_size=",
    "tp_split_not_divisible": "serve.tensor_parallel_size=",
    "nccl_nvls": "+hw.env.NCCL_NVLS_ENABLE=0",
    "nccl_failure": "+hw.env.NCCL_P2P_DISABLE=1",
    "gpu_arch_unsupported": "pip install",
    "shm_too_small": "--shm-size",
    "quant_needs_newer_gpu": "model.path=",
    "bf16_unsupported": "serve.dtype=float16",
    "gated_repo": "export HF_TOKEN=",
    "trust_remote_code_required": "serve.trust_remote_code=true",
    "ray_placement": "ray status",
    "max_len_exceeds_model": "serve.max_model_len=",
    "memory_profiling_changed": "nvidia-smi",
    "cuda_oom": "serve.",
    "quant_shape_misaligned": "serve.",
    "port_in_use": "serve.port=",
    "internal_port_race": "+hw.env.VLLM_PORT=",
    "model_not_found": "model.path=",
    "kv_cache_no_memory": "serve.gpu_memory_utilization=",
    "max_len_exceeds_kv": "serve.max_model_len=",
    "cuda_fork_reinit": "+hw.env.VLLM_WORKER_MULTIPROC_METHOD=spawn",
    "model_unsupported": "model.path=",
    "free_memory_below_utilization": "serve.gpu_memory_utilization=",
    "python_module_missing": "pip install",
}


def _diagnosed(entry):
    text = (CORPUS / entry["file"]).read_text()
    return text, diagnose(text, entry.get("context") or {})


def test_corpus_is_real_and_large_enough():
    assert len(INDEX) >= 40
    assert len({e["file"] for e in INDEX}) == len(INDEX)
    assert sorted(e["file"] for e in INDEX) == sorted(p.name for p in CORPUS.glob("*.log"))
    for entry in INDEX:
        assert re.match(r"https://github\.com/[\w.-]+/[\w.-]+/(issues|pull)/\d+$", entry["source"]), entry
        assert entry["cause"] in FIX_NAMES, entry


@pytest.mark.parametrize("entry", INDEX, ids=[e["file"] for e in INDEX])
def test_each_log_gets_the_cause_its_thread_established(entry):
    text, found = _diagnosed(entry)
    assert found is not None, f"no diagnosis for {entry['file']} ({entry['source']})"
    assert found.cause == entry["cause"], f"{found.cause}: {found.summary}"
    assert FIX_NAMES[entry["cause"]] in found.fix
    assert found.evidence and found.evidence in text and len(found.evidence) <= EVIDENCE_CHARS
    assert found.summary and "\n" not in found.summary


def test_aggregate_right_missed_wrong():
    right = missed = 0
    wrong = []
    for entry in INDEX:
        _, found = _diagnosed(entry)
        if found is None:
            missed += 1
        elif found.cause == entry["cause"]:
            right += 1
        else:
            wrong.append((entry["file"], found.cause))
    print(f"failure-log corpus: {right} right, {missed} missed, {len(wrong)} wrong of {len(INDEX)}")
    assert not wrong
    assert right >= 0.9 * len(INDEX)
