"""Hardware probe: one of the two seams that touch the outside world.

Everything it learns goes into a frozen ``HardwareProbe``; the planner is a pure function of
that and the config, so tests feed it recorded captures instead of a live machine.
NVML is asked first; ``nvidia-smi`` is the fallback (and gives the topology matrix that the
manifest keeps). NVML numbers GPUs in PCI-bus order, which is the order the runner also
tells CUDA to use (CUDA_DEVICE_ORDER=PCI_BUS_ID), so indices mean the same thing everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    pci_bus_id: str
    memory_total_bytes: int
    memory_free_bytes: Optional[int] = None
    compute_capability: Optional[Tuple[int, int]] = None
    uuid: Optional[str] = None


@dataclass(frozen=True)
class HardwareProbe:
    gpus: Tuple[Gpu, ...] = ()
    cpus_allowed: Tuple[int, ...] = ()
    driver_version: Optional[str] = None
    cuda_driver_version: Optional[str] = None
    source: str = "none"  # nvml | nvidia-smi | none
    topology_matrix: Optional[str] = None
    # The caller's CUDA_VISIBLE_DEVICES, if any: a mask the runner honours.
    inherited_cuda_mask: Optional[str] = None
    notes: Tuple[str, ...] = field(default_factory=tuple)

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def visible_gpus(self) -> Tuple[Gpu, ...]:
        """GPUs the caller lets us use: all of them, or those in the inherited mask."""
        if self.inherited_cuda_mask is None:
            return self.gpus
        chosen = []
        for token in parse_cuda_mask(self.inherited_cuda_mask):
            for gpu in self.gpus:
                if token == str(gpu.index) or (gpu.uuid and gpu.uuid.startswith(token)):
                    if gpu not in chosen:
                        chosen.append(gpu)
        return tuple(sorted(chosen, key=lambda g: g.pci_bus_id))


def parse_cuda_mask(mask: str) -> Tuple[str, ...]:
    return tuple(t.strip() for t in mask.split(",") if t.strip())


def _cpus_allowed() -> Tuple[int, ...]:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return tuple(range(os.cpu_count() or 1))


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _probe_nvml() -> Optional[dict]:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, or no GPU: the CPU path
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                cc = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(h))
            except Exception:
                cc = None
            gpus.append(
                Gpu(
                    index=i,
                    name=_decode(pynvml.nvmlDeviceGetName(h)),
                    pci_bus_id=_decode(pynvml.nvmlDeviceGetPciInfo(h).busId),
                    memory_total_bytes=int(mem.total),
                    memory_free_bytes=int(mem.free),
                    compute_capability=cc,
                    uuid=_decode(pynvml.nvmlDeviceGetUUID(h)),
                )
            )
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return {
            "gpus": tuple(gpus),
            "driver_version": _decode(pynvml.nvmlSystemGetDriverVersion()),
            "cuda_driver_version": f"{cuda // 1000}.{(cuda % 1000) // 10}",
        }
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _run(cmd: Sequence[str], timeout: float = 15.0) -> Optional[str]:
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def parse_nvidia_smi_query(text: str) -> Tuple[Tuple[Gpu, ...], Optional[str]]:
    """Parse ``nvidia-smi --query-gpu=index,name,pci.bus_id,memory.total,memory.used,
    driver_version,compute_cap --format=csv`` (with or without the header)."""
    gpus, driver = [], None
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 7 or not cells[0].isdigit():
            continue
        total = int(cells[3].split()[0]) * 2**20
        used = int(cells[4].split()[0]) * 2**20
        major, _, minor = cells[6].partition(".")
        gpus.append(
            Gpu(
                index=int(cells[0]),
                name=cells[1],
                pci_bus_id=cells[2],
                memory_total_bytes=total,
                memory_free_bytes=total - used,
                compute_capability=(int(major), int(minor or 0)),
            )
        )
        driver = cells[5]
    return tuple(gpus), driver


def topology_matrix() -> Optional[str]:
    """`nvidia-smi topo -m`, kept in the manifest. Slow-ish (up to a second): callers that
    are about to launch ask for it after the spawn, not before."""
    return _run(["nvidia-smi", "topo", "-m"])


def probe_hardware(with_topology: bool = True) -> HardwareProbe:
    """Ask the machine what it has. Never raises: a machine with no GPU is a valid answer."""
    notes = []
    nvml = _probe_nvml()
    source = "none"
    gpus: Tuple[Gpu, ...] = ()
    driver = cuda = None
    if nvml is not None:
        source, gpus = "nvml", nvml["gpus"]
        driver, cuda = nvml["driver_version"], nvml["cuda_driver_version"]
    else:
        text = _run(
            [
                "nvidia-smi",
                "--query-gpu=index,name,pci.bus_id,memory.total,memory.used,"
                "driver_version,compute_cap",
                "--format=csv,noheader",
            ]
        )
        if text:
            gpus, driver = parse_nvidia_smi_query(text)
            source = "nvidia-smi"
            notes.append("NVML unavailable; read GPUs from nvidia-smi")
    topology = topology_matrix() if (with_topology and gpus) else None
    return HardwareProbe(
        gpus=gpus,
        cpus_allowed=_cpus_allowed(),
        driver_version=driver,
        cuda_driver_version=cuda,
        source=source,
        topology_matrix=topology,
        inherited_cuda_mask=os.environ.get("CUDA_VISIBLE_DEVICES"),
        notes=tuple(notes),
    )
