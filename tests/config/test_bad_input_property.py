"""Random overrides drawn from the schema's own field types, through the real command line in
mode=plan: whatever the values, the run exits 0 or 2, never with a traceback, and leaves a
manifest. Derandomized, so CI sees the same examples every time."""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.config.schema import RunnerConfig
from tests.config import cli_batch

GROUPS = ("serve", "model", "verify", "launch", "hw", "bench")
SKIP = {"model.hf_config", "hw.slurm", "hw.env", "serve.extra_args", "hw.ray_address", "launch.echo_log"}
INTS = st.sampled_from([0, 1, -1, 2, 3, 7, 2**31 - 1, 2**31, 2**63, -(2**63)]) | st.integers(-10, 10**6)
FLOATS = st.sampled_from([0.0, -0.0, 1.0, 0.5, 1.5, -1.0, math.nan, math.inf, -math.inf, 1e308]) | st.floats()
ODD = st.text(alphabet=st.sampled_from(list("aZ09 -_./\\'\"$=,:;[]{}()*?!#~é²٠\t")), max_size=12)


def _unwrap(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return (args[0], True) if typing.get_origin(tp) is typing.Union and len(args) == 1 else (tp, False)


def _fields():
    hints = typing.get_type_hints(RunnerConfig)
    for group in GROUPS:
        for f in dataclasses.fields(hints[group]):
            tp, optional = _unwrap(typing.get_type_hints(hints[group])[f.name])
            key = f"{group}.{f.name}"
            if (
                key not in SKIP
                and tp in (int, float, str, bool)
                or (isinstance(tp, type) and issubclass(tp, enum.Enum))
            ):
                yield key, tp, optional


FIELDS = sorted(_fields())


def _render(value) -> str:
    """A value as Hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@st.composite
def overrides(draw):
    chosen = draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True))
    out = []
    for key, tp, optional in chosen:
        if tp is bool:
            values = st.booleans() | ODD
        elif tp is int:
            values = INTS | FLOATS | ODD
        elif tp is float:
            values = FLOATS | INTS
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            values = st.sampled_from([m.value for m in tp]) | ODD
        else:
            values = ODD | INTS
        out.append(f"{key}={_render(draw(values | st.none() if optional or draw(st.booleans()) else values))}")
    return out


_count = itertools.count()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("property")


@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(overrides())
def test_random_overrides_keep_the_contract(root, drawn):
    run_dir = root / f"run{next(_count):04d}"
    base = ["hw=cpu-2", "model=tiny-llama", "mode=plan", f"cache_dir={root / 'cache'}"]
    (out,) = cli_batch.run_many([([*base, *drawn], cli_batch.clean_env(), run_dir)], parallel=1)
    cli_batch.assert_plan_contract(out, drawn)
