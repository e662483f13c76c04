"""What a GPU can do, from its maker's sheet: the facts the performance model divides by.

Keyed by the name NVML reports, without the "NVIDIA " prefix (``nvmlDeviceGetName``: "NVIDIA H100 80GB
HBM3"). Figures are the public data-sheet peaks, decimal units, dense (the sheets' "with sparsity" figures
halved): HBM bandwidth in GB/s, tensor-core TFLOPS for bf16 (fp32 accumulate) and fp8, and the
interconnect's total (both directions) bandwidth per GPU in GB/s. A profile's ``hw`` values override any
of them (:func:`card_facts`), and a card that is not here, or a CPU, gets a :class:`NoCardFacts` that says
which keys would make a prediction possible, rather than a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Dict, Mapping, Optional, Tuple, Union


@dataclass(frozen=True)
class CardFacts:
    key: str  # this table's name for the card
    memory_bandwidth_gbps: float
    bf16_tflops: float
    fp8_tflops: Optional[float]  # None: no fp8 tensor cores (compute capability < 8.9)
    nvlink_gbps: Optional[float]  # total, both directions, per GPU; None: no NVLink
    pcie_gbps: float  # total, both directions, of the x16 slot
    compute_capability: Tuple[int, int]
    memory_gib: Optional[float] = None
    note: str = ""
    overridden: Tuple[str, ...] = ()  # fields a profile set

    @property
    def fp8(self) -> bool:
        # fp8 tensor cores arrived with Ada (8.9) and Hopper (9.0); vLLM's fp8 W8A8 path needs them.
        return self.compute_capability >= (8, 9) and self.fp8_tflops is not None

    def peak_tflops(self, fp8: bool) -> float:
        return self.fp8_tflops if fp8 and self.fp8 and self.fp8_tflops else self.bf16_tflops

    def link_gbps(self, interconnect: Optional[str]) -> float:
        """The per-GPU bandwidth of the link TP's all-reduce crosses (total of both directions)."""
        if interconnect in (None, "auto", "nvlink", "nvswitch") and self.nvlink_gbps:
            return self.nvlink_gbps
        return self.pcie_gbps

    def to_dict(self) -> Dict[str, Any]:
        return {
            "key": self.key,
            "memory_bandwidth_gbps": self.memory_bandwidth_gbps,
            "bf16_tflops": self.bf16_tflops,
            "fp8_tflops": self.fp8_tflops,
            "nvlink_gbps": self.nvlink_gbps,
            "pcie_gbps": self.pcie_gbps,
            "compute_capability": list(self.compute_capability),
            "overridden": list(self.overridden),
        }


@dataclass(frozen=True)
class NoCardFacts:
    name: Optional[str]
    reason: str

    def __bool__(self) -> bool:
        return False


PCIE4, PCIE5, PCIE6 = 64.0, 128.0, 256.0

# Order matters only where one key is a substring of another's NVML name: the longer, more specific
# names come first (H100 NVL before H100, A100 80GB PCIe before A100 PCIe).
CARDS: Tuple[CardFacts, ...] = (
    CardFacts("B200", 8000, 2250, 4500, 1800, PCIE6, (10, 0), 180, "HGX B200 sheet: 4.5 PF fp8, 2.25 PF bf16 dense"),
    CardFacts("H200 NVL", 4800, 835.5, 1670.5, 900, PCIE5, (9, 0), 141, "sheet: 1,671 / 3,341 TF with sparsity"),
    CardFacts("H200", 4800, 989.5, 1979, 900, PCIE5, (9, 0), 141, "SXM; same compute as H100 SXM"),
    CardFacts("H100 NVL", 3900, 835.5, 1670.5, 600, PCIE5, (9, 0), 94, "NVLink bridge, 600 GB/s"),
    CardFacts("H100 PCIe", 2000, 756, 1513, 600, PCIE5, (9, 0), 80, "HBM2e; NVLink bridge where fitted"),
    CardFacts("H100 80GB HBM3", 3350, 989.5, 1979, 900, PCIE5, (9, 0), 80, "H100 SXM5"),
    CardFacts("A100-SXM4-80GB", 2039, 312, None, 600, PCIE4, (8, 0), 80),
    CardFacts("A100-SXM4-40GB", 1555, 312, None, 600, PCIE4, (8, 0), 40),
    CardFacts("A100 80GB PCIe", 1935, 312, None, 600, PCIE4, (8, 0), 80, "NVLink bridge where fitted"),
    CardFacts("A100-PCIE-40GB", 1555, 312, None, 600, PCIE4, (8, 0), 40, "NVLink bridge where fitted"),
    CardFacts("L40S", 864, 362, 733, None, PCIE4, (8, 9), 48),
    CardFacts("L4", 300, 121, 242.5, None, PCIE4, (8, 9), 24),
    CardFacts("A10G", 600, 70, None, None, PCIE4, (8, 6), 24, "AWS's A10 variant: no NVIDIA sheet; 70 TF as cited"),
    CardFacts("A10", 600, 125, None, None, PCIE4, (8, 6), 24),
    CardFacts("RTX 4090", 1008, 165.2, 330.3, None, PCIE4, (8, 9), 24, "GeForce: fp32-accumulate rates"),
)

# Fields of CardFacts a profile may set, and the hw keys they come from.
OVERRIDE_KEYS = {
    "memory_bandwidth_gbps": "memory_bandwidth_gbps",
    "bf16_tflops": "peak_bf16_tflops",
    "fp8_tflops": "peak_fp8_tflops",
    "nvlink_gbps": "nvlink_gbps",
    "pcie_gbps": "pcie_gbps",
}


def _normal(name: str) -> str:
    name = re.sub(r"^(NVIDIA|Tesla)\s+", "", name.strip(), flags=re.IGNORECASE)
    name = re.sub(r"^GeForce\s+", "", name, flags=re.IGNORECASE)
    return re.sub(r"[\s_-]+", " ", name).lower()


def match_card(name: Optional[str]) -> Optional[CardFacts]:
    """The table's entry for an NVML name ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA
    GeForce RTX 4090"), matched on whole words so that "L4" is not found in "L40S"."""
    if not name:
        return None
    wanted = _normal(name)
    for card in CARDS:
        key = _normal(card.key)
        if wanted == key or re.search(rf"(^|\s){re.escape(key)}($|\s)", wanted):
            return card
    return None


def card_facts(
    name: Optional[str], overrides: Optional[Mapping[str, Any]] = None, device: str = "cuda"
) -> Union[CardFacts, NoCardFacts]:
    """The card's facts with a profile's values on top.

    ``overrides`` is the ``hw`` section (or any mapping) read for the keys in :data:`OVERRIDE_KEYS`;
    None values are ignored. An unknown card or a CPU can still be predicted when the overrides name
    both memory bandwidth and bf16 peak."""
    given = {
        field: float(overrides[key])
        for field, key in OVERRIDE_KEYS.items()
        if overrides and overrides.get(key) is not None
    }
    card = match_card(name) if device != "cpu" else None
    if card is None:
        if "memory_bandwidth_gbps" in given and "bf16_tflops" in given:
            return CardFacts(
                key=name or device,
                memory_bandwidth_gbps=given["memory_bandwidth_gbps"],
                bf16_tflops=given["bf16_tflops"],
                fp8_tflops=given.get("fp8_tflops"),
                nvlink_gbps=given.get("nvlink_gbps"),
                pcie_gbps=given.get("pcie_gbps", PCIE4),
                compute_capability=(8, 9) if given.get("fp8_tflops") else (0, 0),
                note="from the profile's hw values",
                overridden=tuple(sorted(given)),
            )
        what = "a CPU" if device == "cpu" else f"the card {name!r}" if name else "an unnamed card"
        return NoCardFacts(
            name,
            f"no card facts for {what}: set hw.memory_bandwidth_gbps and hw.peak_bf16_tflops to predict performance",
        )
    if given:
        card = replace(card, **given, overridden=tuple(sorted(given)))
    return card
