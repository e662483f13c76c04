"""Running one of the runner's own modules under another interpreter (``launch.python``, the
one that has vLLM, which need not be the runner's): ``python -m runner.<pkg>.<module>`` with
the runner's parent directory on PYTHONPATH. Such modules stay stdlib-only at import time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Mapping, Optional

# the directory that holds the ``runner`` package
RUNNER_ROOT = str(Path(__file__).resolve().parents[2])


def with_runner_path(env: Optional[Mapping[str, str]] = None) -> dict:
    """env (default: this process's) with the runner importable, ahead of what PYTHONPATH had."""
    env = dict(os.environ if env is None else env)
    rest = env.get("PYTHONPATH")
    env["PYTHONPATH"] = RUNNER_ROOT + (os.pathsep + rest if rest else "")
    return env


def module_argv(python: str, module: str, *args: str) -> List[str]:
    return [python, "-m", module, *args]
