"""The GPU path, on a machine with NVIDIA GPUs and vLLM for CUDA: `pytest -m gpu`.

Off by default (pyproject's addopts deselect the marker). Set RUNNER_GPU_OUT to keep the
run directories (the device machine's $OUT)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e_util import free_port, load_manifest, processes_mentioning, run_runner

pytestmark = pytest.mark.gpu


def _gpus() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount()
    except Exception:
        return 0


@pytest.fixture
def out_dir(tmp_path, request) -> Path:
    base = Path(os.environ.get("RUNNER_GPU_OUT") or tmp_path)
    return base / request.node.name.replace("[", "_").replace("]", "")


@pytest.mark.parametrize("tp", [2])
def test_llama3_8b_dummy_check(tp, out_dir):
    if _gpus() < tp:
        pytest.skip(f"needs {tp} GPUs")
    port = free_port()
    result = run_runner(
        [
            "hw=auto",
            "model=llama3-8b",
            "model.load_format=dummy",
            "mode=check",
            f"serve.tensor_parallel_size={tp}",
            f"serve.port={port}",
            f"hydra.run.dir={out_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    m = load_manifest(out_dir)
    assert m["status"] == "verified"
    assert m["plan"]["device"] == "cuda"
    assert m["plan"]["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(str(i) for i in range(tp))
    assert m["plan"]["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    if os.environ.get("NCCL_NVLS_ENABLE") == "0":
        i = m["plan"]["argv"].index("--compilation-config")
        assert json.loads(m["plan"]["argv"][i + 1])["pass_config"]["fuse_allreduce_rms"] is False
    assert m["vllm_reported"]["kv_cache_pool"] == "GPU" and m["vllm_reported"]["kv_cache_tokens"] > 0
    assert m["verification"]["completion"]["completion_tokens"] == 8
    assert m["versions"]["torch_cuda"] and m["hardware"]["driver_version"]
    assert m["teardown"]["survivors"] == []
    assert processes_mentioning(f"--port {port}") == []


def test_llama70b_tp1_rejected_before_launch_on_80gb(out_dir):
    if _gpus() < 1:
        pytest.skip("needs a GPU")
    result = run_runner(
        [
            "hw=auto",
            "model=llama70b",
            "model.load_format=dummy",
            "mode=check",
            "serve.tensor_parallel_size=1",
            f"hydra.run.dir={out_dir}",
        ],
        timeout=120,
    )
    assert result.returncode == 2
    m = load_manifest(out_dir)
    assert m["status"] == "rejected"
    assert any("GiB per GPU" in p["message"] for p in m["problems"])
    assert not (out_dir / "vllm.log").exists()
