"""Models the memory model does not cover are said, not guessed: layers with a recurrent state
(Mamba, linear attention, short convolutions) are counted from each family's config.json and the
plan says memory is not predicted instead of sizing them as attention; an architecture the
installed vLLM's registry names as removed is refused before anything starts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.config.validate import dropped_architecture
from runner.plan.shape import ModelShape

REPO = Path(__file__).resolve().parents[2]
LLAMA = json.loads((REPO / "tests/fixtures/hf_configs/llama-3.1-8b.json").read_text())
GEMMA = json.loads((REPO / "tests/fixtures/hf_configs/gemma-2-9b.json").read_text())

# the fields each family's published config.json uses, on a Llama-sized body
HYBRIDS = [
    ("qwen3-next: full_attention_interval", {"full_attention_interval": 4}, 24, "linear_attention"),
    (
        "qwen3-next: layer_types",
        {"layer_types": (["linear_attention"] * 3 + ["full_attention"]) * 8},
        24,
        "linear_attention",
    ),
    ("granite-4.0-h: layer_types", {"layer_types": ["mamba"] * 28 + ["attention"] * 4}, 28, "mamba"),
    ("lfm2: layer_types", {"layer_types": ["conv", "conv", "full_attention"] * 10 + ["conv", "conv"]}, 22, "conv"),
    ("nemotron-h: hybrid_override_pattern", {"hybrid_override_pattern": "M-M-M-M*-" * 3 + "M-M-M"}, 15, "mamba2"),
    ("jamba: attn_layer_period", {"attn_layer_period": 8, "attn_layer_offset": 4}, 28, "mamba"),
    ("falcon-h1: mamba beside attention", {"mamba_d_ssm": 1024, "mamba_n_heads": 128}, 32, "mamba2 (beside attention)"),
]


@pytest.mark.parametrize("family, fields, recurrent, kind", HYBRIDS, ids=[h[0] for h in HYBRIDS])
def test_recurrent_layers_are_counted_from_the_family_fields(family, fields, recurrent, kind):
    shape = ModelShape.from_hf_config({**LLAMA, **fields})
    assert (shape.recurrent_layers, shape.recurrent_kind) == (recurrent, kind)


def test_attention_only_models_have_none():
    assert ModelShape.from_hf_config(LLAMA).recurrent_layers == 0
    gemma = ModelShape.from_hf_config(GEMMA)  # sliding and full attention: both attention
    assert gemma.recurrent_layers == 0 and gemma.sliding_window


def _plan(tmp_path: Path, config: dict, *extra: str):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "runner", "hw=nvlink-4gpu", "model=local", f"model.path={model}", "mode=plan"]
        + [*extra, f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out, json.loads((run_dir / "manifest.json").read_text())


def test_a_hybrid_model_plans_without_a_memory_guess(tmp_path):
    out, manifest = _plan(tmp_path, {**LLAMA, "full_attention_interval": 4})
    assert out.returncode == 0, out.stderr[-1500:]
    assert manifest["fit"] is None or not manifest["fit"]
    notes = [n for n in manifest["notes"] if n.startswith("memory not predicted")]
    assert len(notes) == 1 and "24 of 32 layers keep a recurrent state (linear_attention)" in notes[0]
    # no weights from a parameter count of attention layers in the recurrent ones' place
    assert "weights_gib" not in manifest["plan"]["estimate"]


needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="reads the installed vLLM's registry")


@needs_vllm
def test_the_registry_says_which_architectures_are_gone():
    removed = dropped_architecture("MllamaForConditionalGeneration")
    assert removed is not None and removed[0] == "removed" and removed[1].count(".") == 2
    assert dropped_architecture("LlamaForCausalLM") is None
    assert dropped_architecture("Qwen2_5_VLForConditionalGeneration") is None
    assert dropped_architecture("NotAnArchitectureAnywhere") is None  # the Transformers backend may serve it
    plugin = dropped_architecture("BartForConditionalGeneration")
    assert plugin is not None and plugin[0] == "plugin" and plugin[1].startswith("https://")


@needs_vllm
def test_a_removed_architecture_is_refused_before_anything_starts(tmp_path):
    out, manifest = _plan(tmp_path, {**LLAMA, "architectures": ["MllamaForConditionalGeneration"]})
    assert out.returncode == 2 and manifest["status"] == "rejected"
    (error,) = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert "no longer serves MllamaForConditionalGeneration (its registry: supported until v" in error
    assert "Fix: launch.python=" in error
