"""Ranking and pruning: predictions of recorded plan manifests (llama3-8b on the H100 profile), and
synthetic forecasts for the pruning rule."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from runner.tune import rank

FIXTURES = Path(__file__).parent / "fixtures"
SLO = rank.Slo(ttft_p99_ms=500, tpot_p99_ms=15)
WORKLOAD = (512, 128)


def manifest(tp: int) -> dict:
    return json.loads((FIXTURES / f"plan-llama3-8b-h100-tp{tp}.json").read_text())


def test_a_planned_gpu_candidate_is_predicted_up_to_its_cap():
    fc = rank.predict_manifest(manifest(1), WORKLOAD, SLO)
    assert fc.predicted and fc.reason is None
    assert "not calibrated" not in fc.calibration and "stated defaults" in fc.calibration
    # vLLM's default max_num_seqs on an 80 GB card (1024) and the KV cache (464,448 tokens / 640) cap it
    assert fc.max_running == min(1024, 464448 // 640)
    assert [p["concurrency"] for p in fc.points][-1] == fc.max_running
    assert fc.best_concurrency is not None and fc.best_tpot_p99_ms <= 15 and fc.best_ttft_p99_ms <= 500
    # the best is the most tokens/s per GPU among the points that meet the SLO
    meeting = [p for p in fc.points if p["ttft_p99_ms"] <= 500 and p["tpot_p99_ms"] <= 15]
    assert fc.best_tokens_per_s_per_gpu == pytest.approx(max(p["output_tokens_per_s_per_gpu"] for p in meeting), 1e-3)


def test_a_tighter_slo_lowers_the_predicted_best():
    loose = rank.predict_manifest(manifest(1), WORKLOAD, SLO)
    tight = rank.predict_manifest(manifest(1), WORKLOAD, rank.Slo(500, 8))
    assert tight.best_concurrency < loose.best_concurrency
    assert tight.best_tokens_per_s_per_gpu < loose.best_tokens_per_s_per_gpu
    never = rank.predict_manifest(manifest(1), WORKLOAD, rank.Slo(1, 1))
    assert never.predicted and never.best_tokens_per_s_per_gpu == 0.0 and never.best_concurrency is None


def test_max_num_seqs_caps_the_predicted_concurrency():
    capped = copy.deepcopy(manifest(1))
    capped["config"]["serve"]["max_num_seqs"] = 16
    fc = rank.predict_manifest(capped, WORKLOAD, SLO)
    assert fc.max_running == 16 and max(p["concurrency"] for p in fc.points) == 16


def test_a_cpu_plan_has_no_prediction_and_says_why():
    cpu = copy.deepcopy(manifest(1))
    cpu["plan"]["device"] = "cpu"
    fc = rank.predict_manifest(cpu, WORKLOAD, SLO)
    assert not fc.predicted and "no card facts for a CPU" in fc.reason


def test_launch_order_is_predicted_best_first_and_unpredicted_last_in_space_order():
    forecasts = {
        "a": rank.Forecast(True, None, 1000.0, 32),
        "b": rank.Forecast(True, None, 3000.0, 64),
        "c": rank.Forecast(False, "no card facts", None, None),
        "d": rank.Forecast(True, None, 0.0, None),
        "e": rank.Forecast(False, "no card facts", None, None),
    }
    assert rank.order(["e", "a", "b", "c", "d"], forecasts) == ["b", "a", "d", "e", "c"]


def test_tp1_ranks_above_tp4_per_gpu():
    forecasts = {tp: rank.predict_manifest(manifest(tp), WORKLOAD, SLO) for tp in (1, 4)}
    assert rank.order(["tp4", "tp1"], {"tp1": forecasts[1], "tp4": forecasts[4]}) == ["tp1", "tp4"]


def test_pruned_only_when_even_the_widened_prediction_cannot_win():
    err = 0.25
    assert rank.prune_reason(rank.Forecast(True, None, 800.0, 8), 1000.0, err) is None  # 800 > 750
    why = rank.prune_reason(rank.Forecast(True, None, 700.0, 8), 1000.0, err)
    assert why == "pruned: predicted 700.0 tok/s/GPU ≤ measured best 1000.0 × (1 − 0.25) = 750.0"
    assert "no concurrency" in rank.prune_reason(rank.Forecast(True, None, 0.0, None), 1000.0, err)
    # nothing measured yet, or nothing predicted (the CPU): never pruned
    assert rank.prune_reason(rank.Forecast(True, None, 1.0, 1), None, err) is None
    assert rank.prune_reason(rank.Forecast(False, "no card facts", None, None), 1000.0, err) is None


def test_error_margin_from_the_calibration_or_the_stated_default():
    card = rank.card_of(manifest(1))
    assert rank.error_margin(None, card) == (rank.UNCALIBRATED_ERROR, "uncalibrated: stated 25%")
    data = {"schema": 1, "cards": {card.key: {"constants": {"decode_efficiency": 0.9}, "points": [{}] * 2}}}
    data["cards"][card.key]["error"] = {"output_tokens_per_s_mape_pct": 2.5}
    err, source = rank.error_margin(data, card)
    assert err == rank.ERROR_FLOOR and "2.5 %" in source  # the in-sample error is floored
    data["cards"][card.key]["error"] = {"output_tokens_per_s_mape_pct": 14.0}
    assert rank.error_margin(data, card)[0] == pytest.approx(0.14)


def test_a_calibration_changes_the_forecast():
    card = rank.card_of(manifest(1))
    slow = {"schema": 1, "cards": {card.key: {"constants": {"decode_efficiency": 0.3}, "points": [{}]}}}
    default = rank.predict_manifest(manifest(1), WORKLOAD, SLO)
    calibrated = rank.predict_manifest(manifest(1), WORKLOAD, SLO, slow)
    assert calibrated.calibration.startswith("calibrated on 1 point")
    assert calibrated.best_tokens_per_s_per_gpu < default.best_tokens_per_s_per_gpu


def test_predicted_point_at_a_measured_concurrency():
    point = rank.predicted_point(manifest(1), WORKLOAD, 24)
    assert point["concurrency"] == 24 and point["output_tokens_per_s_per_gpu"] > 0
    cpu = copy.deepcopy(manifest(1))
    cpu["plan"]["device"] = "cpu"
    assert rank.predicted_point(cpu, WORKLOAD, 24) is None
