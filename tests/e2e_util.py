"""Running the real runner as a user does: a subprocess of `python -m runner`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from runner.launch.process import free_port  # noqa: F401  (the tests' import point)

ROOT = Path(__file__).resolve().parents[1]


def run_runner(
    args: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 1200
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load_manifest(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "manifest.json").read_text())


def processes_mentioning(needle: str) -> List[str]:
    """Command lines of live processes that mention needle (a port, a run dir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmd and state != "Z" and int(pid) != os.getpid():
            found.append(cmd)
    return found
