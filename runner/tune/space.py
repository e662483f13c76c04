"""The search space: override lists in, candidates (one override list each) out.

``tune.space`` maps an override key to the values to try::

    tune:
      space:
        serve.quantization: [null, fp8]
        serve.max_num_seqs: [64, 256]

or, on the command line, ``+tune.space.serve.max_num_seqs=[64,256]`` (the ``+``: the key is new to the
map). Nested maps are read as dotted keys, so ``{serve: {max_num_seqs: [64, 256]}}`` is the same space.
Every combination is a candidate; its id is its overrides made path-safe, so the same candidate gets the
same directory in every run (which is what resuming relies on).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from runner.problems import Problem

# Hydra's override grammar: strings made of these characters need no quotes.
_BARE = re.compile(r"^[A-Za-z0-9_./:\-+@]+$")
_KEYWORDS = {"null", "true", "false", "inf", "nan"}


@dataclass(frozen=True)
class Candidate:
    id: str
    overrides: Tuple[str, ...]  # Hydra overrides, "key=value"
    values: Tuple[Tuple[str, Any], ...]  # (key, value) in the space's order

    @property
    def label(self) -> str:
        return " ".join(self.overrides) or "(the base configuration)"

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.values)


def flatten(space: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested maps to dotted keys; a leaf is the list of values to try (a scalar is a list of one)."""
    out: Dict[str, Any] = {}
    for key, value in space.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def problems(space: Mapping[str, Any]) -> List[Problem]:
    """What is wrong with a space, one Problem per key (empty: it can be expanded)."""
    found: List[Problem] = []
    flat = flatten(space)
    if not flat:
        found.append(
            Problem(
                "tune.space",
                "{}",
                "mode=tune needs a search space: the override keys and the values to try",
                "+tune.space.serve.max_num_seqs=[64,256]",
            )
        )
    for key, values in flat.items():
        if key.split(".", 1)[0] in ("mode", "tune", "hydra"):
            found.append(Problem(f"tune.space.{key}", values, "not a serving setting", "search serve.*, hw.*, model.*"))
        elif isinstance(values, (list, tuple)) and not values:
            found.append(Problem(f"tune.space.{key}", "[]", "no values to try", f"+tune.space.{key}=[a,b]"))
    return found


def render_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back (None -> null, strings quoted when needed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{render_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render_value(v) for v in value) + "]"
    text = str(value)
    if _BARE.match(text) and text.lower() not in _KEYWORDS and not _looks_numeric(text):
        return text
    return quoted(text)


def quoted(text: str) -> str:
    """A string Hydra's override grammar reads back unchanged, whatever its characters."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def path_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+\-]", "_", text) or "base"


def candidate_id(keys: Sequence[str], values: Sequence[Any]) -> str:
    """``serve.max_num_seqs-64+serve.quantization-fp8``: readable, and free of what Hydra's override
    grammar or a shell would read (no ``=``, ``,`` or quotes)."""
    return path_safe("+".join(f"{k}-{render_value(v)}" for k, v in zip(keys, values, strict=True)))


def expand(space: Mapping[str, Any]) -> List[Candidate]:
    """Every combination of the space's values, in the space's order (the last key varies fastest)."""
    flat = flatten(space)
    keys = list(flat)
    lists: List[Sequence[Any]] = [v if isinstance(v, (list, tuple)) else [v] for v in flat.values()]
    candidates = []
    for combo in itertools.product(*lists):
        overrides = tuple(f"{k}={render_value(v)}" for k, v in zip(keys, combo, strict=True))
        candidates.append(Candidate(candidate_id(keys, combo), overrides, tuple(zip(keys, combo, strict=True))))
    return candidates
