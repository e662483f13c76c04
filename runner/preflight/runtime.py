"""Facts about the interpreter that runs vLLM (not the runner's): package versions, what torch
says of CUDA and NCCL, and — for mode=doctor — whether vLLM imports and knows the architecture.

Run as ``python -m runner.preflight.runtime [--vllm-version | --has-distribution NAME |
--import-vllm [ARCH]]`` under ``launch.python`` (see runner/launch/pyenv.py). Stdlib-only at
import time: torch and vLLM are imported only by the queries that report on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib import metadata
from typing import Any, Dict, Optional

from runner.probe.versions import installed_vllm

DOCTOR_PREFIX = "RUNNER-DOCTOR "


def dist_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def runtime_facts() -> Dict[str, Any]:
    """Package versions, then torch's CUDA and NCCL (torch is slow to import: the run asks this
    while vLLM loads, not before it starts)."""
    dist, version = installed_vllm()
    out: Dict[str, Any] = {
        "python": platform.python_version(),
        "vllm": version,
        "vllm_distribution": dist,
        "transformers": dist_version("transformers"),
        "flashinfer": dist_version("flashinfer-python"),
    }
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.version.cuda
        try:
            nccl = torch.cuda.nccl.version() if torch.version.cuda else None
            out["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
        except Exception:
            out["nccl"] = None
    except Exception as e:
        out["torch_error"] = f"{type(e).__name__}: {e}"
    return out


def vllm_import_facts(architecture: str) -> Dict[str, Any]:
    """What a person checks with ``python -c "import vllm"``, plus the architecture registry."""
    out: Dict[str, Any] = {}
    t = time.time()
    try:
        import vllm

        out["vllm"] = vllm.__version__
        from vllm.platforms import current_platform

        out["vllm_platform"] = str(current_platform.device_type)
    except Exception as e:
        out["vllm_error"] = f"{type(e).__name__}: {e}"
    out["import_s"] = round(time.time() - t, 2)
    if architecture and "vllm_error" not in out:
        try:
            from vllm.model_executor.models import ModelRegistry

            out["arch_supported"] = architecture in ModelRegistry.get_supported_archs()
            info = ModelRegistry._try_inspect_model_cls(architecture) if out["arch_supported"] else None
            out["arch_supports_pp"] = getattr(info, "supports_pp", None)
        except Exception as e:
            out["arch_error"] = f"{type(e).__name__}: {e}"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.preflight.runtime")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--vllm-version", action="store_true", help="print the installed vLLM version (or nothing)")
    group.add_argument("--has-distribution", metavar="NAME", help="exit 0 when NAME's metadata is installed")
    group.add_argument("--import-vllm", metavar="ARCH", nargs="?", const="", help="mode=doctor's query")
    args = parser.parse_args(argv)
    if args.vllm_version:
        print(installed_vllm()[1] or "")
        return 0
    if args.has_distribution is not None:
        return 0 if dist_version(args.has_distribution) is not None else 1
    if args.import_vllm is not None:
        out = runtime_facts()
        out.update(vllm_import_facts(args.import_vllm))
        print(DOCTOR_PREFIX + json.dumps(out))
        return 0
    print(json.dumps(runtime_facts()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
