"""The chat check: one /v1/chat/completions request answered with tokens, and the same request
streamed (server-sent events: at least one content delta, then ``data: [DONE]``).

Chat needs a chat template: transformers has no default one since 4.44, so vLLM answers chat
with 400 for a tokenizer without ``chat_template``. Such a model is verified on completions
alone, and the manifest says how to give it one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

from runner.config.schema import VerifyConfig
from runner.launch import process
from runner.record.manifest import ChatCheck

NO_TEMPLATE_NOTE = (
    "the model's tokenizer has no chat template: /v1/chat/completions is refused (HTTP 400) and "
    "only completions were verified; give it one with +serve.extra_args.chat_template=/path/to/template.jinja "
    "(vLLM's --chat-template)"
)


def has_chat_template(model_path: Optional[str], extra_args: Mapping[str, Any]) -> Optional[bool]:
    """Whether the served model will answer chat; None when it cannot be told before asking
    (a hub id vLLM resolves itself)."""
    if extra_args.get("chat_template") or extra_args.get("chat-template"):
        return True
    if not model_path or not os.path.isdir(model_path):
        return None
    where = Path(model_path)
    # newer transformers save the template beside tokenizer_config.json rather than in it
    if (where / "chat_template.jinja").is_file() or (where / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads((where / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def _request(model_name: str, v: VerifyConfig, stream: bool) -> Dict[str, Any]:
    return {
        "model": model_name,
        "messages": [{"role": "user", "content": v.prompt}],
        "max_tokens": v.max_tokens,
        "temperature": 0,
        "ignore_eos": True,  # the same number of tokens on any weights, random ones included
        "stream": stream,
    }


def sse_events(url: str, payload: Dict[str, Any], timeout: float, api_key: Optional[str] = None) -> Iterator[str]:
    """POST and yield each server-sent event's data, as it arrives; HttpError on a non-2xx answer."""
    import urllib.error  # see process.http_json
    import urllib.request

    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            for raw in resp:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if line.startswith("data:"):
                    yield line[len("data:") :].strip()
    except urllib.error.HTTPError as e:
        raise process.HttpError(f"{url}: HTTP {e.code}: {e.read()[:300].decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as e:
        raise process.HttpError(f"{url}: {getattr(e, 'reason', e)}") from None


def _streamed(url: str, model_name: str, v: VerifyConfig, api_key: Optional[str]) -> Dict[str, Any]:
    chunks, done, pieces = 0, False, []
    for data in sse_events(url, _request(model_name, v, stream=True), v.request_timeout_s, api_key):
        if data == "[DONE]":
            done = True
            break
        event = json.loads(data)
        for choice in event.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                chunks += 1
                pieces.append(content)
    return {"streamed_chunks": chunks, "stream_done": done, "streamed_text": "".join(pieces)}


def check_chat(
    url: str, model_name: str, v: VerifyConfig, api_key: Optional[str] = None, expected: Optional[bool] = True
) -> ChatCheck:
    """``expected``: has_chat_template's answer. False skips the requests; None takes a 400
    as "no template" (a note, not a failure)."""
    if expected is False:
        return ChatCheck(available=False, note=NO_TEMPLATE_NOTE)
    endpoint = url + "/v1/chat/completions"
    t = time.time()
    try:
        resp = process.http_json(endpoint, _request(model_name, v, stream=False), v.request_timeout_s, api_key)
        latency = round(time.time() - t, 3)
        t = time.time()
        streamed = _streamed(endpoint, model_name, v, api_key)
        stream_latency = round(time.time() - t, 3)
    except (process.HttpError, ValueError) as e:
        reason = str(e)
        if expected is None and "HTTP 400" in reason and "chat template" in reason.lower():
            return ChatCheck(available=False, note=NO_TEMPLATE_NOTE, reason=reason)
        return ChatCheck(available=True, passed=False, reason=reason)
    choice = (resp.get("choices") or [{}])[0]
    usage = resp.get("usage") or {}
    text = (choice.get("message") or {}).get("content") or ""
    completion_tokens = int(usage.get("completion_tokens") or 0)
    failed = [
        what
        for what, ok in (
            ("no completion tokens", completion_tokens > 0),
            ("no text", bool(text)),
            ("the stream had no content delta", streamed["streamed_chunks"] > 0),
            ("the stream did not end with [DONE]", streamed["stream_done"]),
        )
        if not ok
    ]
    return ChatCheck(
        available=True,
        passed=not failed,
        text=text,
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=completion_tokens,
        latency_s=latency,
        streamed_chunks=streamed["streamed_chunks"],
        stream_done=streamed["stream_done"],
        stream_latency_s=stream_latency,
        reason="; ".join(failed) or None,
    )
