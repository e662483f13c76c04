"""``python -m tests.probe.modules_after_plan RUN_DIR MODULE…``: ``python -m runner hw=cpu-2
model=tiny-llama mode=plan`` in this process, then one line on stderr: which of the MODULEs it
imported (tests/probe/test_versions.py: the plan's start does not pay for importlib.metadata)."""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    run_dir, modules = sys.argv[1], sys.argv[2:]
    sys.argv = ["runner", "hw=cpu-2", "model=tiny-llama", "mode=plan", f"hydra.run.dir={run_dir}"]
    try:
        runpy.run_module("runner", run_name="__main__")
    finally:
        print("imported:", ",".join(m for m in modules if m in sys.modules), file=sys.stderr)


if __name__ == "__main__":
    main()
