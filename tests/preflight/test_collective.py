"""The preflight all-reduce (runner/preflight/collective.py) for real on the CPU (gloo, two ranks), its
timeout, and what the run does with its answer (the process seam replaced by recorded answers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.config.schema import LaunchConfig
from runner.launch import process
from runner.launch.spec import LaunchSpec
from runner.plan.build import Plan
from runner.preflight.allreduce import check_collective

SCRIPT = Path(__file__).resolve().parents[2] / "runner" / "preflight" / "collective.py"


def _collective(*args: str, timeout: float = 120) -> dict:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_gloo_all_reduce_is_correct_and_measured():
    result = _collective("--world", "2", "--backend", "gloo", "--size-mib", "4", "--iters", "3", "--warmup", "1")
    assert result["ok"] and result["correct"] and result["world"] == 2
    # bus bandwidth = algorithm bandwidth x 2(n-1)/n, which is 1 for two ranks
    assert result["busbw_gbps"] == pytest.approx(result["algbw_gbps"], rel=0.01) and result["busbw_gbps"] > 0


def test_a_collective_that_cannot_finish_in_time_is_reported_not_waited_for():
    result = _collective("--world", "2", "--backend", "gloo", "--size-mib", "64", "--iters", "1000", "--timeout-s", "3")
    assert not result["ok"] and result.get("hung") and "did not finish in 3 s" in result["error"]
    assert result["seconds"] < 30


def test_run_json_kills_a_helper_that_never_answers(tmp_path):
    started = tmp_path / "pid"
    code = f"import os,time; open({str(started)!r},'w').write(str(os.getpid())); time.sleep(60)"
    answer = process.run_json([sys.executable, "-c", code], {}, timeout=2)
    assert not answer["ok"] and answer["hung"]
    pid = int(started.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def _plan() -> Plan:
    return Plan(
        mode="check",
        device="cuda",
        tensor_parallel_size=2,
        pipeline_parallel_size=1,
        devices=(0, 1),
        devices_available=2,
        model_name="tiny-llama",
        model_path=None,
        argv=("python", "-m", "vllm"),
        env={"CUDA_VISIBLE_DEVICES": "0,1"},
        url="http://x",
    )


def _check(plan: Plan):
    return check_collective(plan, LaunchSpec.from_plan(plan), LaunchConfig(collective_check=True))


def test_a_hang_with_p2p_that_passes_without_it_gets_the_fallback(monkeypatch):
    answers = iter(
        [
            {"ok": False, "hung": True, "error": "no answer in 120 s; killed"},
            {"ok": True, "correct": True, "busbw_gbps": 21.5, "seconds": 4.0},
        ]
    )
    seen_env = []
    monkeypatch.setattr(process, "run_json", lambda argv, env, timeout: (seen_env.append(dict(env)), next(answers))[1])
    monkeypatch.delenv("NCCL_P2P_DISABLE", raising=False)
    plan = _plan()
    checked = _check(plan)
    after = checked.spec  # the launch gets the fallback; the plan stays as planned
    assert "NCCL_P2P_DISABLE" not in seen_env[0] and seen_env[1]["NCCL_P2P_DISABLE"] == "1"
    assert after.env["NCCL_P2P_DISABLE"] == "1" and any("NCCL_P2P_DISABLE=1" in n for n in after.notes)
    assert "NCCL_P2P_DISABLE" not in plan.env and checked.failure is None
    assert checked.record["ok"] and len(checked.record["attempts"]) == 2


def test_a_collective_that_fails_either_way_stops_the_run(monkeypatch):
    monkeypatch.setattr(
        process, "run_json", lambda argv, env, timeout: {"ok": False, "error": "rank 1: DistBackendError: NCCL error"}
    )
    monkeypatch.delenv("NCCL_P2P_DISABLE", raising=False)
    checked = _check(_plan())
    failed = checked.failure  # the run raises it: the all-reduce failed either way
    assert failed is not None and failed.stage == "preflight"
    assert failed.cause == "collective_failed" and "NCCL_P2P_DISABLE=1" in failed.fix
    assert not checked.record["ok"]
