"""This machine's own preflight checks before a launch: is the port free, can the model's
cache directory be written. Each failure is a Problem with the fix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

from runner.config.schema import RunnerConfig
from runner.launch import process
from runner.probe import models
from runner.problems import Problem


def writable_dir(path: Path) -> bool:
    """Could the runner create and write path? Asked without creating anything."""
    path = path.absolute()
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def machine_problems(cfg: RunnerConfig) -> List[Problem]:
    found = []
    if 0 < cfg.serve.port < 65536 and process.port_in_use(cfg.serve.host, cfg.serve.port):
        found.append(
            Problem(
                "serve.port",
                cfg.serve.port,
                "something already listens there",
                f"serve.port={cfg.serve.port + 1}, or stop the other server",
            )
        )
    if not cfg.model.path and not writable_dir(models.cache_root(cfg.cache_dir)):
        found.append(
            Problem(
                "cache_dir",
                cfg.cache_dir,
                "cannot be created or written (the model is written there)",
                "cache_dir=~/.cache/vllm-tp-runner",
            )
        )
    return found
