"""mode=plan for a model given only its published config.json (no weights, no tokenizer, no
processor): it plans — weights and KV predicted for every family — and says what serving will
additionally need; a launch of the same directory is refused before anything starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.config.schema import ModelConfig, ModelSource
from runner.probe.models import launch_needs

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "tests" / "fixtures" / "hf_configs"

# the published config.json beside the conf/model entry carrying the same numbers
FAMILIES = [
    ("qwen2.5-vl-7b-instruct", "qwen2.5-vl-7b"),  # multimodal: vision encoder
    ("deepseek-v2-lite", "deepseek-v2-lite"),  # MLA + MoE
    ("gemma-2-27b", "gemma-2-27b"),  # hybrid sliding window
    ("qwen3-30b-a3b", "qwen3-30b-a3b"),  # MoE
    ("mixtral-8x7b-v0.1", "mixtral-8x7b"),  # MoE, sliding-window family
    ("mistral-7b-v0.1", "mistral-7b-v0.1"),  # all-sliding window
]


def _plan(tmp_path: Path, name: str, *overrides: str) -> dict:
    run_dir = tmp_path / f"run-{name}"
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run(
        [sys.executable, "-m", "runner", "hw=nvlink-4gpu", *overrides, f"hydra.run.dir={run_dir}"]
        + [f"cache_dir={tmp_path / 'cache'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["_rc"], manifest["_stdout"], manifest["_stderr"] = out.returncode, out.stdout, out.stderr
    return manifest


def _config_only(tmp_path: Path, published: str) -> Path:
    d = tmp_path / published
    d.mkdir()
    shutil.copy(CONFIGS / f"{published}.json", d / "config.json")
    return d


@pytest.mark.parametrize("published, entry", FAMILIES, ids=[f[1] for f in FAMILIES])
def test_config_json_alone_plans_like_the_entry_and_names_what_serving_needs(tmp_path, published, entry):
    d = _config_only(tmp_path, published)
    alone = _plan(tmp_path, "alone", "model=local", f"model.path={d}", "mode=plan", "serve.max_model_len=8192")
    assert alone["_rc"] == 0 and alone["status"] == "planned", alone["_stderr"][-1500:]
    shape = _plan(
        tmp_path, "entry", f"model={entry}", "model.load_format=dummy", "mode=plan", "serve.max_model_len=8192"
    )
    assert shape["_rc"] == 0, shape["_stderr"][-1500:]
    fit, want = alone["fit"], shape["fit"]
    assert fit["weights_gib_per_gpu"] > 0 and fit["kv_cache_tokens"] > 0
    assert fit["weights_gib_per_gpu"] == pytest.approx(want["weights_gib_per_gpu"], abs=0.01)
    assert fit["kv_bytes_per_token"] == want["kv_bytes_per_token"]
    needs = [n for n in alone["notes"] if "serving it will also need" in n]
    assert len(needs) == 1 and "a tokenizer" in needs[0] and "the weights" in needs[0]
    assert ("preprocessor_config.json" in needs[0]) == (entry == "qwen2.5-vl-7b")
    assert needs[0] in alone["_stdout"]


def test_a_quantized_config_json_alone_is_sized_from_its_quantization_config(tmp_path):
    d = _config_only(tmp_path, "qwen2.5-72b-instruct-awq")
    awq = _plan(tmp_path, "awq", "model=local", f"model.path={d}", "mode=plan", "serve.max_model_len=8192")
    bf16 = _plan(tmp_path, "bf16", "model=qwen2.5-72b", "mode=plan", "serve.max_model_len=8192")
    assert awq["_rc"] == 0 and bf16["_rc"] == 0, awq["_stderr"][-1500:]
    # 4-bit linears with fp16 scales per group of 128, bf16 embeddings and norms
    ratio = awq["fit"]["weights_gib_per_gpu"] / bf16["fit"]["weights_gib_per_gpu"]
    assert 0.25 < ratio < 0.35


def test_launching_the_same_directory_is_refused_before_anything_starts(tmp_path):
    d = _config_only(tmp_path, "mistral-7b-v0.1")
    run = _plan(tmp_path, "check", "model=local", f"model.path={d}", "mode=check")
    assert run["_rc"] == 2 and run["status"] == "rejected"
    errors = [line for line in run["_stderr"].splitlines() if line.startswith("error: model.path=")]
    assert any("no weights" in e and "model.load_format=dummy" in e for e in errors), errors
    assert any("no tokenizer" in e for e in errors), errors
    assert not (tmp_path / "run-check" / "vllm.log").exists()


def _local(path: Path, load_format: str = "auto") -> ModelConfig:
    return ModelConfig(name="m", source=ModelSource.local, path=str(path), load_format=load_format)


def test_a_complete_directory_needs_nothing_more(tmp_path):
    for name in ("config.json", "tokenizer.json", "model.safetensors", "preprocessor_config.json"):
        (tmp_path / name).write_text("{}")
    assert launch_needs(_local(tmp_path), "", {"vision_config": {"depth": 2}}) == []


def test_dummy_weights_need_no_weight_files_and_a_text_model_no_processor(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (needs,) = launch_needs(_local(tmp_path, "dummy"), "", {"model_type": "llama"})
    assert "a tokenizer" in needs and "the weights" not in needs and "preprocessor" not in needs
    (tmp_path / "tokenizer.model").write_text("")
    assert launch_needs(_local(tmp_path, "dummy"), "", {"model_type": "llama"}) == []
