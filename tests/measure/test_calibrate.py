"""runner/measure/calibrate.py on the recorded H100 x4 bench manifests (docs/validation/2026-11-27-h100x4-sweep).

Calibrated on llama3-8b TP=1 alone, the model predicts the other TP sizes and llama70b; the bounds below are
the hold-out errors benchmarks/perf_holdout.py measured (output tok/s MAPE 5.1 %, worst point +23.4 %, TPOT
MAPE 2.2 %) plus a margin, so that a change that breaks the model's physics fails here."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.measure import calibrate
from runner.plan.cards import card_facts
from runner.plan.perf import Calibration, Workload, predict

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = ROOT / "docs" / "validation" / "2026-11-27-h100x4-sweep"
FIRST_SWEEP = SWEEPS / "llama3-8b"


@pytest.fixture(scope="module")
def points():
    return calibrate.load_points([str(SWEEPS)])


@pytest.fixture(scope="module")
def split(points):
    def first_tp1(p):
        return p.model == "llama3-8b" and p.layout.tensor_parallel_size == 1 and str(FIRST_SWEEP) in p.source

    fitted = [p for p in points if first_tp1(p)]
    held = [p for p in points if not (p.model == "llama3-8b" and p.layout.tensor_parallel_size == 1)]
    return fitted, held


@pytest.fixture(scope="module")
def fitted_calibration(split):
    return calibrate.fit(split[0])


def test_every_recorded_bench_point_is_read(points):
    # 8 verified bench manifests (llama3-8b TP 1/2/4 twice, llama70b TP 2/4) x concurrency 1 and 32;
    # the rejected llama70b TP=1 and the plan-only manifests give none
    assert len(points) == 16
    assert {(p.model, p.layout.tensor_parallel_size) for p in points} == {
        ("llama3-8b", 1),
        ("llama3-8b", 2),
        ("llama3-8b", 4),
        ("llama70b", 2),
        ("llama70b", 4),
    }
    tp1 = next(p for p in points if p.model == "llama3-8b" and p.layout.tensor_parallel_size == 1)
    assert tp1.card_name == "NVIDIA H100 80GB HBM3" and tp1.vllm == "0.26.0"
    assert tp1.layout.kv_cache_tokens == 463312  # what vLLM reported, not the prediction
    assert tp1.layout.max_num_seqs == 1024 and tp1.layout.max_num_batched_tokens == 8192
    assert (tp1.input_len, tp1.output_len) == (512, 128)


def test_manifests_without_measurements_give_no_points():
    manifest = json.loads(next(FIRST_SWEEP.glob("0_*/manifest.json")).read_text())
    assert len(calibrate.points_from_manifest(manifest)) == 2
    failed = {**copy.deepcopy(manifest), "status": "failed"}
    assert calibrate.points_from_manifest(failed) == []
    no_bench = copy.deepcopy(manifest)
    del no_bench["bench"]
    assert calibrate.points_from_manifest(no_bench) == []
    partial = copy.deepcopy(manifest)
    partial["bench"]["results"][1]["failed"] = 3
    assert [p.concurrency for p in calibrate.points_from_manifest(partial)] == [1]


def test_fitted_constants_are_physically_sane(split, fitted_calibration):
    cal = fitted_calibration
    assert len(split[0]) == 2
    assert 0.3 <= cal.prefill_efficiency <= 0.9
    assert 0.6 <= cal.decode_efficiency <= 1.0
    assert 5 <= cal.layer_overhead_us <= 100
    assert 0 <= cal.sequence_overhead_us <= 50
    assert 1 <= cal.request_overhead_ms <= 50
    rows = calibrate.evaluate(split[0], cal)
    assert calibrate.mape(rows, "output_tokens_per_s") < 3
    assert calibrate.mape(rows, "tpot_ms") < 3


def test_held_out_tp_sizes_and_model_are_predicted_within_the_measured_error(split, fitted_calibration):
    rows = calibrate.evaluate(split[1], fitted_calibration)
    assert len(rows) == 12
    assert calibrate.mape(rows, "output_tokens_per_s") <= 8.0  # measured 5.1 %
    assert calibrate.mape(rows, "tpot_ms") <= 4.0  # measured 2.2 %
    assert calibrate.mape(rows, "ttft_ms") <= 25.0  # measured 16.6 %
    for row in rows:
        worst = 30.0 if (row["model"], row["tp"], row["concurrency"]) == ("llama3-8b", 4, 32) else 12.0
        assert abs(row["output_tokens_per_s_error_pct"]) <= worst, row


def test_the_allreduce_term_carries_weight(split, fitted_calibration):
    """The all-reduce term carries weight: without it TP=4 is predicted much faster than measured."""
    tp4 = [p for p in split[1] if p.model == "llama3-8b" and p.layout.tensor_parallel_size == 4]
    with_comm = calibrate.mape(calibrate.evaluate(tp4, fitted_calibration), "tpot_ms")
    no_comm = calibrate.mape(
        calibrate.evaluate(tp4, fitted_calibration.with_constants(allreduce_latency_us=0.0)), "tpot_ms"
    )
    assert no_comm > with_comm + 5


def test_cli_writes_a_calibration_the_predictor_reads(tmp_path):
    out = tmp_path / "calibration.json"
    run = subprocess.run(
        [sys.executable, "-m", "runner.measure.calibrate", str(next(FIRST_SWEEP.glob("0_*"))), "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "H100 80GB HBM3: 2 point(s), vLLM 0.26.0" in run.stdout
    data = calibrate.read_calibration(str(out))
    entry = data["cards"]["H100 80GB HBM3"]
    assert entry["vllm"] == "0.26.0" and len(entry["points"]) == 2 and entry["date"]
    assert entry["nvml_names"] == ["NVIDIA H100 80GB HBM3"]
    assert set(Calibration.FITTED) <= set(entry["constants"])
    card = card_facts("NVIDIA H100 80GB HBM3")
    cal = Calibration.from_file_data(data, card)
    assert cal.calibrated and cal.vllm == "0.26.0" and "2 point(s)" in cal.source
    point = calibrate.load_points([str(next(FIRST_SWEEP.glob("0_*")))])[1]
    result = predict(point.dims, point.layout, card, Workload(512, 128, [32]), cal)
    assert result.calibrated and not any("not calibrated" in n for n in result.notes)
    assert result.points[0].output_tokens_per_s == pytest.approx(point.measured["output_tokens_per_s"], rel=0.05)


def test_cli_without_bench_manifests_exits_2(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "runner.measure.calibrate", str(tmp_path), "-o", str(tmp_path / "c.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "no verified bench manifest" in run.stderr
    assert not (tmp_path / "c.json").exists()


def test_missing_file_is_no_calibration_and_a_foreign_file_is_refused(tmp_path):
    assert calibrate.read_calibration(str(tmp_path / "absent.json")) is None
    assert calibrate.read_calibration(None) is None
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 99}')
    with pytest.raises(ValueError, match="schema"):
        calibrate.read_calibration(str(bad))


def test_points_of_a_card_without_facts_are_skipped_with_the_reason():
    manifest = json.loads(next(FIRST_SWEEP.glob("0_*/manifest.json")).read_text())
    for gpu in manifest["hardware"]["gpus"]:
        gpu["name"] = "NVIDIA Future GPU"
    data = calibrate.calibrate(calibrate.points_from_manifest(manifest, "future.json"), date="2026-12-02")
    assert data["cards"] == {}
    assert data["skipped"] and all(
        "no card facts" in line and "hw.memory_bandwidth_gbps" in line for line in data["skipped"]
    )
    # the profile's figures make it a card that can be calibrated, under its own name
    manifest["config"]["hw"].update(memory_bandwidth_gbps=3350, peak_bf16_tflops=989.5)
    data = calibrate.calibrate(calibrate.points_from_manifest(manifest, "future.json"), date="2026-12-02")
    assert list(data["cards"]) == ["NVIDIA Future GPU"] and data["cards"]["NVIDIA Future GPU"]["date"] == "2026-12-02"


def test_a_tune_candidates_probes_are_bench_points(tmp_path):
    """mode=tune's candidates calibrate like bench manifests: every probe (SLO misses too) of the
    H200 tune's fp8/64 candidate, on its serve run's plan; a probe whose benchmark failed is left out."""
    root = Path(__file__).resolve().parents[2]
    tune = json.loads((root / "docs/validation/2026-12-02-h200-tune/tune.json").read_text())
    record = next(c for c in tune["candidates"] if c["state"] == "measured")
    record["search"]["probes"].append({"load": 99, "meets": False, "figures": {"error": "gave no result"}})
    serve = json.loads((root / "tests/tune/fixtures/plan-llama3-8b-h100-tp1.json").read_text())
    serve.update(status="verified", config={**serve["config"], "bench": {"input_len": 512, "output_len": 128}})
    folder = tmp_path / "candidates" / record["id"]
    (folder / "serve").mkdir(parents=True)
    (folder / "candidate.json").write_text(json.dumps(record))
    (folder / "serve" / "manifest.json").write_text(json.dumps(serve))
    points = calibrate.load_points([str(tmp_path)])
    probes = [p for p in record["search"]["probes"] if "error" not in p["figures"]]
    assert [p.concurrency for p in points] == [p["load"] for p in probes] == [64, 32, 48, 56, 60]
    assert points[-1].measured["output_tokens_per_s"] == probes[-1]["figures"]["output_throughput"]
    assert {(p.input_len, p.output_len) for p in points} == {(512, 128)}
