"""Hydra's composition errors, turned into one Problem each: the key, the value, the fix.

Hydra reports a bad override as several lines plus a stack-trace hint; a user wants the one
line that says what to type instead."""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import List, Optional, Sequence

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


def problem_for_unknown_key(key: str, value) -> Problem:
    """A key the schema lacks (misspelt, or added with ``+``): the closest key it has."""
    *parent, leaf = key.split(".")
    known = _keys_at(parent)
    close = difflib.get_close_matches(leaf, known, n=1, cutoff=0.5)
    where = ".".join(parent) or "the config"
    fix = ".".join([*parent, close[0]]) + f"={value}" if close else f"one of {where}'s keys: {', '.join(known)}"
    return Problem(key, value, f"no such key in {where}", fix)


def _grammar_problem(reason: str, near: str, argv: Sequence[str]) -> Optional[Problem]:
    """Hydra's parser names the text it stumbled on, not the override: find the override."""
    for arg in argv:
        if "=" not in arg or arg.startswith("-") or (near and near not in arg):
            continue
        key, value = arg.split("=", 1)
        plain = key.lstrip("+~")
        if plain in ("serve.extra_args", "hw.env") or plain.startswith(("serve.extra_args.", "hw.env.")):
            group = "serve.extra_args" if plain.startswith("serve") else "hw.env"
            return Problem(
                plain, value, reason, f"+{group}.NAME=VALUE, one override per entry (NAME: letters, digits, _)"
            )
        quoted = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return Problem(plain, value, f"{reason}; Hydra reads brackets, commas and quotes as syntax", f"{key}={quoted}")
    return None


def problem_from_compose_error(exc: BaseException, argv: Sequence[str] = ()) -> Problem:
    text = _chain(exc)
    if m := re.search(
        r"((?:no viable alternative|mismatched input|extraneous input|token recognition error)"
        r"[^\n]*?'(.*)')",
        text,
    ):
        found = _grammar_problem(m.group(1), m.group(2)[:20], argv)
        if found is not None:
            return found

    if m := re.search(r"Multiple values for (\S+)", text):
        return Problem(m.group(1), "?", "given twice", f"give {m.group(1)} once")

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
        value = (re.search(rf"{re.escape(key)}=(\S+)", text) or [None, "?"])[1]
        return problem_for_unknown_key(key, value)

    if m := re.search(
        r"(Interpolation key '[^']*' not found|Environment variable '[^']*' not found|"
        r"Unsupported interpolation type \w+|Could not resolve [^\n]*)",
        text,
    ):
        key = full_key or "config"
        return Problem(
            key,
            "${…}",
            f"the interpolation does not resolve ({m.group(1)})",
            f"{key}=<a plain value>, or define what it names",
        )

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


class DuplicateOverride(ValueError):
    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


def duplicate_override(argv: Sequence[str]) -> Optional[DuplicateOverride]:
    """The same key (or config group) given twice on the command line: Hydra keeps the last."""
    seen: dict = {}
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        if key in seen and seen[key] != value:
            return DuplicateOverride(
                Problem(
                    key, f"{seen[key]} and {value}", "given twice (Hydra would keep the last)", f"{key}={value} once"
                )
            )
        seen[key] = value
    return None
