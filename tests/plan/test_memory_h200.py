"""The memory model for the families served today, against one H200 (vLLM 0.26.0, dummy weights):
tests/fixtures/memory_points_h200.json is what `benchmarks/memory_table.py` read from the runs in
docs/validation/2026-12-04-h200-memory/ (online fp8 70B / 72B / Mixtral / llama3-8b, Gemma-2's hybrid
sliding window, Mistral's all-sliding window, DeepSeek-V2-Lite's MLA + MoE, Qwen3-30B-A3B's MoE). The
planner is asked again for each: KV cache within 2 % of vLLM's report, weights within 0.15 GiB, the
three fused-MoE points' activation peak within 0.15 GiB, and every point it says fits did start (no
false fit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.plan.test_memory import _plan

POINTS = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "memory_points_h200.json").read_text())


@pytest.mark.parametrize("point", POINTS, ids=[p["name"] for p in POINTS])
def test_kv_cache_within_2_percent_and_weights_within_0_15_gib(compose, point):
    fit = _plan(compose, point).estimate["fit"]
    measured = point["measured"]
    assert abs(fit["kv_cache_tokens"] - measured["kv_cache_tokens"]) / measured["kv_cache_tokens"] < 0.02
    assert fit["weights_gib_per_gpu"] == pytest.approx(measured["weights_gib"], abs=0.15)


# The fused-MoE points: their activation peak is the workspace and sampler vLLM's source sizes
# (runner/plan/memory.py, fused_moe_workspace_bytes / v1_sampler_peak_bytes), not a fitted term.
MOE_POINTS = [p for p in POINTS if p["name"] in ("qwen3-30b", "mixtral-fp8", "dsv2-lite")]


@pytest.mark.parametrize("point", MOE_POINTS, ids=[p["name"] for p in MOE_POINTS])
def test_moe_activation_peak_within_0_15_gib(compose, point):
    fit = _plan(compose, point).estimate["fit"]
    assert fit["activation_peak_gib"] == pytest.approx(point["measured"]["activation_peak_gib"], abs=0.15)


@pytest.mark.parametrize("point", POINTS, ids=[p["name"] for p in POINTS])
def test_no_false_fit(compose, point):
    plan = _plan(compose, point)
    assert point["outcome"] == "verified" and plan.ok, plan.problems


def test_the_families_are_covered():
    models = {next(o for o in p["overrides"] if o.startswith("model=")) for p in POINTS}
    assert {"model=llama70b", "model=qwen2.5-72b", "model=gemma-2-9b", "model=mistral-7b-v0.1"} <= models
    assert {"model=deepseek-v2-lite", "model=qwen3-30b-a3b", "model=mixtral-8x7b"} <= models
    assert sum("serve.quantization=fp8" in p["overrides"] for p in POINTS) >= 5
