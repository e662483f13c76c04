"""``model.path=org/name[@revision]``: a model on the Hugging Face hub, read through its cache.

The planner needs only config.json, so that is what is resolved before launch: from the local
cache first (HF_HUB_CACHE), from the hub only when downloads are allowed (HF_HUB_OFFLINE unset).
A gated or missing repo, a missing token or code the repo would run are refused here, in one
line each, instead of minutes later in vLLM's log. The token is huggingface_hub's own (HF_TOKEN
or its login file); the runner never copies it anywhere."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from runner.problems import Problem

# org/name as the hub spells repo ids; anything after "@" is a branch, tag or commit.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")

# What vLLM reads at launch; the rest of a repo (other formats, pictures) is left on the hub.
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.py"]


@dataclass(frozen=True)
class HubId:
    repo_id: str
    revision: Optional[str]

    @property
    def download_command(self) -> str:
        return f"hf download {self.repo_id}" + (f" --revision {self.revision}" if self.revision else "")

    @property
    def url(self) -> str:
        from huggingface_hub import constants

        return f"{constants.ENDPOINT}/{self.repo_id}"


def parse(path: Optional[str], revision: Optional[str] = None) -> Optional[HubId]:
    """The hub id in ``model.path``, or None for a directory (existing or meant to be one)."""
    if not path or path.startswith(("/", ".", "~")) or os.path.isdir(os.path.expanduser(path)):
        return None
    m = _HUB_ID.match(path)
    if not m:
        return None
    return HubId(m.group("repo"), m.group("rev") or revision)


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _has_token() -> bool:
    from huggingface_hub import get_token

    return bool(get_token())


def cached_config(hub: HubId) -> Optional[str]:
    """config.json's path in the local cache, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub.repo_id, "config.json", revision=hub.revision)
    return found if isinstance(found, str) else None


def snapshot_dir(hub: HubId) -> Optional[str]:
    """The cached snapshot directory of the revision, when its config.json is there."""
    found = cached_config(hub)
    return os.path.dirname(found) if found else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__


def _refusal(hub: HubId, exc: BaseException) -> Problem:
    """The hub's answer as one line with a fix that works (huggingface_hub maps the answer's
    X-Error-Code header to these exception types)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{hub.repo_id}@{hub.revision}" if hub.revision else hub.repo_id
    if isinstance(exc, GatedRepoError):  # a subclass of RepositoryNotFoundError: first
        if not _has_token():
            return Problem(
                "model.path",
                where,
                "a gated repo and no hub token",
                f"accept its terms at {hub.url}, then export HF_TOKEN=<a read token of that account>",
            )
        return Problem(
            "model.path",
            where,
            "a gated repo the token in HF_TOKEN has no access to",
            f"request access at {hub.url} with the token's account, or export HF_TOKEN=<a token that has it>",
        )
    if isinstance(exc, RevisionNotFoundError):
        return Problem(
            "model.revision", hub.revision, f"{hub.repo_id} has no such revision", "a branch, tag or commit of the repo"
        )
    if isinstance(exc, RepositoryNotFoundError):
        fix = "the repo's exact org/name from its hub page"
        if not _has_token():
            fix += ", or export HF_TOKEN=<token> if it is private"
        return Problem("model.path", where, "no such repo on the hub (or a private one)", fix)
    if isinstance(exc, RemoteEntryNotFoundError):
        return Problem("model.path", where, "the repo has no config.json", "a repo of a transformers-format model")
    return Problem(
        "model.path",
        where,
        f"not in the hub cache and the hub did not answer ({_first_line(exc)})",
        f"{hub.download_command} where the hub is reachable and set HF_HUB_CACHE to that cache, or model.path=DIR",
    )


def resolve_config(hub: HubId) -> Tuple[Optional[str], List[Problem]]:
    """config.json's local path (cached, or downloaded alone when allowed), or why not."""
    found = cached_config(hub)
    if found:
        return found, []
    where = f"{hub.repo_id}@{hub.revision}" if hub.revision else hub.repo_id
    if offline():
        from huggingface_hub import constants

        return None, [
            Problem(
                "model.path",
                where,
                f"not in the hub cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set",
                f"unset HF_HUB_OFFLINE to download it, or {hub.download_command} where the hub is reachable",
            )
        ]
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(hub.repo_id, "config.json", revision=hub.revision), []
    except Exception as exc:  # every hub answer and network failure becomes one line
        return None, [_refusal(hub, exc)]


def remote_code_problem(hf_config: Dict[str, Any], trusted: bool, where: Optional[str]) -> Optional[Problem]:
    """A config.json whose architecture exists only as code in the repo (``auto_map``) and a
    model type transformers does not know: vLLM would refuse it without trust_remote_code."""
    if trusted or not hf_config.get("auto_map"):
        return None
    model_type = hf_config.get("model_type")
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except Exception:  # no transformers here (a planning-only install): auto_map alone decides
        CONFIG_MAPPING_NAMES = {}
    if model_type and model_type in CONFIG_MAPPING_NAMES:
        return None  # transformers has the architecture itself; the repo's code is not needed
    return Problem(
        "serve.trust_remote_code",
        False,
        f"{where or 'the model'}'s config.json maps model_type {model_type!r} to code in the repo (auto_map)",
        "serve.trust_remote_code=true, once you have read that code",
    )


def inspect(hub: HubId) -> Tuple[Optional[Dict[str, Any]], List[Problem]]:
    """The hub model's config.json (the planner's numbers), or why it cannot be had."""
    import json

    path, problems = resolve_config(hub)
    if path is None:
        return None, problems
    try:
        with open(path) as f:
            return json.load(f), []
    except (OSError, ValueError) as e:
        return None, [
            Problem(
                "model.path",
                hub.repo_id,
                f"the cached config.json is unreadable ({_first_line(e)})",
                f"{hub.download_command} --force-download",
            )
        ]


def download(hub: HubId) -> str:
    """The snapshot vLLM will read: fetched (with huggingface_hub's progress bars; files
    already cached are skipped) when downloads are allowed, else the cached one as it is."""
    from huggingface_hub import snapshot_download

    # Online even when a snapshot folder exists: planning may have fetched config.json alone.
    return snapshot_download(
        hub.repo_id, revision=hub.revision, allow_patterns=SNAPSHOT_PATTERNS, local_files_only=offline()
    )
