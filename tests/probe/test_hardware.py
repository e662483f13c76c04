"""nvidia-smi's query output parsed, the recorded H100 capture read as the NVML probe would,
and CUDA_VISIBLE_DEVICES masks."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

from runner.probe.hardware import parse_cuda_mask, parse_nvidia_smi_query
from tests import hwdata

MIB = 2**20


def test_parse_nvidia_smi_query_on_the_capture(capture):
    gpus, driver = parse_nvidia_smi_query(capture["nvidia_smi_query"])
    assert driver == "580.159.04"
    assert len(gpus) == 4
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert [g.pci_bus_id for g in gpus] == [d["pci"] for d in capture["nvml"]["devices"]]
    for g in gpus:
        assert g.name == "NVIDIA H100 80GB HBM3"
        assert g.memory_total_bytes == 81559 * MIB
        assert g.memory_free_bytes == 81559 * MIB  # 0 MiB used
        assert g.compute_capability == (9, 0)


def test_parse_nvidia_smi_query_without_header(capture):
    text = capture["nvidia_smi_query"]
    no_header = "\n".join(text.splitlines()[1:])
    assert parse_nvidia_smi_query(no_header) == parse_nvidia_smi_query(text)


def test_parse_nvidia_smi_query_used_memory_and_nothing():
    gpus, driver = parse_nvidia_smi_query("0, NVIDIA L40S, 00000000:01:00.0, 46068 MiB, 1024 MiB, 550.54.15, 8.9\n")
    assert gpus[0].memory_free_bytes == (46068 - 1024) * MIB
    assert gpus[0].compute_capability == (8, 9)
    assert parse_nvidia_smi_query("") == ((), None)
    assert parse_nvidia_smi_query("No devices were found\n") == ((), None)


def test_capture_probe_matches_nvml(probe_h100x4, capture):
    assert probe_h100x4.source == "nvml"
    assert probe_h100x4.driver_version == "580.159.04"
    assert probe_h100x4.cuda_driver_version == "13.0"
    assert probe_h100x4.gpu_count == 4
    assert probe_h100x4.gpus[0].memory_total_bytes == 85520809984
    assert probe_h100x4.gpus[2].uuid == "GPU-33efcbc8-13a8-4834-3979-993bca11690f"
    assert len(probe_h100x4.cpus_allowed) == 64
    assert "NV18" in probe_h100x4.topology_matrix
    assert hwdata.cuda_version_text(12040) == "12.4"


def test_h100x2_fixture(probe_h100x2):
    assert [g.index for g in probe_h100x2.visible_gpus()] == [0, 1]


@pytest.mark.parametrize(
    "mask, expected",
    [
        (None, [0, 1, 2, 3]),
        ("1,3", [1, 3]),
        ("3,1", [1, 3]),  # PCI-bus order, whatever the mask's order
        (" 1 , 3 ", [1, 3]),
        ("", []),  # CUDA's meaning: no GPU at all
        ("2,2", [2]),
        ("7", []),
        ("GPU-33efcbc8", [2]),  # a UUID prefix
        ("GPU-9c88bcb3-faf8-e48d-366e-0e58f52d3cd2,0", [0, 3]),
    ],
)
def test_visible_gpus(mask, expected):
    probe = hwdata.probe_from_capture(mask=mask)
    assert [g.index for g in probe.visible_gpus()] == expected


def test_parse_cuda_mask():
    assert parse_cuda_mask("0, 1,,2 ") == ("0", "1", "2")
    assert parse_cuda_mask("") == ()


def test_without_the_nvml_library_pynvml_is_not_imported(tmp_path):
    # nvmlInit could only fail there: the CPU path, as before, without pynvml's import
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        pytest.skip("this machine has NVML")
    except OSError:
        pass
    done = subprocess.run(
        [sys.executable, "-m", "tests.probe.modules_after_plan", str(tmp_path / "run"), "pynvml", "runner"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "imported: runner"
