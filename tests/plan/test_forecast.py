"""Predicted performance from a plan's records (runner/plan/forecast.py): the chosen plan per bench
concurrency, every fitting TP size of the fit table, the CPU's 'not predicted', and a benchmark's
figures next to the prediction with the error and its MAPE. Plus mode=plan printing and recording it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.plan import forecast
from tests.cli.test_cli import manifest, run_runner

FIXTURES = Path(__file__).resolve().parents[1] / "tune" / "fixtures"


def h100_tp1() -> dict:
    return json.loads((FIXTURES / "plan-llama3-8b-h100-tp1.json").read_text())


def test_the_chosen_plan_is_predicted_at_each_concurrency():
    section = forecast.performance_section(h100_tp1(), (512, 128), [1, 32])
    assert section["predicted"] and section["card"] and section["calibrated"] is False
    assert [p["concurrency"] for p in section["points"]] == [1, 32]
    one, many = section["points"]
    # more clients: more tokens per second in all, each of them slower
    assert many["output_tokens_per_s"] > one["output_tokens_per_s"] and many["tpot_ms"] > one["tpot_ms"]
    assert section["workload"] == {"input_len": 512, "output_len": 128}


def test_every_fitting_tp_size_of_the_fit_table_at_its_most_running_sequences():
    m = h100_tp1()
    row = {k: m["fit"][k] for k in ("weights_gib_per_gpu", "kv_cache_tokens")}
    m["fit"]["table"] = [
        {"tensor_parallel_size": 1, "fits": True, **row},
        {"tensor_parallel_size": 3, "fits": False, **row},  # refused sizes are not predicted
        {
            "tensor_parallel_size": 2,
            "fits": True,
            "weights_gib_per_gpu": row["weights_gib_per_gpu"] / 2,
            "kv_cache_tokens": row["kv_cache_tokens"] * 2,
        },
    ]
    table = forecast.performance_section(m, (512, 128), [1])["table"]
    assert [r["tensor_parallel_size"] for r in table] == [1, 2]
    served = forecast.serve_settings(m)["max_num_seqs"]
    assert all(r["running"] == min(served, r["concurrency"]) for r in table)
    assert table[1]["output_tokens_per_s"] > table[0]["output_tokens_per_s"]  # two GPUs serve more in all


def test_a_cpu_plan_is_not_predicted_and_says_why():
    m = h100_tp1()
    m["plan"]["device"] = "cpu"
    section = forecast.performance_section(m, (512, 128), [1])
    assert section["predicted"] is False and "no card facts" in section["reason"]
    assert section["points"] == [] and section["table"] == []


@pytest.mark.parametrize("factor, error", [(1.0, 0.0), (0.5, 100.0)])
def test_measured_figures_next_to_the_prediction(factor, error):
    section = forecast.performance_section(h100_tp1(), (512, 128), [1, 32])
    results = [
        {
            "concurrency": p["concurrency"],
            "output_throughput": p["output_tokens_per_s"] * factor,
            "median_ttft_ms": p["ttft_ms"] * factor,
            "median_tpot_ms": p["tpot_ms"] * factor,
        }
        for p in section["points"]
    ] + [{"concurrency": 7, "output_throughput": 1.0}]  # no prediction at 7: left out
    compared = forecast.against_measured(section, results)
    assert [r["concurrency"] for r in compared["rows"]] == [1, 32]
    for name in ("output_tokens_per_s", "ttft_ms", "tpot_ms"):
        assert compared[f"{name}_mape_pct"] == pytest.approx(error, abs=0.02)
        assert all(r[f"error_{name}_pct"] == pytest.approx(error, abs=0.02) for r in compared["rows"])


def test_mode_plan_prints_and_records_the_performance_of_each_fitting_tp(tmp_path):
    out = run_runner(tmp_path, "mode=plan", "hw=nvlink-4gpu", "model=llama70b", "model.load_format=dummy")
    assert out.returncode == 0, out.stderr
    perf = manifest(tmp_path)["performance"]
    assert perf["predicted"] and [r["tensor_parallel_size"] for r in perf["table"]] == [2, 4]
    assert "performance at 1024 in / 128 out, H100 80GB HBM3" in out.stdout
    cpu = tmp_path / "cpu"
    out = run_runner(cpu, "mode=plan", "hw=cpu-2", "model=tiny-llama")
    assert out.returncode == 0, out.stderr
    assert manifest(cpu)["performance"]["predicted"] is False
    assert "not predicted (no card facts" in out.stdout


def test_a_gpu_plan_without_a_model_shape_says_so():
    m = h100_tp1()
    m["model"] = {}  # e.g. a hub model whose config.json could not be read
    section = forecast.performance_section(m, (512, 128), [1])
    assert section["predicted"] is False and section["reason"] == "the plan has no memory fit or model shape"
    assert section["card"] and section["table"] == []


def test_a_refused_plan_still_shows_what_the_fitting_tp_sizes_would_do(tmp_path):
    out = run_runner(
        tmp_path,
        "mode=plan",
        "hw=nvlink-4gpu",
        "model=llama70b",
        "model.load_format=dummy",
        "serve.tensor_parallel_size=1",
    )
    assert out.returncode == 2
    perf = manifest(tmp_path)["performance"]
    assert perf["predicted"] is False and perf["points"] == []  # TP=1 does not fit: nothing to predict for it
    assert [r["tensor_parallel_size"] for r in perf["table"]] == [2, 4]


def test_a_calibration_for_the_card_is_used_and_said():
    m = h100_tp1()
    key = forecast.card_of(m).key
    data = {"cards": {key: {"constants": {"decode_efficiency": 0.4}, "points": [{}], "date": "2026-12-04"}}}
    slow = forecast.performance_section(m, (512, 128), [32], data)
    default = forecast.performance_section(m, (512, 128), [32])
    assert slow["calibrated"] and slow["calibration"].startswith("calibrated on 1 point(s)")
    assert slow["points"][0]["tpot_ms"] > default["points"][0]["tpot_ms"]  # half the bandwidth: slower decode


def test_a_missing_calibration_file_is_a_note_and_the_stated_defaults(tmp_path):
    out = run_runner(
        tmp_path,
        "mode=plan",
        "hw=nvlink-4gpu",
        "model=llama3-8b",
        "model.load_format=dummy",
        f"tune.calibration={tmp_path / 'nope.json'}",
    )
    assert out.returncode == 0, out.stderr
    m = manifest(tmp_path)
    assert m["performance"]["calibrated"] is False
    assert any(n.startswith("tune.calibration=") and "stated defaults" in n for n in m["notes"])


def test_a_pp_plan_is_not_predicted_and_plans_clean(tmp_path):
    # PP > 1 is not modelled: no figures, the reason, and the plan itself unharmed (it crashed once)
    out = run_runner(
        tmp_path,
        "mode=plan",
        "hw=multinode-2x8",
        "hw.node_ips=[10.0.0.1,10.0.0.2]",
        "model=llama3-8b",
        "model.load_format=dummy",
    )
    assert out.returncode == 0, out.stderr
    perf = manifest(tmp_path)["performance"]
    assert perf["predicted"] is False and "PP > 1" in perf["reason"] and perf["table"] == []
