"""The checkpoint manifest: what ran, on what, how it was verified, how long it took, and
the verdict. Written atomically (temp file + rename), so a crash never leaves half a file;
``runner/record/manifest.schema.json`` is its contract."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from runner.probe import versions

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
STATUSES = ("verified", "failed", "rejected", "planned")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a manifest is for the team to read
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def dist_version(name: str) -> Optional[str]:
    return versions.dist_version(name)  # importlib.metadata.version's answer, without importing it


def runner_side_versions() -> Dict[str, Optional[str]]:
    from runner import __version__

    return {
        "python": platform.python_version(),
        "runner": __version__,
        "hydra-core": dist_version("hydra-core"),
        "omegaconf": dist_version("omegaconf"),
        "structlog": dist_version("structlog"),
        "nvidia-ml-py": dist_version("nvidia-ml-py"),
        "platform": platform.platform(),
        "executable": sys.executable,
    }


class RunFailed(Exception):
    """A stage could not do its part: where, why, and (when known) the cause and the fix."""

    def __init__(self, stage: str, reason: str, cause: Optional[str] = None, fix: Optional[str] = None):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason, self.cause, self.fix = stage, reason, cause, fix
        self.sections: Dict[str, Any] = {}  # manifest sections the failing stage still produced


@dataclass(frozen=True)
class Failure:
    """The manifest's ``failure`` section."""

    stage: str
    reason: str
    cause: str
    fix: str
    summary: Optional[str] = None
    evidence: Optional[str] = None
    log_tail: Optional[str] = None


@dataclass(frozen=True)
class Timings:
    """Seconds: overhead/total from the interpreter's start, spawn from the run's, the server's
    stages from its spawn; a stage that did not run is left out."""

    overhead_before_spawn_s: Optional[float] = None
    spawn_s: Optional[float] = None
    collective_s: Optional[float] = None
    health_s: Optional[float] = None
    ready_s: Optional[float] = None
    verify_s: Optional[float] = None
    bench_s: Optional[float] = None
    total_s: Optional[float] = None

    def to_dict(self) -> Dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ChatCheck:
    """The ``verification.chat`` record: one chat completion and the same request streamed.
    ``available`` is False for a model without a chat template (vLLM refuses chat with 400):
    then only ``note`` says how to give it one."""

    available: bool
    passed: Optional[bool] = None
    text: Optional[str] = None
    finish_reason: Optional[str] = None
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    latency_s: Optional[float] = None
    streamed_chunks: Optional[int] = None  # server-sent events that carried content
    stream_done: Optional[bool] = None  # the stream ended with data: [DONE]
    stream_latency_s: Optional[float] = None
    reason: Optional[str] = None  # why it failed (or, unavailable, vLLM's answer)
    note: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


# Sections that a probed-and-planned run always writes, null or not.
_PLANNED_SECTIONS = ("config", "plan", "hardware", "model", "placement", "fit")


@dataclass(frozen=True)
class Manifest:
    """One run's record, as ``manifest.json`` holds it (the schema is checked against these
    fields in tests/record/test_manifest_schema.py). Sections of stages that did not run are None
    and left out of the file."""

    schema_version: int
    status: str
    exit_code: int
    mode: str
    started_at: str
    finished_at: str
    run_dir: str
    problems: List[Dict[str, Any]]
    notes: List[str]
    versions: Dict[str, Any]
    command: Optional[List[str]] = None
    config: Optional[Dict[str, Any]] = None
    plan: Optional[Dict[str, Any]] = None
    hardware: Optional[Dict[str, Any]] = None
    model: Optional[Dict[str, Any]] = None
    placement: Optional[Dict[str, Any]] = None
    fit: Optional[Dict[str, Any]] = None
    cluster: Optional[Dict[str, Any]] = None
    doctor: Optional[List[Dict[str, Any]]] = None
    collective: Optional[Dict[str, Any]] = None
    verification: Optional[Dict[str, Any]] = None
    vllm_reported: Optional[Dict[str, Any]] = None
    nccl_transport: Optional[Dict[str, Any]] = None
    fit_check: Optional[Dict[str, Any]] = None
    performance: Optional[Dict[str, Any]] = None
    bench: Optional[Dict[str, Any]] = None
    timings: Optional[Timings] = None
    failure: Optional[Failure] = None
    teardown: Optional[Dict[str, Any]] = None
    reference_teardown: Optional[Dict[str, Any]] = None
    stopped_by: Optional[str] = None
    replayed_from: Optional[Dict[str, Any]] = None  # replay=: the run this one replays

    def to_dict(self) -> Dict[str, Any]:
        planned = self.plan is not None
        out: Dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and not (planned and f.name in _PLANNED_SECTIONS):
                continue
            if isinstance(value, Timings):
                value = value.to_dict()
            elif isinstance(value, Failure):
                value = asdict(value)
            out[f.name] = value
        return out

    def write(self, run_dir: Path) -> Dict[str, Any]:
        record = self.to_dict()
        write_json_atomic(Path(run_dir) / "manifest.json", record)
        return record


def build_manifest(
    *,
    status: str,
    exit_code: int,
    mode: str,
    run_dir: Path,
    started_at: str,
    command: List[str],
    versions: Dict[str, Any],
    problems: Sequence[Dict[str, Any]] = (),
    notes: Sequence[str] = (),
    **sections: Any,
) -> Manifest:
    """The one place a manifest is assembled: the stages' records in, the file's shape out."""
    return Manifest(
        schema_version=SCHEMA_VERSION,
        status=status,
        exit_code=exit_code,
        mode=mode,
        started_at=started_at,
        finished_at=now_iso(),
        run_dir=str(run_dir),
        command=list(command),
        versions=dict(versions),
        problems=list(problems),
        notes=list(notes),
        **sections,
    )
