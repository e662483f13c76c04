"""``python -m tests.config.compose_dump [--startup] OVERRIDES…``: the composed config (Hydra's
node included) as JSON lines, one per override set given as a ``;``-separated argument. With
``--startup``, runner.config.hydra_startup's shortcuts are installed first, as ``runner.app``
does; tests/config/test_hydra_startup.py compares the two."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from runner.config import hydra_startup
from runner.config.schema import register_configs

CONF_DIR = Path(__file__).resolve().parents[2] / "runner" / "conf"


def main(argv: list) -> None:
    if argv and argv[0] == "--startup":
        argv = argv[1:]
        hydra_startup.install([])
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for overrides in argv:
            try:
                cfg = compose("config", overrides=[o for o in overrides.split(";") if o], return_hydra_config=True)
                tree = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
                tree["hydra"]["runtime"].pop("output_dir", None)
                print(json.dumps({"overrides": overrides, "config": tree}, sort_keys=True, default=str))
            except Exception as exc:  # the error is part of what must stay the same
                print(json.dumps({"overrides": overrides, "error": f"{type(exc).__name__}: {exc}"}))


if __name__ == "__main__":
    main(sys.argv[1:])
