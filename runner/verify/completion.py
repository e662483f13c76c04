"""The completion check: the served name is listed and a greedy completion returns tokens;
then chat (runner/verify/chat.py) when the model has a chat template."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from runner.config.schema import VerifyConfig
from runner.launch import process
from runner.record.manifest import RunFailed
from runner.verify.chat import check_chat


@dataclass(frozen=True)
class Completion:
    verification: Dict[str, Any]  # the manifest's ``verification`` section
    seconds: float
    notes: Tuple[str, ...] = ()  # for the manifest's notes (chat refused for want of a template)

    @property
    def passed(self) -> bool:
        return bool(self.verification["passed"])


def check_completion(
    url: str,
    model_name: str,
    v: VerifyConfig,
    api_key: Optional[str] = None,
    chat_template: Optional[bool] = None,
) -> Completion:
    """``chat_template``: chat.has_chat_template's answer for the served model (None: ask)."""
    t = time.time()
    listed = process.http_json(url + "/v1/models", timeout=v.request_timeout_s, api_key=api_key)
    ids = [m.get("id") for m in listed.get("data", [])]
    request = {
        "model": model_name,
        "prompt": v.prompt,
        "max_tokens": v.max_tokens,
        "temperature": 0,
        "ignore_eos": True,  # the same number of tokens on any weights, random ones included
    }
    try:
        resp = process.http_json(url + "/v1/completions", request, timeout=v.request_timeout_s, api_key=api_key)
    except process.HttpError as e:
        raise RunFailed("verify", str(e)) from None
    choice = (resp.get("choices") or [{}])[0]
    usage = resp.get("usage") or {}
    completion = {
        "prompt": v.prompt,
        "text": choice.get("text") or "",
        "finish_reason": choice.get("finish_reason"),
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
        "latency_s": round(time.time() - t, 3),
    }
    chat = check_chat(url, model_name, v, api_key, expected=chat_template)
    seconds = round(time.time() - t, 3)
    checks = {
        "models_lists_served_name": model_name in ids,
        "completion_has_tokens": completion["completion_tokens"] > 0,
        "completion_has_text": bool(completion["text"]),
    }
    if chat.available:
        checks["chat_answers"] = bool(chat.passed)
    verification = {
        "passed": all(checks.values()),
        "checks": checks,
        "models": ids,
        "completion": completion,
        "chat": chat.to_dict(),
    }
    return Completion(verification, seconds, () if chat.available else (chat.note,))
