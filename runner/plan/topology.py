"""GPU topology: read ``nvidia-smi topo`` matrices and pick GPUs for one tensor-parallel group.

Pure functions only; the probe captures the text, this module reads it. GPU indices are the
ones nvidia-smi prints, which are PCI-bus order, the order the runner gives CUDA
(CUDA_DEVICE_ORDER=PCI_BUS_ID), so an index here names the same card everywhere.

A tensor-parallel group all-reduces on every layer, so it runs at the pace of its slowest
pair: placement maximises the worst pair link first and only then looks at anything else.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

GIB = 2**30

# nvidia-smi's PCIe path levels, nearest first. SOC is what drivers before ~2017 printed for SYS.
_PCIE_RANKS: Dict[str, int] = {"PIX": 5, "PXB": 4, "PHB": 3, "NODE": 2, "SYS": 1}
_ALIASES: Dict[str, str] = {"SOC": "SYS"}
# Every NVLink bond outranks every PCIe path; more bonded links rank higher still.
_NVLINK_BASE = 100
# A pair whose P2P status is not OK ranks below SYS: traffic would bounce through host memory.
P2P_FAILED_RANK = 0

P2P_OK = "OK"
P2P_STATUSES = frozenset({"OK", "CNS", "GNS", "TNS", "NS", "DR", "U"})
_P2P_MEANING = {
    "CNS": "chipset not supported",
    "GNS": "GPU not supported",
    "TNS": "topology not supported",
    "NS": "not supported",
    "DR": "disabled by regkey",
    "U": "unknown",
}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NVLINK = re.compile(r"NV(\d+)")
_GPU_NAME = re.compile(r"GPU(\d+)")
_ATTRIBUTE_COLUMNS = ("CPU Affinity", "NUMA Affinity", "GPU NUMA ID")
_MAX_COMBINATIONS = 200_000  # C(16, 8) is 12,870: every real single host fits with room to spare


class PlacementError(ValueError):
    """Too few usable GPUs for the requested group."""


# --------------------------------------------------------------------------- link ranks


def normalize_link(link: str) -> str:
    """Upper-case, strip, and map old names (SOC) to current ones (SYS)."""
    token = link.strip().upper()
    return _ALIASES.get(token, token)


def is_nvlink(link: str) -> bool:
    """True for NV1, NV2, ... NV18: a bonded set of NVLinks."""
    return _NVLINK.fullmatch(normalize_link(link)) is not None


def link_rank(link: str) -> int:
    """Rank of a pair link, higher is better: NV18 > NV12 > ... > NV1 > PIX > PXB > PHB > NODE > SYS."""
    token = normalize_link(link)
    nvlink = _NVLINK.fullmatch(token)
    if nvlink:
        return _NVLINK_BASE + int(nvlink.group(1))
    if token in _PCIE_RANKS:
        return _PCIE_RANKS[token]
    raise ValueError(f"unknown GPU link type {link!r} (expected NV<n>, PIX, PXB, PHB, NODE or SYS)")


def _is_link_token(token: str) -> bool:
    token = normalize_link(token)
    return token == "X" or token in _PCIE_RANKS or _NVLINK.fullmatch(token) is not None


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class TopoMatrix:
    """The GPU part of ``nvidia-smi topo -m``; NIC rows and columns are kept by name only."""

    links: Tuple[Tuple[str, ...], ...]
    cpu_affinities: Tuple[Optional[Tuple[int, ...]], ...]
    numa_nodes: Tuple[Optional[int], ...]
    gpu_numa_ids: Tuple[Optional[int], ...]
    nics: Tuple[str, ...] = ()
    nic_legend: Dict[str, str] = field(default_factory=dict)

    @property
    def gpu_count(self) -> int:
        return len(self.links)

    def _check(self, index: int) -> None:
        if not 0 <= index < self.gpu_count:
            raise IndexError(f"GPU {index} is not in this {self.gpu_count}-GPU matrix")

    def link(self, i: int, j: int) -> str:
        """Link between GPUs i and j as nvidia-smi names it ("X" for i == j)."""
        self._check(i)
        self._check(j)
        return self.links[i][j]

    def cpu_affinity(self, index: int) -> Optional[Tuple[int, ...]]:
        self._check(index)
        return self.cpu_affinities[index]

    def numa_node(self, index: int) -> Optional[int]:
        self._check(index)
        return self.numa_nodes[index]


def matrix_from_pairs(
    count: int, pairs: Mapping[Tuple[int, int], str], numa_nodes: Optional[Sequence[Optional[int]]] = None
) -> TopoMatrix:
    """A TopoMatrix from per-pair link words (i < j), as the NVML probe gives them."""
    rows = [
        ["X" if i == j else normalize_link(pairs.get((min(i, j), max(i, j)), "SYS")) for j in range(count)]
        for i in range(count)
    ]
    numa = tuple(numa_nodes) if numa_nodes is not None else (None,) * count
    return TopoMatrix(
        links=tuple(tuple(r) for r in rows),
        cpu_affinities=(None,) * count,
        numa_nodes=numa,
        gpu_numa_ids=(None,) * count,
    )


def strip_ansi(text: str) -> str:
    """Remove terminal escapes (nvidia-smi underlines the header when it thinks it has a TTY)."""
    return _ANSI.sub("", text)


def parse_cpu_list(value: str) -> Optional[Tuple[int, ...]]:
    """Expand "0-31,64-95" into CPU ids; None for "N/A", empty or malformed values."""
    value = value.strip()
    if not value or value.upper() == "N/A":
        return None
    cpus: List[int] = []
    for part in value.split(","):
        bounds = part.strip().split("-")
        if len(bounds) == 1 and bounds[0].isdigit():
            cpus.append(int(bounds[0]))
        elif len(bounds) == 2 and bounds[0].isdigit() and bounds[1].isdigit() and int(bounds[0]) <= int(bounds[1]):
            cpus.extend(range(int(bounds[0]), int(bounds[1]) + 1))
        else:
            return None
    return tuple(sorted(set(cpus)))


def _single_int(value: str) -> Optional[int]:
    value = value.strip()
    return int(value) if value.isdigit() else None


def _is_matrix_word(word: str) -> bool:
    return _is_link_token(word) or word in P2P_STATUSES or re.fullmatch(r"(GPU|NIC)\d+", word) is not None


def _split_cells(line: str) -> List[str]:
    """Cells of one matrix line: tab separated as printed, or space aligned as pasted in posts.

    Space-aligned copies sometimes squeeze two cells to one space ("GPU0 GPU1", "NODE NODE");
    those are split again, while "CPU Affinity" stays one cell.
    """
    if "\t" in line:
        return [cell.strip() for cell in line.strip(" ").split("\t")]
    cells: List[str] = []
    for cell in re.split(r" {2,}", line.strip()):
        words = cell.split()
        cells.extend(words if len(words) > 1 and all(_is_matrix_word(w) for w in words) else [cell])
    return cells


def _find_header(lines: Sequence[str], what: str) -> Tuple[int, List[str]]:
    for number, line in enumerate(lines):
        cells = [c for c in _split_cells(line) if c]
        if cells and cells[0] == "GPU0":
            return number, cells
        if cells and cells[0].startswith("GPU") and _GPU_NAME.fullmatch(cells[0]):
            raise ValueError(f"not an {what}: header starts with {cells[0]}, expected GPU0")
    raise ValueError(f"not an {what}: no header row naming GPU0")


def _table_rows(lines: Sequence[str], start: int) -> List[List[str]]:
    rows = []
    for line in lines[start:]:
        if not line.strip() or line.strip().startswith("Legend"):
            break
        rows.append(_split_cells(line))
    return rows


def _gpu_indices(names: Sequence[str], what: str) -> List[int]:
    expected = [f"GPU{i}" for i in range(len(names))]
    if list(names) != expected:
        raise ValueError(f"not an {what}: GPU columns are {', '.join(names)}, expected {', '.join(expected)}")
    return list(range(len(names)))


def _nic_legend(lines: Sequence[str]) -> Dict[str, str]:
    legend: Dict[str, str] = {}
    inside = False
    for line in lines:
        if line.strip().startswith("NIC Legend"):
            inside = True
            continue
        if inside:
            match = re.fullmatch(r"\s*(\S+)\s*:\s*(\S+)\s*", line)
            if match:
                legend[match.group(1)] = match.group(2)
            elif line.strip():
                break
    return legend


def _attributes(trailing: Sequence[str], names: Sequence[str]) -> Dict[str, str]:
    """Map the cells after the link columns onto the attribute headers.

    nvidia-smi pads with an extra empty cell before "GPU NUMA ID", so empty cells are dropped
    first; a genuinely empty value only survives when the cell count matches the header.
    """
    filled = [c for c in trailing if c]
    if len(filled) == len(names) or len(trailing) != len(names):
        return dict(zip(names, filled, strict=False))
    return dict(zip(names, trailing, strict=False))


def parse_topo_matrix(text: str) -> TopoMatrix:
    """Parse ``nvidia-smi topo -m`` output (ANSI escapes, tabs or space alignment, NIC rows)."""
    what = "nvidia-smi topo -m matrix"
    lines = strip_ansi(text).replace("\r\n", "\n").split("\n")
    header_line, header = _find_header(lines, what)
    device_columns: List[str] = []
    for cell in header:
        if cell in _ATTRIBUTE_COLUMNS:
            break
        device_columns.append(cell)
    attribute_columns = header[len(device_columns) :]
    gpu_columns = [c for c in device_columns if _GPU_NAME.fullmatch(c)]
    if device_columns[: len(gpu_columns)] != gpu_columns:
        raise ValueError(f"not an {what}: GPU columns must come before NIC columns ({' '.join(device_columns)})")
    count = len(_gpu_indices(gpu_columns, what))
    nics = tuple(device_columns[count:])

    rows = {cells[0]: cells for cells in _table_rows(lines, header_line + 1) if cells and cells[0]}
    links: List[Tuple[str, ...]] = []
    cpu_affinities: List[Optional[Tuple[int, ...]]] = []
    numa_nodes: List[Optional[int]] = []
    gpu_numa_ids: List[Optional[int]] = []
    for i in range(count):
        cells = rows.get(f"GPU{i}")
        if cells is None:
            raise ValueError(f"not an {what}: no row for GPU{i}")
        if len(cells) < 1 + len(device_columns):
            raise ValueError(f"{what}: row GPU{i} has {len(cells) - 1} cells, expected at least {len(device_columns)}")
        row = []
        for j, token in enumerate(cells[1 : 1 + count]):
            if token in P2P_STATUSES and token != "X" and i != j:
                raise ValueError(f"{what}: cell GPU{i}/GPU{j} is {token!r}; this looks like a topo -p2p matrix")
            if not _is_link_token(token):
                raise ValueError(f"{what}: unknown link {token!r} between GPU{i} and GPU{j}")
            link = normalize_link(token)
            if (i == j) != (link == "X"):
                raise ValueError(f"{what}: GPU{i}/GPU{j} is {token!r}; 'X' belongs on the diagonal only")
            row.append(link)
        links.append(tuple(row))
        attributes = _attributes(cells[1 + len(device_columns) :], attribute_columns)
        cpu_affinities.append(parse_cpu_list(attributes.get("CPU Affinity", "")))
        numa_nodes.append(_single_int(attributes.get("NUMA Affinity", "")))
        gpu_numa_ids.append(_single_int(attributes.get("GPU NUMA ID", "")))
    return TopoMatrix(
        links=tuple(links),
        cpu_affinities=tuple(cpu_affinities),
        numa_nodes=tuple(numa_nodes),
        gpu_numa_ids=tuple(gpu_numa_ids),
        nics=nics,
        nic_legend=_nic_legend(lines),
    )


def parse_p2p_matrix(text: str) -> Dict[Tuple[int, int], str]:
    """Parse ``nvidia-smi topo -p2p r|w|n|a`` output into {(i, j): status}, diagonal left out."""
    what = "nvidia-smi topo -p2p matrix"
    lines = strip_ansi(text).replace("\r\n", "\n").split("\n")
    header_line, header = _find_header(lines, what)
    gpu_columns = list(itertools.takewhile(lambda c: _GPU_NAME.fullmatch(c) is not None, header))
    count = len(_gpu_indices(gpu_columns, what))
    rows = {cells[0]: cells for cells in _table_rows(lines, header_line + 1) if cells and cells[0]}
    statuses: Dict[Tuple[int, int], str] = {}
    for i in range(count):
        cells = rows.get(f"GPU{i}")
        if cells is None:
            raise ValueError(f"not an {what}: no row for GPU{i}")
        values = [c.upper() for c in cells[1:] if c][:count]
        if len(values) != count:
            raise ValueError(f"{what}: row GPU{i} has {len(values)} cells, expected {count}")
        for j, status in enumerate(values):
            if i == j:
                if status != "X":
                    raise ValueError(f"{what}: diagonal GPU{i} is {status!r}, expected 'X'")
                continue
            if status not in P2P_STATUSES:
                hint = "; this looks like a topo -m matrix" if _is_link_token(status) else ""
                raise ValueError(f"{what}: unknown P2P status {status!r} between GPU{i} and GPU{j}{hint}")
            statuses[(i, j)] = status
    return statuses


# --------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class Placement:
    """GPUs chosen for one tensor-parallel group, and why."""

    devices: Tuple[int, ...]  # ascending: PCI-bus order, the order nvidia-smi and CUDA use
    worst_link: str  # weakest topology link in the group ("X" for one GPU); P2P failures are in reason
    interconnect: str  # nvlink | pcie | none (a single GPU has no peers)
    same_numa: bool
    skipped: Dict[int, str]
    reason: str


def group_interconnect(matrix: TopoMatrix, devices: Sequence[int]) -> str:
    """'nvlink' if every pair is NVLink, else 'pcie'; 'none' for fewer than two GPUs."""
    if len(devices) < 2:
        return "none"
    pairs = itertools.combinations(devices, 2)
    return "nvlink" if all(is_nvlink(matrix.link(i, j)) for i, j in pairs) else "pcie"


def _p2p_status(p2p: Optional[Mapping[Tuple[int, int], str]], i: int, j: int) -> Optional[str]:
    """The worse of both directions; None when the capture does not cover the pair."""
    if not p2p:
        return None
    found = [p2p[key].upper() for key in ((i, j), (j, i)) if key in p2p]
    bad = [s for s in found if s != P2P_OK]
    return bad[0] if bad else (P2P_OK if found else None)


def p2p_failed_pairs(p2p: Optional[Mapping[Tuple[int, int], str]], devices: Sequence[int]) -> List[Tuple[int, int]]:
    """Pairs (i < j) of devices whose P2P status is anything but OK in either direction."""
    ordered = sorted(set(devices))
    return [(i, j) for i, j in itertools.combinations(ordered, 2) if _p2p_status(p2p, i, j) not in (None, P2P_OK)]


def same_numa_node(matrix: TopoMatrix, devices: Sequence[int]) -> bool:
    """All devices on one NUMA node: by NUMA Affinity, else by identical CPU affinity."""
    numa = [matrix.numa_node(d) for d in devices]
    if all(n is not None for n in numa):
        return len(set(numa)) <= 1
    cpus = [matrix.cpu_affinity(d) for d in devices]
    if all(c is not None for c in cpus):
        return len(set(cpus)) <= 1
    return False


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


def _gpu_list(devices: Sequence[int]) -> str:
    return ",".join(str(d) for d in devices)


_PCIE_WORDS = {
    "PIX": "same PCIe switch (PIX)",
    "PXB": "same PCIe switch tree (PXB)",
    "PHB": "same PCIe host bridge (PHB)",
    "NODE": "same NUMA node, across host bridges (NODE)",
    "SYS": "across the CPU interconnect (SYS)",
}


def _weakest_link(matrix: TopoMatrix, devices: Sequence[int]) -> str:
    return min((matrix.link(i, j) for i, j in itertools.combinations(devices, 2)), key=link_rank)


def _describe_links(matrix: TopoMatrix, devices: Sequence[int], same_numa: bool) -> str:
    links = [matrix.link(i, j) for i, j in itertools.combinations(devices, 2)]
    worst = min(links, key=link_rank)
    nvlinked = sum(1 for link in links if is_nvlink(link))
    if nvlinked == len(links):
        if len(set(links)) == 1:
            return f"every pair linked by {worst}"
        return f"every pair linked by NVLink (weakest {worst})"
    text = _PCIE_WORDS[worst]
    if worst == "SYS" and same_numa:
        text += ", though on one NUMA node"
    if nvlinked:
        text += f", NVLink on {nvlinked} of {len(links)} pairs"
    return text


def choose_gpus(
    matrix: TopoMatrix,
    n: int,
    candidates: Optional[Sequence[int]] = None,
    free_bytes: Optional[Mapping[int, int]] = None,
    min_free_bytes: int = 0,
    p2p: Optional[Mapping[Tuple[int, int], str]] = None,
) -> Placement:
    """Choose n GPUs for one tensor-parallel group.

    Order of rules: only ``candidates`` (the user's mask); drop GPUs with less than
    ``min_free_bytes`` free (someone else is on them); then among the remaining n-subsets prefer
    the best worst-pair link (a pair whose P2P status is not OK counts below SYS), then one NUMA
    node, then the best sum of pair ranks, then the most free memory, then the lowest indices.
    For n == 1: the usable GPU with the most free memory, lowest index on ties.
    """
    if n < 1:
        raise ValueError(f"a tensor-parallel group needs at least 1 GPU, got {n}")
    pool = list(range(matrix.gpu_count)) if candidates is None else sorted(set(candidates))
    for index in pool:
        if not 0 <= index < matrix.gpu_count:
            raise ValueError(f"GPU {index} is in the device mask but the topology shows GPUs 0-{matrix.gpu_count - 1}")
    free = dict(free_bytes or {})
    skipped: Dict[int, str] = {}
    for index in pool:
        if index in free and free[index] < min_free_bytes:
            skipped[index] = f"{_gib(free[index])} free, below {_gib(min_free_bytes)}"
    usable = [index for index in pool if index not in skipped]
    skipped_text = "; ".join(f"GPU {i} skipped: {why}" for i, why in sorted(skipped.items()))

    if len(usable) < n:
        scope = f"of the visible GPUs {_gpu_list(pool)}" if candidates is not None else f"of {matrix.gpu_count}"
        message = f"need {n} GPUs for the tensor-parallel group but only {len(usable)} {scope} are usable"
        if usable:
            message += f" ({_gpu_list(usable)})"
        raise PlacementError(message + (f"; {skipped_text}" if skipped_text else ""))

    if n == 1:
        best = max(usable, key=lambda d: (free.get(d, 0) // GIB, -d))  # whole GiB: idle cards tie
        why = f"most free memory ({_gib(free[best])})" if best in free else "first usable GPU"
        reason = f"GPU {best}: {why}" + (f"; {skipped_text}" if skipped_text else "")
        return Placement((best,), "X", "none", True, skipped, reason)

    if math.comb(len(usable), n) > _MAX_COMBINATIONS:
        raise ValueError(f"too many ways to pick {n} of {len(usable)} GPUs to compare them all; narrow the device mask")

    def pair_rank(i: int, j: int) -> int:
        status = _p2p_status(p2p, i, j)
        return P2P_FAILED_RANK if status not in (None, P2P_OK) else link_rank(matrix.link(i, j))

    best_key = None
    best_group: Tuple[int, ...] = ()
    for group in itertools.combinations(usable, n):  # lexicographic, so ties keep the lowest indices
        ranks = [pair_rank(i, j) for i, j in itertools.combinations(group, 2)]
        key = (min(ranks), same_numa_node(matrix, group), sum(ranks), sum(free.get(d, 0) // GIB for d in group))
        if best_key is None or key > best_key:
            best_key, best_group = key, group

    same_numa = same_numa_node(matrix, best_group)
    parts = [f"GPUs {_gpu_list(best_group)}: {_describe_links(matrix, best_group, same_numa)}"]
    for i, j in p2p_failed_pairs(p2p, best_group):
        status = _p2p_status(p2p, i, j) or ""
        parts.append(f"P2P {status} ({_P2P_MEANING.get(status, status)}) between GPUs {i} and {j}")
    if skipped_text:
        parts.append(skipped_text)
    return Placement(
        devices=best_group,
        worst_link=_weakest_link(matrix, best_group),
        interconnect=group_interconnect(matrix, best_group),
        same_numa=same_numa,
        skipped=skipped,
        reason="; ".join(parts),
    )
