"""vLLM's value sets read from its source: the statement-only parse answers what parsing the
whole module and walking it does (runner/config/validate.py ``_literal_in``)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from runner.config import validate


def _whole_module(source: str, name: str):
    for node in ast.walk(ast.parse(source)):
        found = validate._literal_of(node, name)
        if found is not validate._NOT_HERE:
            return found
    return None


CASES = [
    ('X = 1\nA = Literal["a", "b"]\n', ("a", "b")),
    ('A = str\nA = Literal["a"]\n', ("a",)),  # the first assignment that is a subscript
    ('A: TypeAlias = Literal[\n    "a",\n    "b",\n]\n', ("a", "b")),
    ('B = A = Literal["z"]\n', ("z",)),
    ('"""\nA = Literal["doc"]\n"""\nA = Literal["real"]\n', ("real",)),  # not the docstring's
    ('if x:\n    A = Literal["nested"]\n', ("nested",)),  # nested, when module level has none
    ('class C:\n    A = Literal["in"]\nA = Literal["top"]\n', ("top",)),  # module level first
    ('A = Literal[1, 2]\nA = Literal["later"]\n', None),  # no strings: the first one decides
    ('A = Literal["a"] \\\n    + 1\n', None),
    ('A == 3\nA = Literal["q"]\n', ("q",)),
    ('AB = Literal["no"]\n', None),
    ("", None),
]


@pytest.mark.parametrize("source, expected", CASES)
def test_statement_parse_answers_as_the_whole_module(source, expected):
    assert validate._literal_in(source, "A") == expected == _whole_module(source, "A")


def test_the_installed_vllm_sources_read_the_same_both_ways():
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.origin:
        pytest.skip("vLLM is not installed here")
    root = Path(spec.origin).parent
    for name, relative in validate._SOURCES.items():
        path = root / relative
        if path.exists():
            source = path.read_text()
            assert validate._literal_in(source, name) == _whole_module(source, name), name
