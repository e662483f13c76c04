"""Attach to a Ray cluster and print what it holds, as one marked JSON line on stdout.

Run as ``python -m runner.preflight.ray_attach ADDRESS`` by runner.preflight.ray, in a
subprocess under a timeout: a dead or wrong address then costs the timeout, not a hang (Ray's
own client retries its GCS for more than a minute before it gives up). Stdlib and ray only,
so it runs under any interpreter that has ray, with the runner's parent directory on
PYTHONPATH. Exits 0 whatever happens; the line says what did.
"""

from __future__ import annotations

import json
import sys
import time

MARK = "RUNNER_RAY_CLUSTER "


def _say(record: dict) -> None:
    print(MARK + json.dumps(record, default=str), flush=True)


def main(address: str) -> None:
    started = time.time()
    try:
        import ray  # not at the top: a missing ray is an answer to report, not a crash
    except Exception as exc:
        _say({"error": "import", "detail": repr(exc)})
        return
    try:
        ray.init(address=address, ignore_reinit_error=True, logging_level="ERROR", log_to_driver=False)
        _say(
            {
                "ray_version": ray.__version__,
                "nodes": ray.nodes(),
                "resources": ray.cluster_resources(),
                "gcs_address": ray.get_runtime_context().gcs_address,
                "connect_s": round(time.time() - started, 2),
            }
        )
    except Exception as exc:
        _say({"error": "connect", "detail": f"{type(exc).__name__}: {exc}"})
    try:
        ray.shutdown()
    except Exception:
        pass


if __name__ == "__main__":
    main(sys.argv[1])
