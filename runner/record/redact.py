"""Secrets never reach a file the runner writes: environment values whose names look
secret, and the values of secret-bearing flags in argv, are replaced."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping

from runner.plan.secret_flags import MASK, SECRET_OPTIONS

# Whole words only: HF_TOKEN, VLLM_API_KEY, api_key, aws_secret_access_key — not
# max_num_batched_tokens, nor api_key_env (which names a variable, not its value).
_SECRET_NAME = re.compile(r"(^|_)(TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)", re.IGNORECASE)
_NAMES_A_VARIABLE = re.compile(r"_ENV$", re.IGNORECASE)
# A model's shape is not a secret: eos_token_id, num_key_value_heads (a replay needs them as they were).
_MODEL_SHAPE = re.compile(r"(_TOKEN_IDS?$|KEY_VALUE)", re.IGNORECASE)
# Any of vLLM's secret options (or the SSL key password) found in an argv is masked.
_SECRET_FLAGS = {"--" + name.replace("_", "-") for name in (*SECRET_OPTIONS, "ssl_keyfile_password")}


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not _NAMES_A_VARIABLE.search(name) and not _MODEL_SHAPE.search(name)


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
        elif "=" in arg and (
            arg.split("=", 1)[0] in _SECRET_FLAGS or is_secret_name(arg.split("=", 1)[0].replace("-", "_"))
        ):
            # --api-key=X, and Hydra overrides such as +serve.extra_args.api_key=X
            out.append(arg.split("=", 1)[0] + "=" + MASK)
        else:
            out.append(arg)
    return out


def redact_tree(obj: Any) -> Any:
    """A copy of a config tree with the values of secret-looking keys masked."""
    if isinstance(obj, Mapping):
        return {k: (MASK if is_secret_name(str(k)) and obj[k] else redact_tree(obj[k])) for k in obj}
    if isinstance(obj, list):
        return [redact_tree(v) for v in obj]
    return obj


def secret_values(obj: Any) -> List[str]:
    """The values redact_tree would mask, for scrubbing files written by others."""
    found: List[str] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if is_secret_name(str(k)) and isinstance(v, (str, int)) and str(v):
                found.append(str(v))
            else:
                found += secret_values(v)
    elif isinstance(obj, list):
        for v in obj:
            found += secret_values(v)
    return found


def scrub_files(directory: Path, secrets: Iterable[str]) -> None:
    """Replace secret values in every file of a directory (Hydra's .hydra/ copies)."""
    secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
    if not secrets or not Path(directory).is_dir():
        return
    for path in Path(directory).iterdir():
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        cleaned = text
        for secret in secrets:
            cleaned = cleaned.replace(secret, MASK)
        if cleaned != text:
            path.write_text(cleaned)
