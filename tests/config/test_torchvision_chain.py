"""A multimodal model whose vLLM code needs torchvision, found from the installed sources before
anything starts: the registry names vLLM's module, its module-level imports of sibling model
modules and of transformers model modules are followed, and a module-level torchvision import at
the end of a chain is the verdict — checked against what importing those modules really does."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.config.validate import torchvision_chain

REPO = Path(__file__).resolve().parents[2]


def _tree(tmp_path: Path) -> tuple:
    vllm, tf = tmp_path / "vllm", tmp_path / "transformers"
    models = vllm / "model_executor" / "models"
    models.mkdir(parents=True)
    (models / "registry.py").write_text(
        '_MULTIMODAL_MODELS = {\n    "AVLForCausalLM": ("a_vl", "AVLForCausalLM"),\n'
        '    "BVLForCausalLM": ("b_vl", "BVLForCausalLM"),\n    "LazyForCausalLM": ("lazy", "X"),\n}\n'
    )
    (models / "a_vl.py").write_text("from .b_vl import helper\nimport torch\n")
    (models / "b_vl.py").write_text(
        "from transformers.models.b.image_processing_b import smart_resize\n"
        "from transformers.models.b import BProcessor\n"
    )
    (models / "lazy.py").write_text("def load():\n    import torchvision\n    from .b_vl import x\n")
    (tf / "models" / "b").mkdir(parents=True)
    processor = tf / "models" / "b" / "image_processing_b.py"
    processor.write_text("import numpy\nfrom torchvision.transforms.v2 import F\n")
    return vllm, tf


def test_the_chain_is_followed_through_siblings_into_transformers(tmp_path):
    vllm, tf = _tree(tmp_path)
    assert torchvision_chain("AVLForCausalLM", vllm, tf) == [
        "a_vl.py",
        "b_vl.py",
        "transformers/models/b/image_processing_b.py",
    ]
    assert torchvision_chain("BVLForCausalLM", vllm, tf) == ["b_vl.py", "transformers/models/b/image_processing_b.py"]


def test_imports_inside_functions_and_unknown_architectures_are_not_a_chain(tmp_path):
    vllm, tf = _tree(tmp_path)
    assert torchvision_chain("LazyForCausalLM", vllm, tf) is None
    assert torchvision_chain("NotRegistered", vllm, tf) is None
    # a chain longer than the depth followed is not claimed
    assert torchvision_chain("AVLForCausalLM", vllm, tf, depth=1) is None


needs_both = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or importlib.util.find_spec("transformers") is None,
    reason="reads the installed vLLM and transformers",
)
no_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="the verdict is checked where torchvision is missing"
)
# (architecture, vLLM's module for it)
ARCHS = [
    ("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl"),
    ("LlavaForConditionalGeneration", "llava"),
    ("Idefics3ForConditionalGeneration", "idefics3"),
    ("Phi3VForCausalLM", "phi3v"),
]


@needs_both
@no_torchvision
def test_the_verdict_is_what_importing_the_module_does():
    probe = (
        "import importlib, json, sys\nout = {}\nfor m in sys.argv[1:]:\n    try:\n"
        "        importlib.import_module('vllm.model_executor.models.' + m); out[m] = None\n"
        "    except ModuleNotFoundError as e:\n        out[m] = e.name\nprint(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *[m for _, m in ARCHS]],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "VLLM_NO_USAGE_STATS": "1"},
    )
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    for arch, module in ARCHS:
        needs = imported[module] == "torchvision"
        assert (torchvision_chain(arch) is not None) == needs, (arch, imported[module])
    assert any(imported[m] == "torchvision" for _, m in ARCHS) and any(imported[m] is None for _, m in ARCHS)


def _qwen_vl(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runner", "hw=cpu-2", "model=qwen2.5-vl-7b", "model.load_format=dummy", f"mode={mode}"]
        + [f"hydra.run.dir={tmp_path / mode}", f"cache_dir={tmp_path / 'cache'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@needs_both
@no_torchvision
def test_a_launch_is_refused_before_vllm_starts(tmp_path):
    out = _qwen_vl(tmp_path, "check")
    assert out.returncode == 2, out.stderr[-1500:]
    (error,) = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert "imports torchvision (qwen2_5_vl.py -> qwen2_vl.py -> transformers/models/qwen2_vl/" in error
    assert "Fix: `pip install torchvision==<the release paired" in error
    assert not (tmp_path / "check" / "vllm.log").exists()
    # planning is not refused: it may be for a machine whose Python has torchvision
    plan = _qwen_vl(tmp_path, "plan")
    assert plan.returncode == 0, plan.stderr[-1500:]
