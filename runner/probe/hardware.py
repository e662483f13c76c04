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
import sys
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    pci_bus_id: str
    memory_total_bytes: int
    memory_free_bytes: Optional[int] = None
    compute_capability: Optional[Tuple[int, int]] = None
    uuid: Optional[str] = None
    numa_node: Optional[int] = None
    nvlinks_active: Optional[int] = None


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
    # Per pair of GPU indices (i < j): how they are linked, in `nvidia-smi topo -m` words
    # (NV18, PIX, PXB, PHB, NODE, SYS), and whether P2P reads work ("OK" or why not).
    links: Mapping[Tuple[int, int], str] = field(default_factory=dict)
    p2p: Mapping[Tuple[int, int], str] = field(default_factory=dict)
    numa_nodes: int = 1
    # The CPUs of each NUMA node (/sys/devices/system/node/node*/cpulist), node by node.
    cpu_numa_nodes: Tuple[Tuple[int, ...], ...] = ()

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


# nvmlDeviceGetTopologyCommonAncestor's levels, named as `nvidia-smi topo -m` names them.
_ANCESTOR_WORDS = {0: "PIX", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
# NVML's P2P status codes (nvml.h, nvmlGpuP2PStatus_t), as `nvidia-smi topo -p2p` prints them.
_P2P_WORDS = {0: "OK", 1: "CNS", 2: "GNS", 3: "TNS", 4: "DISABLED", 5: "NS", 6: "U"}
# nvml.h nvmlGpuP2PCapsIndex_t. Written out: nvidia-ml-py 13 defines
# NVML_P2P_CAPS_INDEX_READ as the tuple (0,), which ctypes refuses (ArgumentError).
_P2P_READ, _P2P_NVLINK = 0, 2


def _numa_node(pci_bus_id: str) -> Optional[int]:
    """The NUMA node the kernel gives the GPU's PCI function (-1 or unknown: None)."""
    domain, _, rest = pci_bus_id.lower().partition(":")
    path = f"/sys/bus/pci/devices/{domain[-4:]}:{rest}/numa_node"
    try:
        with open(path) as f:
            node = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def _cpu_list(text: str) -> Tuple[int, ...]:
    """ "0-3,8-11" -> (0, 1, 2, 3, 8, 9, 10, 11)."""
    cpus = []
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            cpus += range(int(lo), int(hi) + 1)
        elif part:
            cpus.append(int(part))
    return tuple(cpus)


def _cpu_numa_nodes() -> Tuple[Tuple[int, ...], ...]:
    root = "/sys/devices/system/node"
    try:
        names = sorted(
            (n for n in os.listdir(root) if n.startswith("node") and n[4:].isdigit()), key=lambda n: int(n[4:])
        )
        nodes = []
        for name in names:
            with open(f"{root}/{name}/cpulist") as f:
                nodes.append(_cpu_list(f.read()))
        return tuple(nodes)
    except (OSError, ValueError):
        return ()


def _nvlinks_active(pynvml, handle) -> Optional[int]:
    active = 0
    for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
        try:
            active += 1 if pynvml.nvmlDeviceGetNvLinkState(handle, link) else 0
        except Exception:  # no such link, or no NVLink on this GPU
            break
    return active


def _nvml_pairs(pynvml, gpus: Sequence[Gpu]) -> Tuple[Dict[Tuple[int, int], str], Dict[Tuple[int, int], str]]:
    """How each pair is linked and whether P2P works, from NVML (fast: no nvidia-smi)."""
    links: Dict[Tuple[int, int], str] = {}
    p2p: Dict[Tuple[int, int], str] = {}
    handles = {g.index: pynvml.nvmlDeviceGetHandleByIndex(g.index) for g in gpus}
    for a in gpus:
        for b in gpus:
            if b.index <= a.index:
                continue
            ha, hb = handles[a.index], handles[b.index]
            try:
                nvlink = pynvml.nvmlDeviceGetP2PStatus(ha, hb, _P2P_NVLINK) == 0
            except Exception:
                nvlink = False
            if nvlink:
                links[(a.index, b.index)] = f"NV{min(a.nvlinks_active or 0, b.nvlinks_active or 0) or 1}"
            else:
                try:
                    level = int(pynvml.nvmlDeviceGetTopologyCommonAncestor(ha, hb))
                    links[(a.index, b.index)] = _ANCESTOR_WORDS.get(level, "SYS")
                except Exception:
                    pass
            try:
                p2p[(a.index, b.index)] = _P2P_WORDS.get(int(pynvml.nvmlDeviceGetP2PStatus(ha, hb, _P2P_READ)), "U")
            except Exception:
                pass
    return links, p2p


def _nvml_library_loads() -> bool:
    """Off Windows pynvml's nvmlInit loads ``libnvidia-ml.so.1`` and fails without it: a machine
    with no NVIDIA driver then need not import pynvml (~200 kB of Python, 5-10 ms of each plan)."""
    if "pynvml" in sys.modules or sys.platform[:3] == "win":
        return True
    import ctypes

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def _probe_nvml() -> Optional[dict]:
    if not _nvml_library_loads():  # nvmlInit would fail: the CPU path
        return None
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
                    numa_node=_numa_node(_decode(pynvml.nvmlDeviceGetPciInfo(h).busId)),
                    nvlinks_active=_nvlinks_active(pynvml, h),
                )
            )
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        try:
            links, p2p = _nvml_pairs(pynvml, gpus)
        except Exception:  # pairs are for placement; without them the first GPUs in PCI order
            links, p2p = {}, {}
        return {
            "gpus": tuple(gpus),
            "links": links,
            "p2p": p2p,
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
    links: Mapping[Tuple[int, int], str] = {}
    p2p: Mapping[Tuple[int, int], str] = {}
    if nvml is not None:
        source, gpus = "nvml", nvml["gpus"]
        links, p2p = nvml["links"], nvml["p2p"]
        driver, cuda = nvml["driver_version"], nvml["cuda_driver_version"]
    else:
        text = _run(
            [
                "nvidia-smi",
                "--query-gpu=index,name,pci.bus_id,memory.total,memory.used,driver_version,compute_cap",
                "--format=csv,noheader",
            ]
        )
        if text:
            gpus, driver = parse_nvidia_smi_query(text)
            source = "nvidia-smi"
            notes.append("NVML unavailable; read GPUs from nvidia-smi")
    topology = topology_matrix() if (with_topology and gpus) else None
    if gpus and not links and topology is None:
        topology = topology_matrix()  # no NVML pairs: placement needs nvidia-smi's matrix
    cpu_nodes = _cpu_numa_nodes()
    return HardwareProbe(
        gpus=gpus,
        cpus_allowed=_cpus_allowed(),
        driver_version=driver,
        cuda_driver_version=cuda,
        source=source,
        topology_matrix=topology,
        inherited_cuda_mask=os.environ.get("CUDA_VISIBLE_DEVICES"),
        notes=tuple(notes),
        links=links,
        p2p=p2p,
        numa_nodes=max(1, len(cpu_nodes)),
        cpu_numa_nodes=cpu_nodes,
    )
