"""The real command line, many times over, without paying Python's start-up each time.

Each run is ``runner.app.main()`` in a forked child of a process that has already imported the
runner: its own argv, environment, stdout/stderr, exit code and Hydra state, exactly as
``python -m runner …`` would have them, at a fraction of the cost (the corpus runs ~200 of them)."""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    run_dir: Path

    @property
    def errors(self) -> List[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]


def _child(argv: Sequence[str], env: Mapping[str, str], out: Path, err: Path) -> None:
    """Never returns: the child's exit status is the runner's exit code."""
    code = 1
    try:
        for fd, path in ((1, out), (2, err)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(REPO)
        sys.argv = ["runner", *argv]
        from runner import app

        app.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _streams(run_dir: Path) -> Tuple[Path, Path]:
    """Beside the run dir when that can be written, else in a folder of their own."""
    where = run_dir.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        (where / ".probe").touch()
    except OSError:
        where = Path(os.environ.get("TMPDIR", "/tmp")) / "cli_batch_streams" / str(abs(hash(str(run_dir))))
        where.mkdir(parents=True, exist_ok=True)
    return where / f"{run_dir.name}.out", where / f"{run_dir.name}.err"


def run_many(
    jobs: Sequence[Tuple[Sequence[str], Mapping[str, str], Path]], parallel: Optional[int] = None
) -> List[Outcome]:
    """jobs: (overrides, environment, run dir); each run's hydra.run.dir is its run dir."""
    import runner.app  # noqa: F401  (imported once, before the forks)
    import runner.pipeline  # noqa: F401
    import runner.plan.build  # noqa: F401

    parallel = parallel or max(1, os.cpu_count() or 1)
    results: Dict[int, Outcome] = {}
    running: Dict[int, Tuple[int, Path]] = {}
    pending = list(enumerate(jobs))
    while pending or running:
        while pending and len(running) < parallel:
            i, (overrides, env, run_dir) = pending.pop(0)
            out, err = _streams(run_dir)
            argv = [*overrides, f"hydra.run.dir={run_dir}"]
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(argv, env, out, err)
            running[pid] = (i, run_dir)
        pid, status = os.wait()
        if pid not in running:
            continue
        i, run_dir = running.pop(pid)
        out, err = _streams(run_dir)
        code = os.waitstatus_to_exitcode(status)
        results[i] = Outcome(code, out.read_text(errors="replace"), err.read_text(errors="replace"), run_dir)
    return [results[i] for i in range(len(jobs))]


def clean_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "VLLM_TP_RUNNER_CACHE")}
    env.update(extra or {})
    return env


def assert_plan_contract(out: Outcome, context: object) -> None:
    """What every mode=plan run promises, whatever its input: exit 0 or 2, never a traceback, a
    manifest whose status says which, and on 2 every error line naming its fix."""
    assert out.code in (0, 2), (context, out.code, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, (context, out.stderr[-3000:])
    manifest = json.loads((out.run_dir / "manifest.json").read_text())
    assert manifest["status"] == ("planned" if out.code == 0 else "rejected"), context
    if out.code == 2:
        assert out.errors and all("Fix: " in line for line in out.errors), (context, out.stderr[-2000:])
