"""Processes and HTTP: the second seam that touches the outside world.

vLLM runs in a session (and process group) of its own, so the terminal's Ctrl-C reaches
only the runner, which then stops the whole group: SIGTERM, a grace period, SIGKILL, and a
check that nothing of the group survives. Its output goes straight to ``vllm.log`` (no pipe
the runner must keep draining), and the readiness wait reads that file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence


class HttpError(RuntimeError):
    pass


def http_json(url: str, payload: Optional[dict] = None, timeout: float = 10.0, api_key: Optional[str] = None) -> Any:
    """GET (or POST when payload is given) and decode JSON; HttpError on anything else."""
    import urllib.error  # urllib.request pulls in http and email: only runs that talk to vLLM pay
    import urllib.request

    data = json.dumps(payload).encode() if payload is not None else None
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        raise HttpError(f"{url}: HTTP {e.code}: {e.read()[:300].decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as e:
        raise HttpError(f"{url}: {getattr(e, 'reason', e)}") from None
    try:
        return json.loads(body) if body else None
    except ValueError:
        raise HttpError(f"{url}: not JSON: {body[:200]!r}") from None


def http_ok(url: str, timeout: float = 2.0) -> bool:
    import urllib.error  # see http_json
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def port_in_use(host: str, port: int) -> bool:
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    family = socket.AF_INET6 if ":" in probe_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((probe_host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _state_and_group(pid: str) -> Optional[tuple]:
    """(state letter, process group) from /proc/PID/stat; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[2])


def _alive(info: Optional[tuple]) -> bool:
    return info is not None and info[0] not in ("Z", "X")  # zombies are already dead


def group_members(pgid: int) -> List[int]:
    """Live processes whose process group is pgid, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _state_and_group(entry)
            if _alive(info) and info[1] == pgid:
                members.append(int(entry))
    return members


@dataclass
class StopReport:
    signal: str
    seconds: float
    exit_code: Optional[int]
    survivors_after_term: List[int] = field(default_factory=list)
    survivors: List[int] = field(default_factory=list)  # after SIGKILL: must be empty


class Server:
    """A vLLM server process group whose output goes to a log file."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path, echo: bool = False):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab", buffering=0)
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pgid = self.proc.pid
        self.known_pids: set = set()  # every descendant seen, in case one leaves the group
        self._echo_stop = threading.Event()
        if echo:
            threading.Thread(target=self._echo, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def track_descendants(self) -> None:
        try:
            import psutil

            self.known_pids.update(p.pid for p in psutil.Process(self.pid).children(recursive=True))
        except Exception:  # it exited meanwhile, or psutil is absent: the group scan remains
            pass

    def survivors(self) -> List[int]:
        """Group members and known descendants still alive (zombies don't count)."""
        alive = set(group_members(self.pgid))
        alive.update(pid for pid in self.known_pids if _alive(_state_and_group(str(pid))))
        return sorted(alive)

    def _echo(self) -> None:
        with open(self.log_path, "rb") as f:
            while not self._echo_stop.is_set():
                line = f.readline()
                if line:
                    os.write(1, line)
                else:
                    time.sleep(0.2)

    def log_tail(self, lines: int = 40, window: int = 64 * 1024) -> str:
        """The last lines of vllm.log, read from its last ``window`` bytes."""
        return file_tail(self.log_path, lines, window)

    def stop(self, grace_s: float = 20.0) -> StopReport:
        """Stop the server the way vLLM expects, then make sure the whole group is gone.

        SIGTERM goes to the API server alone first: it shuts its engine and workers down in
        order (a group-wide SIGTERM kills the engine under it and it logs EngineDeadError).
        Whatever of the group outlives the grace period gets SIGTERM, then SIGKILL."""
        t0 = time.time()
        self.track_descendants()
        sent = "none"
        if self.alive():
            sent = "SIGTERM"
            self.proc.send_signal(signal.SIGTERM)
        self._wait_gone(t0 + grace_s)
        after_term = self.survivors()
        if after_term:
            sent = "SIGTERM (group)"
            killpg(self.pgid, signal.SIGTERM)
            self._wait_gone(time.time() + min(grace_s, 5.0))
        if self.survivors() or self.alive():
            sent = "SIGKILL"
            killpg(self.pgid, signal.SIGKILL)
            for pid in self.survivors():  # one that left the group still goes
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._wait_gone(time.time() + 10.0)
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._echo_stop.set()
        self._log.close()
        return StopReport(
            signal=sent,
            seconds=round(time.time() - t0, 2),
            exit_code=code,
            survivors_after_term=after_term,
            survivors=self.survivors(),
        )

    def _wait_gone(self, deadline: float) -> None:
        while time.time() < deadline and (self.proc.poll() is None or self.survivors()):
            time.sleep(0.2)


def file_tail(path: Path, lines: int = 40, window: int = 64 * 1024) -> str:
    """The last lines of a file, read from its last ``window`` bytes ("" when unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - window, 0))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def killpg(pgid: int, sig: int) -> None:
    """Signal a process group that may already be gone (or, for a stranger's, not ours)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_json(argv: Sequence[str], env: Mapping[str, str], timeout: float) -> dict:
    """Run a helper in its own session and return the JSON object its last line prints.

    Past the timeout, or on Ctrl-C, its whole process group is killed: a hung collective
    leaves no ranks behind."""
    proc = subprocess.Popen(
        list(argv), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"ok": False, "hung": True, "error": f"no answer in {timeout:g} s; killed"}
    except BaseException:
        killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        if proc.poll() is None:
            killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (err or out).strip().splitlines()[-3:]
        return {"ok": False, "error": f"exit code {proc.returncode}: {' | '.join(tail)[:400] or 'no output'}"}
