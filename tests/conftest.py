"""Shared fixtures: Hydra composition of runner/conf/ and hardware probes from recorded captures.

Nothing here launches vLLM or touches the machine's GPUs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from runner.config.schema import register_configs
from runner.probe.hardware import HardwareProbe
from tests import hwdata

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "runner" / "conf"  # the configs the package ships; +recipe=NAME from its recipe/

_cache: Dict[Tuple[str, ...], DictConfig] = {}


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """runner/conf/config.yaml composed with ``overrides`` (a fresh copy on every call)."""
    key = tuple(overrides)
    if key not in _cache:
        register_configs()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            _cache[key] = hydra_compose("config", overrides=list(overrides), return_hydra_config=False)
    return copy.deepcopy(_cache[key])


@pytest.fixture(scope="session")
def compose():
    """compose(overrides: list[str]) -> DictConfig, as ``python -m runner`` would see it."""

    def _compose(overrides: List[str]) -> DictConfig:
        return compose_config(overrides)

    return _compose


@pytest.fixture(scope="session")
def capture() -> dict:
    return hwdata.load_capture(hwdata.H100X4)


@pytest.fixture
def probe_h100x4() -> HardwareProbe:
    """The recorded 4 x H100 80GB HBM3 (NVLink NV18) machine, 64 cores, no mask."""
    return hwdata.probe_from_capture(hwdata.H100X4)


@pytest.fixture
def probe_h100x2(probe_h100x4) -> HardwareProbe:
    """The first two GPUs of the capture."""
    import dataclasses

    return dataclasses.replace(probe_h100x4, gpus=probe_h100x4.gpus[:2])


@pytest.fixture
def probe_cpu2() -> HardwareProbe:
    """A machine with no GPU and two usable cores (the CI shape)."""
    return HardwareProbe(gpus=(), cpus_allowed=(0, 1), source="none")
