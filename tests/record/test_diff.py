"""runner.diff on the H100 ×4 sweep's recorded manifests (docs/validation), one test per group."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.record import diff
from runner.record.diff import HIGH, LOW, diff_manifests, load_manifest

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "docs" / "validation" / "2026-11-27-h100x4-sweep"
POINT = "{}_bench=h100-quick,hw=auto,model.load_format=dummy,model=llama3-8b,serve.tensor_parallel_size={}"
TP1 = SWEEP / "llama3-8b" / POINT.format(0, 1)
TP2 = SWEEP / "llama3-8b" / POINT.format(1, 2)
RUNNER_TP1 = SWEEP / "comparison" / "runner-sweep" / POINT.format(0, 1)
LOOP_TP1 = SWEEP / "comparison" / "plain-loop" / "plan-1"


def by_key(found, group):
    return {d.key: d for d in found if d.group == group}


@pytest.fixture(scope="module")
def tp1_vs_tp2():
    return diff_manifests(load_manifest(TP1), load_manifest(TP2))


def test_config_group_names_the_tp_size_as_high_impact(tp1_vs_tp2):
    config = by_key(tp1_vs_tp2, "config")
    assert list(config) == ["serve.tensor_parallel_size"]
    d = config["serve.tensor_parallel_size"]
    assert (d.a, d.b, d.impact) == (1, 2, HIGH)


def test_argv_env_group_has_the_flag_and_the_visible_devices(tp1_vs_tp2):
    launch = by_key(tp1_vs_tp2, "argv/env")
    assert (launch["argv --tensor-parallel-size"].a, launch["argv --tensor-parallel-size"].b) == ("1", "2")
    assert (launch["env CUDA_VISIBLE_DEVICES"].a, launch["env CUDA_VISIBLE_DEVICES"].b) == ("0", "0,1")
    # both points ran from the same sweep command: nothing to say about it
    assert "runner command" not in launch


def test_hardware_group_has_the_link_the_second_gpu_brings(tp1_vs_tp2):
    hardware = by_key(tp1_vs_tp2, "hardware")
    assert (hardware["interconnect used"].a, hardware["interconnect used"].b) == ("none", "nvlink")
    assert hardware["interconnect used"].impact == HIGH
    assert (hardware["devices used"].a, hardware["devices used"].b) == ([0], [0, 1])
    assert "gpu count" not in hardware  # the same machine


def test_outcomes_group_has_kv_tokens_and_bench_with_direction(tp1_vs_tp2):
    outcomes = by_key(tp1_vs_tp2, "outcomes")
    kv = outcomes["KV cache tokens"]
    assert (kv.a, kv.b, kv.better) == (463312, 1058128, True)
    assert kv.change_pct == pytest.approx(128.4, abs=0.1)
    assert outcomes["c=32 output tok/s"].better is True
    assert outcomes["c=32 median TPOT ms"].better is True  # lower is better
    assert "verdict" not in outcomes  # both verified


def test_versions_group_on_the_same_machine_is_empty_and_differs_when_vllm_does():
    a = load_manifest(TP1)
    assert not by_key(diff_manifests(a, load_manifest(TP2)), "versions")
    b = copy.deepcopy(a)
    b["versions"]["vllm"] = "0.32.0"
    b["hardware"]["driver_version"] = "590.1"
    versions = by_key(diff_manifests(a, b), "versions")
    assert (versions["vllm"].a, versions["vllm"].b, versions["vllm"].impact) == ("0.26.0", "0.32.0", HIGH)
    assert versions["driver_version"].b == "590.1"


def test_runner_point_against_the_plain_loop_point():
    found = diff_manifests(load_manifest(RUNNER_TP1), load_manifest(LOOP_TP1))
    outcomes = by_key(found, "outcomes")
    assert (outcomes["verdict"].a, outcomes["verdict"].b) == ("verified", "planned")
    # the plan-mode run never started vLLM: its missing runtime versions rank low, not high
    versions = by_key(found, "versions")
    assert versions["torch"].b is None and versions["torch"].impact == LOW
    # same model and TP size: the launch differs only in the port
    launch = by_key(found, "argv/env")
    assert [k for k in launch if k.startswith("argv")] == ["argv --port"]
    assert by_key(found, "config")["mode"].b == "plan"


def test_failure_cause_is_an_outcome():
    a = load_manifest(TP1)
    b = copy.deepcopy(a)
    b.update(status="failed", failure={"stage": "start-up", "cause": "cuda_oom", "reason": "x", "fix": "y"})
    outcomes = by_key(diff_manifests(a, b), "outcomes")
    assert outcomes["failure cause"].b == "cuda_oom" and outcomes["verdict"].b == "failed"


def test_groups_rank_causes_by_impact_and_keep_outcomes_last(tp1_vs_tp2):
    order = [g for g, _ in diff.grouped(tp1_vs_tp2)]
    assert order[-1] == "outcomes"
    assert order.index("config") < order.index("hardware")
    for _, ds in diff.grouped(tp1_vs_tp2):
        assert [d.impact for d in ds] == sorted(d.impact for d in ds)


def test_sweeps_are_matched_point_by_point(tmp_path):
    # the same three points, listed in another order in B
    result = diff.compare(SWEEP / "llama3-8b", SWEEP / "comparison" / "runner-sweep")
    assert result["a"]["points"] == result["b"]["points"] == 3
    assert not result["only_in_a"] and not result["only_in_b"]
    tps = sorted(p["point"][-1] for p in result["points"])
    assert tps == [f"serve.tensor_parallel_size={n}" for n in (1, 2, 4)]
    for point in result["points"]:
        assert Path(point["a"]["path"]).name == Path(point["b"]["path"]).name
    # a point only one sweep has is listed as such
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copytree(TP1, partial / TP1.name)
    result = diff.compare(SWEEP / "llama3-8b", partial)
    assert len(result["points"]) == 1 and len(result["only_in_a"]) == 2


def test_secret_values_never_reach_the_output(tmp_path):
    a = load_manifest(TP1)
    b = copy.deepcopy(a)
    # an old manifest that kept a secret unredacted, in the config, the env and the argv
    b["config"]["hw"]["env"]["HF_TOKEN"] = "hf_verysecretvalue"
    b["plan"]["env"]["VLLM_API_KEY"] = "sk-verysecretvalue"
    b["plan"]["argv"] = b["plan"]["argv"] + ["--api-key", "sk-verysecretvalue"]
    (tmp_path / "b.json").write_text(json.dumps(b))
    found = diff_manifests(a, b)
    assert by_key(found, "config")["hw.env.HF_TOKEN"].b == "***redacted***"
    for args in ([], ["--json"]):
        out = subprocess.run(
            [sys.executable, "-m", "runner.diff", str(TP1), str(tmp_path / "b.json"), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        assert "verysecretvalue" not in out.stdout + out.stderr
        assert "hw.env.HF_TOKEN" in out.stdout


def test_cli_table_and_json(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "runner.diff", str(TP1), str(TP2)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0
    assert "serve.tensor_parallel_size" in out.stdout and "KV cache tokens" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "runner.diff", str(TP1), str(TP2), "--json"], capture_output=True, text=True, cwd=ROOT
    )
    groups = [g["group"] for g in json.loads(out.stdout)["groups"]]
    assert "config" in groups and groups[-1] == "outcomes"


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    for a in (tmp_path / "missing", tmp_path / "x.json"):
        out = subprocess.run(
            [sys.executable, "-m", "runner.diff", str(a), str(TP1)], capture_output=True, text=True, cwd=ROOT
        )
        assert out.returncode == 2
        assert len(out.stderr.strip().splitlines()) == 1 and "Fix:" in out.stderr and str(a) in out.stderr
