"""Published config.json files of every family the planner models (dense, sliding window, MLA,
MoE, multimodal, AWQ), each with one to three fields deleted or given a value of the wrong kind,
planned from a model directory through the real command line: whatever the file says, the run
exits 0 or 2, never with a traceback, leaves a manifest, and every error names its fix.
Derandomized, so CI sees the same examples every time."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.config import cli_batch

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "hf_configs"
FAMILIES = sorted(
    p.stem
    for p in CONFIGS.glob("*.json")
    if p.stem
    in {
        "llama-3.1-8b",
        "gemma-2-9b",
        "mistral-7b-v0.1",
        "deepseek-v2-lite",
        "qwen3-30b-a3b",
        "mixtral-8x7b-v0.1",
        "qwen2.5-vl-7b-instruct",
        "qwen2.5-72b-instruct-awq",
    }
)
WRONG = (
    st.none()
    | st.booleans()
    | st.sampled_from([0, -1, 1, 3, 2**31, 10**12, -(10**6)])
    | st.sampled_from([0.0, -1.5, 0.5, 1e300, math.nan, math.inf])
    | st.text(max_size=6)
    | st.lists(st.integers(-3, 40), max_size=4)
    | st.just({})
)
_DELETE = object()


def _paths(config: dict):
    """Every top-level key, and every key one level into a nested object."""
    for key, value in config.items():
        yield (key,)
        if isinstance(value, dict):
            for inner in value:
                yield (key, inner)


@st.composite
def mutated(draw):
    family = draw(st.sampled_from(FAMILIES))
    config = json.loads((CONFIGS / f"{family}.json").read_text())
    paths = sorted(_paths(config))
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True)):
        holder = config
        for key in path[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if not isinstance(holder, dict):
            continue  # an earlier mutation replaced the object this key was in
        value = draw(st.just(_DELETE) | WRONG)
        if value is _DELETE:
            holder.pop(path[-1], None)
        else:
            holder[path[-1]] = value
    return family, config


_count = itertools.count()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("config-json")


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutated())
def test_a_mangled_config_json_is_planned_or_refused_never_a_crash(root, drawn):
    family, config = drawn
    n = next(_count)
    model = root / f"model{n:04d}"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    run_dir = root / f"run{n:04d}"
    argv = ["hw=nvlink-4gpu", "model=local", f"model.path={model}", "mode=plan", f"cache_dir={root / 'cache'}"]
    (out,) = cli_batch.run_many([(argv, cli_batch.clean_env(), run_dir)], parallel=1)
    cli_batch.assert_plan_contract(out, (family, config))
