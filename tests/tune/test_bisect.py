"""The load search, against recorded figures: which loads it probes and what it settles on."""

from __future__ import annotations

from typing import Dict, List

from runner.tune import bisect
from runner.tune.rank import Slo

SLO = Slo(ttft_p99_ms=500, tpot_p99_ms=15)


class Recorded:
    """A server whose p99 TPOT grows with the load: the SLO holds up to ``limit``."""

    def __init__(self, limit: float, tpot_at_limit: float = 15.0):
        self.limit, self.tpot_at_limit = limit, tpot_at_limit
        self.calls: List[float] = []

    def __call__(self, load: float) -> Dict[str, float]:
        self.calls.append(load)
        tpot = self.tpot_at_limit * (load / self.limit) ** 0.5
        return {
            "p99_ttft_ms": 100.0,
            "p99_tpot_ms": tpot,
            "p99_e2el_ms": 1000.0,
            "output_throughput": 100.0 * load,
            "median_tpot_ms": tpot * 0.8,
            "failed": 0,
        }


def test_doubles_then_bisects_to_the_highest_passing_concurrency():
    server = Recorded(limit=11)
    search = bisect.find_max_load(server, SLO, start=1, upper=256)
    assert server.calls[:5] == [1, 2, 4, 8, 16]  # doubling until 16 misses
    assert search.best.load == 11
    assert search.lowest_failing == 12
    assert len(server.calls) == len(set(server.calls))  # no load measured twice


def test_starts_at_the_prediction_and_halves_when_it_misses():
    server = Recorded(limit=20)
    search = bisect.find_max_load(server, SLO, start=64, upper=256)
    assert server.calls[:3] == [64, 32, 16]
    assert search.best.load >= 18 and search.lowest_failing - search.best.load <= 2  # 10 % resolution


def test_stops_at_the_cap_the_server_runs():
    server = Recorded(limit=10_000)
    search = bisect.find_max_load(server, SLO, start=4, upper=24)
    assert server.calls == [4, 8, 16, 24]
    assert search.best.load == 24 and search.capped_at == 24


def test_nothing_meets_the_slo():
    server = Recorded(limit=0.5)
    search = bisect.find_max_load(server, SLO, start=4, upper=64)
    assert server.calls == [4, 2, 1]
    assert search.best is None and search.lowest_failing == 1


def test_failed_requests_or_a_failed_bench_never_meet():
    ok, why = bisect.meets({"p99_ttft_ms": 1, "p99_tpot_ms": 1, "failed": 3}, SLO)
    assert not ok and "3 request(s) failed" in why
    ok, why = bisect.meets({"error": "vllm bench serve exited with code 1"}, SLO)
    assert not ok and "exited with code 1" in why
    ok, why = bisect.meets({"p99_ttft_ms": 600.0, "p99_tpot_ms": 16.0, "failed": 0}, SLO)
    assert not ok and "p99 TTFT 600.0 ms > 500 ms" in why and "p99 TPOT 16.0 ms > 15 ms" in why


def test_the_end_to_end_target_counts_when_set():
    figures = {"p99_ttft_ms": 100.0, "p99_tpot_ms": 10.0, "p99_e2el_ms": 2500.0, "failed": 0}
    assert bisect.meets(figures, SLO)[0]
    ok, why = bisect.meets(figures, Slo(500, 15, e2e_p99_ms=2000))
    assert not ok and "p99 E2E" in why


def test_request_rate_bisects_on_a_float():
    server = Recorded(limit=6.3)
    search = bisect.find_max_load(server, SLO, load="rate", start=1.0)
    assert server.calls[:4] == [1.0, 2.0, 4.0, 8.0]
    assert 6.3 / 1.1 <= search.best.load <= 6.3 < search.lowest_failing <= search.best.load * 1.1


def test_best_is_the_passing_probe_with_the_most_tokens():
    figures = {2: 300.0, 4: 380.0, 8: 350.0}
    search = bisect.find_max_load(
        lambda c: {"p99_ttft_ms": 1, "p99_tpot_ms": 1, "failed": 0, "output_throughput": figures.get(c, 1.0)},
        SLO,
        start=2,
        upper=8,
    )
    assert [p.load for p in search.probes] == [2, 4, 8]
    assert search.best.load == 4
