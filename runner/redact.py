"""Secrets never reach a file the runner writes: environment values whose names look
secret, and the values of secret-bearing flags in argv, are replaced."""

from __future__ import annotations

import re
from typing import Iterable, List, Mapping, Dict

MASK = "***redacted***"
_SECRET_NAME = re.compile(r"(_TOKEN|_KEY|_SECRET|PASSWORD|^HF_TOKEN$|CREDENTIALS)", re.IGNORECASE)
_SECRET_FLAGS = {"--api-key", "--hf-token", "--ssl-keyfile-password"}


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redact_env(env: Mapping[str, str]) -> Dict[str, str]:
    return {k: (MASK if is_secret_name(k) and v else v) for k, v in env.items()}


def redact_argv(argv: Iterable[str]) -> List[str]:
    out: List[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
        elif arg in _SECRET_FLAGS:
            out.append(arg)
            hide_next = True
        elif "=" in arg and arg.split("=", 1)[0] in _SECRET_FLAGS:
            out.append(arg.split("=", 1)[0] + "=" + MASK)
        else:
            out.append(arg)
    return out
