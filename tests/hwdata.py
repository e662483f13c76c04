"""Recorded hardware captures -> ``runner.probe.HardwareProbe``, so the planner can be
tested against a real machine's answers without that machine."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from runner.plan.topology import parse_p2p_matrix, parse_topo_matrix
from runner.probe.hardware import Gpu, HardwareProbe

FIXTURES = Path(__file__).resolve().parent / "fixtures"
H100X4 = FIXTURES / "h100x4-topology.json"

# "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-ef502aad-...)"
_SMI_L = re.compile(r"^GPU (\d+): .*\(UUID: ([^)]+)\)\s*$", re.MULTILINE)


def load_capture(path: Union[str, Path] = H100X4) -> dict:
    with open(path) as f:
        return json.load(f)


def uuids_from_capture(capture: dict) -> Dict[int, str]:
    """GPU index -> UUID, read from the capture's ``nvidia-smi -L`` text."""
    return {int(i): uuid for i, uuid in _SMI_L.findall(capture.get("nvidia_smi_L") or "")}


def cuda_version_text(version: Optional[int]) -> Optional[str]:
    """NVML's integer CUDA driver version (13000) as the probe writes it ("13.0")."""
    if version is None:
        return None
    return f"{version // 1000}.{(version % 1000) // 10}"


def probe_from_capture(path: Union[str, Path] = H100X4, mask: Optional[str] = None, cpus: int = 64) -> HardwareProbe:
    """A HardwareProbe as ``probe_hardware`` would have built it on the captured machine.

    mask: the caller's CUDA_VISIBLE_DEVICES (None: not set); cpus: cores 0..cpus-1 allowed."""
    capture = load_capture(path)
    nvml = capture["nvml"]
    uuids = uuids_from_capture(capture)
    gpus = tuple(
        Gpu(
            index=int(d["index"]),
            name=d["name"],
            pci_bus_id=d["pci"],
            memory_total_bytes=int(d["mem_total"]),
            compute_capability=tuple(d["cc"]) if d.get("cc") else None,
            uuid=uuids.get(int(d["index"])),
        )
        for d in nvml["devices"]
    )
    return HardwareProbe(
        gpus=gpus,
        cpus_allowed=tuple(range(cpus)),
        driver_version=nvml.get("driver"),
        cuda_driver_version=cuda_version_text(nvml.get("cuda_driver")),
        source="nvml",
        topology_matrix=capture.get("nvidia_smi_topo_m"),
        inherited_cuda_mask=mask,
        links=links_from_capture(capture),
        p2p=parse_p2p_matrix(capture["nvidia_smi_topo_p2p_r"]) if capture.get("nvidia_smi_topo_p2p_r") else {},
    )


def links_from_capture(capture: dict) -> Dict[Tuple[int, int], str]:
    """Pair links (i < j) as the NVML probe reports them, read from the captured topo -m."""
    matrix = parse_topo_matrix(capture["nvidia_smi_topo_m"])
    n = matrix.gpu_count
    return {(i, j): matrix.link(i, j) for i in range(n) for j in range(i + 1, n)}
