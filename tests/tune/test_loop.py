"""The tune loop with its two side-effect seams (planning and launching a candidate) replaced by
recorded data: launch order, pruning, max_launches, resuming, and the files it writes."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from runner.tune import rank, report, run, space

FIXTURES = Path(__file__).parent / "fixtures"
TUNE = {"space": {}, "load": "concurrency"}


def context(run_dir: Path, calibration=None, max_launches=None, prune=True) -> run.Context:
    return run.Context(
        run_dir=run_dir,
        base=("hw=nvlink-4gpu", "model=llama3-8b", "model.load_format=dummy", "bench=h100-quick", "serve.port=8123"),
        config_flags=(),
        choices={"hw": "nvlink-4gpu", "model": "llama3-8b", "serve": "default", "bench": "h100-quick"},
        slo=rank.Slo(500, 15),
        workload={"input_len": 512, "output_len": 128, "num_prompts": 8, "prompts_per_concurrency": 4},
        load="concurrency",
        max_launches=max_launches,
        prune=prune,
        calibration_path=None,
        calibration=calibration,
        stop_grace_s=1.0,
        ready_timeout_s=1.0,
        api_key_env=None,
        started=time.time(),
    )


class Seams:
    """Plans from the recorded H100 manifests (TP from the candidate's values); launches return
    ``measured[tp]`` tok/s per GPU and are counted."""

    def __init__(self, monkeypatch, measured: Dict[int, float]):
        self.measured, self.launched, self.planned = measured, [], []
        monkeypatch.setattr(run, "plan_candidate", self.plan)
        monkeypatch.setattr(run, "launch_and_measure", self.launch)

    def plan(self, ctx, cid, overrides):
        self.planned.append(cid)
        tp = next(int(o.split("=")[1]) for o in overrides if o.startswith("serve.tensor_parallel_size="))
        target = ctx.run_dir / "candidates" / cid / "plan" / "manifest.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        if tp == 3:
            problem = {
                "text": "serve.tensor_parallel_size=3: num_attention_heads=32 is not divisible by it. Fix: 1, 2, 4"
            }
            target.write_text(json.dumps({"status": "rejected", "problems": [problem]}))
            return {"state": "refused", "reason": problem["text"], "problems": [problem]}
        shutil.copy(FIXTURES / f"plan-llama3-8b-h100-tp{tp}.json", target)
        return {"state": "planned", "tensor_parallel_size": tp, "pipeline_parallel_size": 1, "max_running": 64}

    def launch(self, ctx, cid, record, forecast):
        self.launched.append(cid)
        tp = record["values"]["serve.tensor_parallel_size"]
        per_gpu = self.measured[tp]
        probe = {
            "load": 32,
            "meets": True,
            "why": "meets the SLO",
            "figures": {"output_throughput": per_gpu * tp, "median_tpot_ms": 10.0, "concurrency": 32},
        }
        return {
            "state": "measured",
            "measured": {
                "load": 32,
                "concurrency": 32,
                "output_tokens_per_s": per_gpu * tp,
                "tokens_per_s_per_gpu": per_gpu,
                "tokens_per_s_per_user": 100.0,
                "p99_ttft_ms": 200.0,
                "p99_tpot_ms": 12.0,
            },
            "search": {"load": "concurrency", "probes": [probe]},
            "launch_s": 60.0,
            "bench_s": 30.0,
            "gpu_s": 90.0,
            "gpus": tp,
        }


def candidates(tps: List[int]):
    return space.expand({"serve.tensor_parallel_size": tps})


def records(run_dir: Path) -> Dict[str, dict]:
    result = json.loads((run_dir / "tune.json").read_text())
    return {c["values"]["serve.tensor_parallel_size"]: c for c in result["candidates"]}


def test_the_predicted_best_goes_first_and_the_rest_is_pruned(tmp_path, monkeypatch, capsys):
    # TP=1 is predicted best (2,856 tok/s/GPU against TP=4's 2,370) and measures 15 % above its prediction:
    # TP=4's prediction, widened by the uncalibrated 25 %, cannot reach it
    tp1 = json.loads((FIXTURES / "plan-llama3-8b-h100-tp1.json").read_text())
    predicted = rank.predict_manifest(tp1, (512, 128), rank.Slo(500, 15))
    seams = Seams(monkeypatch, {1: predicted.best_tokens_per_s_per_gpu * 1.15, 4: 10.0})
    code = run.tune_candidates(context(tmp_path), candidates([4, 3, 1]), TUNE)
    assert code == run.EXIT_OK
    assert seams.launched == ["serve.tensor_parallel_size-1"]
    found = records(tmp_path)
    assert found[1]["state"] == "measured" and found[3]["state"] == "refused" and found[4]["state"] == "pruned"
    assert found[4]["reason"].startswith("pruned: predicted ") and "× (1 − 0.25)" in found[4]["reason"]
    assert "not divisible" in found[3]["reason"]
    result = json.loads((tmp_path / "tune.json").read_text())
    assert result["winner"] == "serve.tensor_parallel_size-1" and result["gpu_s"] == 90.0
    assert result["order"][0] == "serve.tensor_parallel_size-1"
    md = (tmp_path / "tune.md").read_text()
    assert md.splitlines()[2].startswith("**Serve serve.tensor_parallel_size=1: ")
    assert "pruned: predicted" in md and "not divisible" in md
    assert (tmp_path / report.RECIPE_NAME).exists() and (tmp_path / "pareto.png").stat().st_size > 0
    assert "Serve serve.tensor_parallel_size=1" in capsys.readouterr().out


def test_the_order_follows_the_prediction_when_nothing_is_pruned(tmp_path, monkeypatch):
    seams = Seams(monkeypatch, {1: 10.0, 4: 20.0})  # far below every prediction: nothing can be pruned
    run.tune_candidates(context(tmp_path), candidates([4, 1]), TUNE)
    assert seams.launched == ["serve.tensor_parallel_size-1", "serve.tensor_parallel_size-4"]


def test_a_second_run_in_the_same_dir_launches_nothing(tmp_path, monkeypatch):
    seams = Seams(monkeypatch, {1: 10.0, 4: 20.0})  # measured far below the predictions: nothing pruned
    run.tune_candidates(context(tmp_path), candidates([1, 4]), TUNE)
    assert sorted(seams.launched) == ["serve.tensor_parallel_size-1", "serve.tensor_parallel_size-4"]
    again = Seams(monkeypatch, {1: 10.0, 4: 20.0})
    code = run.tune_candidates(context(tmp_path), candidates([1, 4]), TUNE)
    assert code == run.EXIT_OK and again.launched == [] and again.planned == []
    found = records(tmp_path)
    assert found[1]["resumed"] and found[4]["resumed"]
    result = json.loads((tmp_path / "tune.json").read_text())
    assert result["launches"] == 0 and result["resumed"] == 2 and result["winner"] == "serve.tensor_parallel_size-4"


def test_a_changed_base_configuration_is_not_resumed(tmp_path, monkeypatch):
    Seams(monkeypatch, {1: 10.0})
    run.tune_candidates(context(tmp_path), candidates([1]), TUNE)
    again = Seams(monkeypatch, {1: 10.0})
    ctx = run.Context(**{**context(tmp_path).__dict__, "base": (*context(tmp_path).base, "serve.max_num_seqs=64")})
    run.tune_candidates(ctx, candidates([1]), TUNE)
    assert again.launched == ["serve.tensor_parallel_size-1"]


def test_max_launches_stops_launching(tmp_path, monkeypatch):
    seams = Seams(monkeypatch, {1: 10.0, 4: 20.0})
    run.tune_candidates(context(tmp_path, max_launches=1), candidates([1, 4]), TUNE)
    assert len(seams.launched) == 1
    assert any(r["state"] == "not_launched" and "max_launches=1" in r["reason"] for r in records(tmp_path).values())


def test_the_recipe_carries_the_defaults_the_values_and_the_figures(tmp_path, monkeypatch):
    Seams(monkeypatch, {1: 10.0, 4: 20.0})
    run.tune_candidates(context(tmp_path), candidates([1, 4]), TUNE)
    text = (tmp_path / report.RECIPE_NAME).read_text()
    lines = text.splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1] == "#   python -m runner +recipe=tuned-llama3-8b-nvlink-4gpu"
    assert "measured 20.0 output tok/s per GPU at concurrency 32" in text
    assert "p99 TTFT ≤ 500 ms, p99 TPOT ≤ 15 ms" in text
    body = yaml.safe_load(text)
    assert body["defaults"] == [{"override /hw": "nvlink-4gpu"}, {"override /model": "llama3-8b"}]
    assert body["serve"] == {"tensor_parallel_size": 4}  # serve.port is the run's, not the recipe's
    assert body["model"] == {"load_format": "dummy"} and body["mode"] == "serve"
    assert "bench" not in body


def test_input_problems_name_every_bad_key():
    found = run.input_problems({"slo": {"ttft_p99_ms": -1}, "space": {}, "load": "qps", "max_launches": 0})
    keys = {p.key for p in found}
    assert keys == {"tune.slo.ttft_p99_ms", "tune.slo.tpot_p99_ms", "tune.space", "tune.load", "tune.max_launches"}
    ok = {"slo": {"ttft_p99_ms": 500, "tpot_p99_ms": 15}, "space": {"serve.max_num_seqs": [4]}, "load": "rate"}
    assert run.input_problems(ok) == []


def test_candidate_overrides_replace_the_base_key_and_config_flags_pass_through(tmp_path):
    ctx = run.Context(**{**context(tmp_path).__dict__, "base": ("hw=cpu-2", "serve.max_num_seqs=2", "+hw.env.X=1")})
    cand = space.expand({"serve.max_num_seqs": [8]})[0]
    assert run.candidate_overrides(ctx, cand) == ["hw=cpu-2", "+hw.env.X=1", "serve.max_num_seqs=8"]
    argv = ["--config-dir", "/team", "hw=cpu-2", "-cn=other", "mode=tune"]
    assert run._config_flags(argv) == ["--config-dir", "/team", "-cn=other"]


@pytest.mark.parametrize("load", ["concurrency", "rate"])
def test_answer_sentence(load):
    result = {
        "load": load,
        "slo_text": "p99 TTFT ≤ 500 ms, p99 TPOT ≤ 15 ms",
        "winner": "x",
        "candidates": [
            {
                "id": "x",
                "label": "serve.max_num_seqs=64",
                "measured": {
                    "load": 2.5 if load == "rate" else 48,
                    "concurrency": 48,
                    "tokens_per_s_per_gpu": 1234.5,
                    "p99_ttft_ms": 321.0,
                    "p99_tpot_ms": 12.345,
                },
            }
        ],
    }
    where = "2.5 requests/s" if load == "rate" else "concurrency 48"
    assert report.answer(result) == (
        f"Serve serve.max_num_seqs=64: 1,234.5 tok/s per GPU at {where}, p99 TTFT 321.0 ms, p99 TPOT 12.35 ms "
        "(SLO: p99 TTFT ≤ 500 ms, p99 TPOT ≤ 15 ms)."
    )
    assert (
        report.answer({**result, "winner": None}) == "No candidate met the SLO (p99 TTFT ≤ 500 ms, p99 TPOT ≤ 15 ms)."
    )


def test_a_failed_launch_is_in_the_table_with_its_cause_and_is_not_launched_again(tmp_path, monkeypatch):
    seams = Seams(monkeypatch, {1: 10.0})

    def fail(ctx, cid, record, forecast):
        seams.launched.append(cid)
        return {"state": "failed", "reason": "failed: oom_weights: the weights do not fit. Fix: TP=2", "launch_s": 42.0}

    monkeypatch.setattr(run, "launch_and_measure", fail)
    code = run.tune_candidates(context(tmp_path), candidates([1]), TUNE)
    assert code == run.EXIT_FAILED and seams.launched == ["serve.tensor_parallel_size-1"]
    md = (tmp_path / "tune.md").read_text()
    assert "No candidate met the SLO" in md and "oom_weights: the weights do not fit" in md
    assert not (tmp_path / report.RECIPE_NAME).exists()
    run.tune_candidates(context(tmp_path), candidates([1]), TUNE)
    assert seams.launched == ["serve.tensor_parallel_size-1"]  # failed is finished: resumed, not relaunched


def test_without_predictions_the_table_says_so(tmp_path, monkeypatch):
    Seams(monkeypatch, {1: 10.0, 4: 20.0})
    run.tune_candidates(context(tmp_path), candidates([1, 4]), TUNE)
    result = json.loads((tmp_path / "tune.json").read_text())
    result.update(predicting=False, no_prediction_reason="no card facts for a CPU: set hw.memory_bandwidth_gbps")
    md = report.render_md(result)
    assert "No predictions (no card facts for a CPU" in md and "none was pruned" in md


def test_with_pruning_off_every_planned_candidate_is_measured(tmp_path, monkeypatch):
    tp1 = json.loads((FIXTURES / "plan-llama3-8b-h100-tp1.json").read_text())
    predicted = rank.predict_manifest(tp1, (512, 128), rank.Slo(500, 15))
    seams = Seams(monkeypatch, {1: predicted.best_tokens_per_s_per_gpu * 1.15, 4: 10.0})  # as in the pruning test
    run.tune_candidates(context(tmp_path, prune=False), candidates([4, 1]), TUNE)
    assert seams.launched == ["serve.tensor_parallel_size-1", "serve.tensor_parallel_size-4"]
    assert "Pruning off" in (tmp_path / "tune.md").read_text()


def test_a_twin_that_differs_only_in_max_num_seqs_is_pruned_on_the_measurement(tmp_path, monkeypatch):
    # the first launched (max_num_seqs 64) misses the SLO at c=64 with all 64 running: 256 would run c=64
    # alike. The prediction alone could not prune it (equal forecasts), and no calibration is involved.
    launched = []

    def plan(ctx, cid, overrides):
        seqs = int(next(o.split("=")[1] for o in overrides if o.startswith("serve.max_num_seqs=")))
        target = ctx.run_dir / "candidates" / cid / "plan" / "manifest.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / "plan-llama3-8b-h100-tp1.json", target)
        return {"state": "planned", "tensor_parallel_size": 1, "pipeline_parallel_size": 1, "max_running": seqs}

    def launch(ctx, cid, record, forecast):
        launched.append(cid)
        probe = {"load": 60, "meets": True, "why": "meets the SLO", "figures": {"output_throughput": 9000.0}}
        miss = {"load": 64, "meets": False, "why": "p99 TTFT 538.1 ms > 500 ms", "figures": {}}
        return {
            "state": "measured",
            "measured": {
                "load": 60,
                "concurrency": 60,
                "tokens_per_s_per_gpu": 9000.0,
                "p99_ttft_ms": 155.0,
                "p99_tpot_ms": 5.2,
                "median_tpot_ms": 5.0,
            },
            "search": {"load": "concurrency", "lowest_failing": 64, "probes": [miss, probe]},
            "launch_s": 60.0,
            "bench_s": 30.0,
            "gpu_s": 90.0,
            "gpus": 1,
        }

    monkeypatch.setattr(run, "plan_candidate", plan)
    monkeypatch.setattr(run, "launch_and_measure", launch)
    code = run.tune_candidates(context(tmp_path), space.expand({"serve.max_num_seqs": [64, 256]}), TUNE)
    assert code == run.EXIT_OK and launched == ["serve.max_num_seqs-64"]
    result = json.loads((tmp_path / "tune.json").read_text())
    twin = next(c for c in result["candidates"] if c["id"] == "serve.max_num_seqs-256")
    assert twin["state"] == "pruned" and "missed the SLO at c=64 with every client running" in twin["reason"]
    assert result["winner"] == "serve.max_num_seqs-64" and result["tied_with_winner"] == []
    assert "missed the SLO at c=64" in (tmp_path / "tune.md").read_text()


def test_the_warm_up_runs_once_at_the_first_load_within_the_cap_and_is_not_judged():
    calls = []

    def measure(load, tag=""):
        calls.append((load, tag))
        return {"concurrency": load, "output_throughput": 10.0, "p99_ttft_ms": 9999.0, "wall_s": 1.5}

    warm = run._warm_up(measure, 96, 64)
    assert calls == [(64, "warmup-")]
    assert warm == {"load": 64, "concurrency": 64, "output_throughput": 10.0, "p99_ttft_ms": 9999.0, "wall_s": 1.5}
    assert run._warm_up(measure, None, None)["load"] == 1  # no prediction: the search starts at 1


class CpuSeams(Seams):
    """The same recorded plans, as a CPU machine makes them (plan.device "cpu", no GPU probed)."""

    def plan(self, ctx, cid, overrides):
        outcome = super().plan(ctx, cid, overrides)
        target = ctx.run_dir / "candidates" / cid / "plan" / "manifest.json"
        manifest = json.loads(target.read_text())
        manifest["plan"]["device"] = "cpu"
        manifest["hardware"]["gpus"] = []
        target.write_text(json.dumps(manifest))
        return outcome


def test_a_run_dir_measured_on_one_card_is_not_extended_on_another(tmp_path, monkeypatch, capsys):
    # TP=1 measured on the H100 and TP=4 pruned; resumed on a CPU machine, TP=4 would be planned for
    # the CPU and launched there, its measurement ranked against the H100's
    tp1 = json.loads((FIXTURES / "plan-llama3-8b-h100-tp1.json").read_text())
    predicted = rank.predict_manifest(tp1, (512, 128), rank.Slo(500, 15))
    Seams(monkeypatch, {1: predicted.best_tokens_per_s_per_gpu * 1.15, 4: 10.0})
    assert run.tune_candidates(context(tmp_path), candidates([4, 1]), TUNE) == run.EXIT_OK
    before = (tmp_path / "tune.json").read_text()
    cpu = CpuSeams(monkeypatch, {1: 1.0, 4: 1.0})
    assert run.tune_candidates(context(tmp_path), candidates([4, 1]), TUNE) == run.EXIT_REJECTED
    assert cpu.launched == [] and (tmp_path / "tune.json").read_text() == before
    [problem] = json.loads((tmp_path / "manifest.json").read_text())["problems"]
    assert problem["key"] == "hydra.run.dir" and "measured on NVIDIA H100 80GB HBM3" in problem["message"]
    assert "this run plans for cpu" in problem["message"] and "a new hydra.run.dir" in problem["fix"]
    assert "error: hydra.run.dir=" in capsys.readouterr().err
    # nothing left to launch (every candidate finished): the report is redrawn anywhere
    done = tmp_path / "all-measured"
    Seams(monkeypatch, {1: 10.0, 4: 20.0})
    run.tune_candidates(context(done, prune=False), candidates([4, 1]), TUNE)
    again = CpuSeams(monkeypatch, {1: 1.0, 4: 1.0})
    assert run.tune_candidates(context(done, prune=False), candidates([4, 1]), TUNE) == run.EXIT_OK
    assert again.launched == [] and again.planned == []
