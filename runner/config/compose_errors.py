"""Hydra's composition errors, turned into one Problem each: the key, the value, the fix.

Hydra reports a bad override as several lines plus a stack-trace hint; a user wants the one
line that says what to type instead."""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import List, Optional

from runner.config.schema import RunnerConfig
from runner.problems import Problem


def _chain(exc: BaseException) -> str:
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def _node(path: List[str]):
    """The schema dataclass at a dotted path (['serve'] -> ServeConfig)."""
    node = RunnerConfig
    for name in path:
        node = typing.get_type_hints(node)[name]
    return node


def _keys_at(path: List[str]) -> List[str]:
    try:
        node = _node(path)
    except (KeyError, TypeError):
        return []
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def problem_from_compose_error(exc: BaseException) -> Problem:
    text = _chain(exc)
    full_key = (re.search(r"full_key: (\S+)", text) or [None, None])[1]

    if m := re.search(r"Could not find '([^'/]+)/([^']+)'", text):
        group, option = m.groups()
        listed = re.search(r"Available options in '[^']+':\n((?:\t.*\n?)+)", text)
        options = [
            o.strip()
            for o in (listed.group(1).splitlines() if listed else [])
            if o.strip() and not o.strip().startswith("base_")
        ]
        close = difflib.get_close_matches(option, options, n=1)
        prefix = "+" if group == "recipe" else ""  # recipes are added to the defaults list
        fix = (
            f"{prefix}{group}={close[0]}"
            if close
            else f"{prefix}{group}=" + "|".join(options)
            if options
            else f"add {group}/{option}.yaml to a config dir and pass -cd DIR"
        )
        if options and close:
            fix += f" (options: {', '.join(options)})"
        return Problem(group, option, f"no {group} named '{option}'", fix)

    if m := re.search(r"Key '([^']+)' (?:not in|is not in struct)", text):
        key = full_key or m.group(1)
        *parent, leaf = key.split(".")
        known = _keys_at(parent)
        close = difflib.get_close_matches(leaf, known, n=1, cutoff=0.5)
        where = ".".join(parent) or "the config"
        value = (re.search(rf"{re.escape(key)}=(\S+)", text) or [None, "?"])[1]
        fix = ".".join([*parent, close[0]]) + f"={value}" if close else f"one of {where}'s keys: {', '.join(known)}"
        return Problem(key, value, f"no such key in {where}", fix)

    if m := re.search(r"Invalid value '([^']*)', expected one of \[([^\]]*)\]", text):
        value, choices = m.group(1), [c.strip() for c in m.group(2).split(",")]
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.3)
        key = full_key or "value"
        fix = f"{key}={close[0]}" if close else f"{key}=" + "|".join(choices)
        return Problem(key, value, f"not one of {', '.join(choices)}", fix)

    if m := re.search(r"Value '([^']*)' of type '[^']+' could not be converted to (\w+)", text):
        key = full_key or "value"
        return Problem(key, m.group(1), f"not a valid {m.group(2).lower()}", f"{key}=<{m.group(2).lower()}>")

    if m := re.search(r"Error parsing override '([^']*)'", text):
        return Problem(
            "override", m.group(1), "not a key=value override", f"{m.group(1)}=VALUE (Hydra override syntax)"
        )

    first = next((line for line in text.splitlines() if line.strip()), repr(exc))
    return Problem("config", "", first.strip(), "check the overrides against `python -m runner --cfg job`")


def hydra_dir_override(argv: List[str], multirun: bool) -> Optional[str]:
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    for arg in argv:
        if arg.startswith(key):
            return arg[len(key) :]
    return None
