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


def _record(cid, seqs, cap, state="measured", per_gpu=1000.0, load=60, failing=64, quant="fp8"):
    rec = {
        "id": cid,
        "label": cid,
        "values": {"serve.quantization": quant, "serve.max_num_seqs": seqs},
        "max_running": cap,
        "state": state,
    }
    if state == "measured":
        rec["measured"] = {"tokens_per_s_per_gpu": per_gpu, "load": load}
        rec["search"] = {"lowest_failing": failing, "capped_at": None}
    return rec


def test_a_higher_cap_is_pruned_where_its_twin_missed_the_slo_running_every_client():
    # fp8/64 missed at c=64 with all 64 running (H200, 2026-12-02): fp8/256 would run c=64 the same way
    measured = _record("a", 64, 64, failing=64)
    why = rank.twin_prune_reason(_record("b", 256, 256, state="pending"), [measured])
    assert why.startswith("pruned: as measured a (1000.0 tok/s/GPU at c=60)") and "c=64" in why


def test_a_higher_cap_is_launched_when_its_twin_was_held_by_its_own_cap():
    capped = _record("a", 64, 64, failing=None)  # met the SLO at its cap: more running might do better
    assert rank.twin_prune_reason(_record("b", 256, 256, state="pending"), [capped]) is None
    beyond = _record("a", 64, 64, failing=80)  # a failing load past the cap was queueing, not running
    assert rank.twin_prune_reason(_record("b", 256, 256, state="pending"), [beyond]) is None


def test_a_lower_cap_only_queues_what_its_twin_ran():
    big = _record("a", 256, 256, failing=None, load=200)
    why = rank.twin_prune_reason(_record("b", 64, 64, state="pending"), [big])
    assert why and "up to 64 running sequences" in why


def test_no_twin_when_another_value_differs_or_nothing_was_measured():
    other_quant = _record("a", 64, 64, quant=None)
    assert rank.twin_prune_reason(_record("b", 256, 256, state="pending"), [other_quant]) is None
    pruned = _record("a", 64, 64, state="pruned")
    assert rank.twin_prune_reason(_record("b", 256, 256, state="pending"), [pruned]) is None
    no_cap_key = {"id": "b", "values": {"serve.quantization": "fp8"}, "max_running": 64, "state": "pending"}
    assert rank.twin_prune_reason(no_cap_key, [_record("a", 64, 64)]) is None


def test_the_winner_is_the_first_launched_within_the_tie_band():
    first = _record("first", 64, 64, per_gpu=9871.0)
    second = _record("second", 256, 256, per_gpu=9937.0)  # 0.7 % more: the same result
    assert rank.winner([first, second]) == ("first", ["second"])
    clear = _record("second", 256, 256, per_gpu=9871.0 * 1.05, quant=None)
    assert rank.winner([first, clear]) == ("second", [])
    assert rank.winner([_record("p", 64, 64, state="pruned")]) == (None, [])


def test_twins_below_both_caps_are_one_server_whatever_their_gap():
    # one H100, 2026-12-06: fp8 llama3-8b, max_num_seqs 64 (launched first) best 5,408.7 at c=52,
    # max_num_seqs 256 best 5,633.8 at c=56 — 4.2 % apart, both below 64: the same server
    first = _record("first", 64, 64, per_gpu=5408.7, load=52, failing=56)
    second = _record("second", 256, 256, per_gpu=5633.8, load=56, failing=60)
    assert rank.same_server(first, second) == 64
    assert rank.winner([first, second]) == ("first", ["second"])
    [why] = rank.tie_reasons([first, second], "first").values()
    assert why.startswith("the same server as `first` up to c=64")
    # a best above the lower cap ran more sequences than that twin can: not the same server
    above = _record("second", 256, 256, per_gpu=5633.8, load=80, failing=96)
    assert rank.same_server(first, above) is None and rank.winner([first, above]) == ("second", [])
    # another value differs: a clear win stays a win
    bf16 = _record("second", 256, 256, per_gpu=5408.7 * 1.05, load=52, quant=None)
    assert rank.same_server(first, bf16) is None and rank.winner([first, bf16]) == ("second", [])
    assert rank.tie_reasons([first, bf16], "second") == {}
    # searched by request rate: a best of 52 requests/s says nothing of running sequences
    by_rate = [{**r, "search": {"load": "rate", "lowest_failing": None}} for r in (first, second)]
    assert rank.same_server(*by_rate) is None and rank.winner(by_rate) == ("second", [])


def test_a_candidate_within_the_band_of_the_highest_twin_is_tied_with_it():
    top = _record("top", 256, 256, per_gpu=6000.0, load=56)
    twin = _record("twin", 64, 64, per_gpu=5000.0, load=48)
    close = _record("close", 64, 64, per_gpu=5950.0, load=56, quant="int8")
    assert rank.winner([twin, close, top]) == ("twin", ["close", "top"])
    reasons = rank.tie_reasons([twin, close, top], "twin")
    assert reasons["top"].startswith("the same server as `twin`") and reasons["close"].startswith("within 2% of `top`")
