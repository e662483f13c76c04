"""Every profile, model, mode and recipe composes into the typed schema; bad input fails
at composition, not inside vLLM; every YAML says how it is used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner.config.schema import Device, Mode, ModelSource, RunnerConfig

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "runner" / "conf"
RECIPES = CONF / "recipe"
HW = sorted(p.stem for p in (CONF / "hw").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
RECIPE_NAMES = sorted(p.stem for p in RECIPES.glob("*.yaml"))
MODES = [m.value for m in Mode]


def test_the_matrix_is_not_empty():
    # A glob that finds nothing would make every parametrised test below vacuous.
    assert {"auto", "cpu-2", "nvlink-4gpu", "pcie-4gpu"} <= set(HW)
    assert {"tiny-llama", "llama70b", "qwen2.5-7b", "local"} <= set(MODELS)
    assert {"tiny-llama-cpu-2", "llama70b-nvlink-4gpu", "llama70b-pcie-4gpu"} <= set(RECIPE_NAMES)
    assert set(MODES) == {"serve", "check", "plan", "doctor", "bench", "tune"}
    assert (REPO / "recipes").resolve() == RECIPES.resolve()  # the repo's shortcut to the shipped recipes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("hw", HW)
def test_every_hw_model_mode_composes(compose, hw, model, mode):
    cfg = OmegaConf.to_object(compose([f"hw={hw}", f"model={model}", f"mode={mode}"]))
    assert isinstance(cfg, RunnerConfig)
    assert cfg.mode is Mode(mode)
    assert cfg.hw.name == hw
    assert isinstance(cfg.hw.device, Device)
    assert cfg.model.name == model
    assert isinstance(cfg.model.source, ModelSource)
    if cfg.model.source is not ModelSource.local:
        # shape and generated entries carry their config.json numbers
        assert cfg.model.hf_config["num_attention_heads"] > 0
        assert cfg.model.hf_config["num_hidden_layers"] > 0
    assert cfg.serve.tensor_parallel_size is None  # no profile or model pins TP
    assert cfg.serve.port == 8000 and cfg.serve.host == "127.0.0.1"


def _recipe_defaults(name: str) -> dict:
    """{'hw': 'cpu-2', 'model': 'tiny-llama'} from the recipe's 'override /GROUP: NAME' lines."""
    data = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    out = {}
    for entry in data.get("defaults", []):
        for key, value in entry.items():
            assert key.startswith("override /"), key
            out[key[len("override /") :]] = value
    return out


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_every_recipe_composes(compose, name):
    cfg = OmegaConf.to_object(compose([f"+recipe={name}"]))
    assert isinstance(cfg, RunnerConfig)
    chosen = _recipe_defaults(name)
    assert cfg.hw.name == chosen["hw"]
    assert cfg.model.name == chosen["model"]
    # the recipe's own values land at the top level (@package _global_)
    data = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    for key, value in (data.get("serve") or {}).items():
        assert getattr(cfg.serve, key) == value, key
    if "mode" in data:
        assert cfg.mode is Mode(data["mode"])
    for key, value in (data.get("model") or {}).items():
        assert getattr(cfg.model, key) == value, key


def test_recipe_values_can_be_overridden_on_the_command_line(compose):
    cfg = OmegaConf.to_object(compose(["+recipe=llama70b-nvlink-4gpu", "serve.tensor_parallel_size=2", "mode=plan"]))
    assert cfg.serve.tensor_parallel_size == 2
    assert cfg.mode is Mode.plan
    assert cfg.hw.name == "nvlink-4gpu"


@pytest.mark.parametrize(
    "overrides",
    [
        ["serve.tensor_parallel_siz=2"],  # typo in a key
        ["mode=chek"],  # not a Mode
        ["hw.device=tpu"],  # not a Device
        ["serve.tensor_parallel_size=two"],  # not an int
        ["hw=nvlink-3gpu"],  # no such profile
        ["+recipe=no-such-recipe"],
    ],
    ids=["typo-key", "bad-mode", "bad-device", "bad-int", "unknown-profile", "unknown-recipe"],
)
def test_bad_input_fails_at_composition(compose, overrides):
    with pytest.raises((HydraException, OmegaConfBaseException)):
        compose(overrides)


def test_typo_error_names_the_key(compose):
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        compose(["serve.tensor_parallel_siz=2"])
    assert "tensor_parallel_siz" in str(info.value)


def _yaml_files():
    seen = {}
    for root, _dirs, files in os.walk(CONF, followlinks=True):
        for f in files:
            if f.endswith((".yaml", ".yml")):
                path = Path(root, f)
                seen.setdefault(path.resolve(), path)
    for path in RECIPES.glob("*.y*ml"):
        seen.setdefault(path.resolve(), path)
    return sorted(seen.values())


def _header(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


YAML_FILES = _yaml_files()


def test_yaml_files_found():
    names = {p.relative_to(REPO).as_posix() for p in YAML_FILES}
    assert "runner/conf/config.yaml" in names and "runner/conf/serve/default.yaml" in names
    assert len(YAML_FILES) >= len(HW) + len(MODELS) + len(RECIPE_NAMES) + 2


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_yaml_opens_with_a_usage_header(path):
    header = _header(path)
    assert header, f"{path} does not open with a comment header"
    assert "python -m runner" in header
    # and the command shown is the one that selects this file
    group = path.parent.name
    selector = {
        "hw": f"hw={path.stem}",
        "model": f"model={path.stem}",
        "recipes": f"+recipe={path.stem}",
        "recipe": f"+recipe={path.stem}",
    }.get(group)
    if selector:
        commands = [line for line in header.splitlines() if "python -m runner" in line]
        assert any(selector in c for c in commands), f"{path}: no command with {selector}"
