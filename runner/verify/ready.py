"""When is vLLM ready: the process is alive → /health answers 200 → /v1/models lists the
served name. Change how readiness is decided here."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Optional

from runner import logs
from runner.launch import process
from runner.record import vllm_log
from runner.record.manifest import RunFailed

log = logs.get("runner")


@dataclass(frozen=True)
class Readiness:
    health_s: Optional[float]  # from spawn to /health's 200
    ready_s: float  # from spawn to the served name listed


def status_line(text: Optional[str]) -> None:
    """A live status line on an interactive terminal (nothing in logs or pipes); None clears it."""
    if not sys.stderr.isatty():
        return
    sys.stderr.write("\r\x1b[2K" + (text or ""))
    sys.stderr.flush()


def wait_ready(
    server: process.Server,
    url: str,
    model_name: str,
    timeout_s: float,
    api_key: Optional[str] = None,
    role: str = "main",
) -> Readiness:
    """Polls until ready; RunFailed when vLLM exits first or the timeout passes."""
    try:
        return _wait(server, url, model_name, timeout_s, api_key, role)
    finally:
        status_line(None)


def _wait(
    server: process.Server, url: str, model_name: str, timeout_s: float, api_key: Optional[str], role: str
) -> Readiness:
    deadline = server.started_at + timeout_s
    health_s: Optional[float] = None
    last_stage = None
    while True:
        server.track_descendants()
        if not server.alive():
            raise RunFailed(
                "start-up", f"vLLM exited with code {server.proc.returncode} before it was ready", "vllm_exited"
            )
        if time.time() > deadline:
            raise RunFailed(
                "start-up",
                f"not ready after {timeout_s:.0f} s",
                "startup_timeout",
                f"verify.ready_timeout_s={max(2 * timeout_s, 60):.0f} (vLLM was still at: {last_stage or 'starting'})",
            )
        elapsed = time.time() - server.started_at
        stage = vllm_log.current_stage(server.log_tail(200))
        if stage and stage != last_stage:
            status_line(None)
            log.info("vllm stage", stage=stage, elapsed_s=round(elapsed, 1), server=role)
            last_stage = stage
        prefix = "(reference) " if role != "main" else ""
        status_line(f"vLLM {prefix}{last_stage or 'starting'} … {elapsed:.0f} s")
        if health_s is None:
            if process.http_ok(url + "/health"):
                health_s = round(time.time() - server.started_at, 3)
        else:
            try:
                listed = process.http_json(url + "/v1/models", timeout=5, api_key=api_key)
                if any(m.get("id") == model_name for m in listed.get("data", [])):
                    status_line(None)
                    return Readiness(health_s, round(time.time() - server.started_at, 3))
            except process.HttpError:
                pass
        time.sleep(0.5)
