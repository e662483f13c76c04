"""The highest load that meets the SLO, found with as few benchmark runs as a search allows.

Pure: the caller passes ``measure(load) -> figures`` (``runner.measure.bench.run_bench``'s dict: ``p99_ttft_ms``,
``p99_tpot_ms``, ``p99_e2el_ms``, ``output_throughput``, ``failed``), which is where the GPU time goes. From
a start (the predicted best, or 1) the load doubles while the SLO holds, halves while it does not, then a
binary search between the last passing and the first failing load stops when they are within
:data:`TOLERANCE` of each other (exact below 20 clients): each probe is a full benchmark run, and the last
10 % of load is not worth two or three more of them.

Concurrency is an integer bounded by what the server runs at once (``max_num_seqs`` and the KV cache):
beyond that, clients only queue, tokens/s stays where it is and TTFT grows. A request rate is a float,
bounded by :data:`MAX_STEPS` doublings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

TOLERANCE = 0.1
MAX_STEPS = 12  # doublings or halvings of a request rate before the search gives up


@dataclass(frozen=True)
class Probe:
    load: float
    figures: Mapping[str, Any]
    meets: bool
    why: str  # what missed the SLO, or "meets the SLO"

    def to_dict(self) -> Dict[str, Any]:
        return {"load": self.load, "meets": self.meets, "why": self.why, "figures": dict(self.figures)}


@dataclass
class Search:
    load: str  # "concurrency" | "rate"
    probes: List[Probe] = field(default_factory=list)
    lowest_failing: Optional[float] = None
    capped_at: Optional[float] = None  # the upper bound passed, when the search reached it

    @property
    def passing(self) -> List[Probe]:
        return [p for p in self.probes if p.meets]

    @property
    def best(self) -> Optional[Probe]:
        """The passing probe with the most output tokens/s (the higher load on a tie)."""
        passing = self.passing
        if not passing:
            return None
        return max(passing, key=lambda p: (p.figures.get("output_throughput") or 0.0, p.load))

    def to_dict(self) -> Dict[str, Any]:
        best = self.best
        return {
            "load": self.load,
            "best_load": best.load if best else None,
            "lowest_failing": self.lowest_failing,
            "capped_at": self.capped_at,
            "probes": [p.to_dict() for p in self.probes],
        }


def meets(figures: Mapping[str, Any], slo: Any) -> Tuple[bool, str]:
    """Does one benchmark run meet the SLO (``slo``: ttft_p99_ms, tpot_p99_ms, e2e_p99_ms or None)?"""
    if figures.get("error"):
        return False, f"benchmark failed: {figures['error']}"
    if figures.get("failed"):
        return False, f"{figures['failed']} request(s) failed"
    checks = [("p99_ttft_ms", "p99 TTFT", slo.ttft_p99_ms), ("p99_tpot_ms", "p99 TPOT", slo.tpot_p99_ms)]
    if getattr(slo, "e2e_p99_ms", None) is not None:
        checks.append(("p99_e2el_ms", "p99 E2E", slo.e2e_p99_ms))
    missed = []
    for key, name, limit in checks:
        value = figures.get(key)
        if value is None:
            missed.append(f"{name} not reported")
        elif value > limit:
            missed.append(f"{name} {value:.1f} ms > {limit:g} ms")
    return (False, "; ".join(missed)) if missed else (True, "meets the SLO")


def _close(lo: float, hi: float, integer: bool) -> bool:
    if integer:
        return hi - lo <= max(1, math.floor(lo * TOLERANCE))
    return hi <= lo * (1 + TOLERANCE)


def find_max_load(
    measure: Callable[[float], Mapping[str, Any]],
    slo: Any,
    *,
    load: str = "concurrency",
    start: Optional[float] = None,
    upper: Optional[float] = None,
    on_probe: Optional[Callable[[Probe], None]] = None,
) -> Search:
    """Search the load ``measure`` is called with; every call becomes a Probe, in the order made."""
    integer = load == "concurrency"
    if integer and upper is not None:
        upper = max(1, int(upper))
    floor_ = 1 if integer else None
    x: float = start if start else 1
    if integer:
        x = max(1, int(x))
        if upper is not None:
            x = min(x, upper)
    search = Search(load)
    seen: Dict[float, Probe] = {}

    def probe(value: float) -> bool:
        if value in seen:
            return seen[value].meets
        figures = dict(measure(value))
        ok, why = meets(figures, slo)
        p = Probe(value, figures, ok, why)
        seen[value] = p
        search.probes.append(p)
        if on_probe:
            on_probe(p)
        return ok

    lo: Optional[float] = None
    hi: Optional[float] = None
    if probe(x):
        lo = x
        for _ in range(MAX_STEPS if not integer else 64):
            if upper is not None and lo >= upper:
                search.capped_at = upper
                break
            up = 2 * lo if upper is None else min(2 * lo, upper)
            if probe(up):
                lo = up
            else:
                hi = up
                break
    else:
        hi = x
        for _ in range(MAX_STEPS if not integer else 64):
            if floor_ is not None and hi <= floor_:
                break
            down = max(floor_, int(hi) // 2) if integer else hi / 2
            if probe(down):
                lo = down
                break
            hi = down
    while lo is not None and hi is not None and not _close(lo, hi, integer):
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    search.lowest_failing = hi
    return search
