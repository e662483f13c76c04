"""This machine's own preflight checks before a launch: is the port free, can the model's
cache directory be written. Each failure is a Problem with the fix."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import List, Optional

from runner.config import validate
from runner.config.schema import RunnerConfig
from runner.launch import process
from runner.probe import models
from runner.problems import Problem


def writable_dir(path: Path) -> bool:
    """Could the runner create and write path? Found by trying (os.access says yes to root on a
    read-only or pseudo file system), leaving nothing behind."""
    return validate.creatable_dir_problem(path) is None


def host_problem(host: str) -> Optional[Problem]:
    """serve.host must resolve, and to an address of this machine (vLLM binds to it)."""
    if host in ("", "0.0.0.0", "::"):
        return None
    fix = "serve.host=127.0.0.1 (this machine only), or serve.host=0.0.0.0 (every interface)"
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as e:
        return Problem("serve.host", host, f"does not resolve ({getattr(e, 'strerror', None) or e})", fix)
    for family, _, _, _, address in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((address[0], 0, *address[2:]))
            return None
        except OSError:
            continue
    shown = ", ".join(dict.fromkeys(a[4][0] for a in infos))
    return Problem("serve.host", host, f"not an address of this machine ({shown}); vLLM could not bind to it", fix)


def machine_problems(cfg: RunnerConfig) -> List[Problem]:
    found = []
    host = host_problem(cfg.serve.host)
    if host is not None:
        found.append(host)
    elif 0 < cfg.serve.port < 65536 and process.port_in_use(cfg.serve.host, cfg.serve.port):
        found.append(
            Problem(
                "serve.port",
                cfg.serve.port,
                "something already listens there",
                f"serve.port={cfg.serve.port + 1}, or stop the other server",
            )
        )
    if not cfg.model.path and not writable_dir(models.cache_root(cfg.cache_dir) / "models"):
        found.append(
            Problem(
                "cache_dir",
                cfg.cache_dir,
                "cannot be created or written (the model is written there)",
                "cache_dir=~/.cache/vllm-tp-runner",
            )
        )
    return found
