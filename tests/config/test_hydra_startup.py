"""runner/config/hydra_startup.py: the start-up shortcuts leave the composed config, and the
errors of bad input, as they were."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import yaml
from omegaconf import _utils

from runner import app
from runner.config import hydra_startup
from runner.record import replay

REPO = Path(__file__).resolve().parents[2]
OVERRIDE_SETS = [
    "hw=cpu-2;model=tiny-llama;mode=plan",
    "hw=nvlink-4gpu;model=llama70b;model.load_format=dummy;mode=plan",
    "+recipe=llama70b-pcie-4gpu;serve.quantization=fp8",
    "hw=multinode-2x8;model=qwen2.5-72b;model.load_format=dummy;hydra/launcher=slurm",
    "hw=cpu-2;model=tiny-llama;hw.bogus=1",  # not in the schema
    "hw=cpu-2;model=tiny-llama;serve.port=eighty",  # the wrong type
    "model=nosuch",
]


def _composed(*flags: str) -> list:
    done = subprocess.run(
        [sys.executable, "-m", "tests.config.compose_dump", *flags, *OVERRIDE_SETS],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def test_the_composed_configs_and_errors_are_the_same():
    plain, fast = _composed(), _composed("--startup")
    assert len(plain) == len(OVERRIDE_SETS)
    assert fast == plain


def _yaml_files():
    roots = [REPO / "runner" / "conf", REPO / "recipes", Path(hydra.__file__).parent / "conf"]
    return sorted({p.resolve() for root in roots for p in root.rglob("*.yaml")})


def test_libyaml_reads_every_config_file_as_omegaconfs_loader_does():
    slow = _utils.get_yaml_loader()
    fast = hydra_startup._libyaml_loader(slow)
    files = _yaml_files()
    assert len(files) > 30
    for path in files:
        with open(path, encoding="utf-8") as a, open(path, encoding="utf-8") as b:
            assert yaml.load(a, Loader=fast) == yaml.load(b, Loader=slow), path


BAD = [
    "a: 1\na: 2\n",  # a duplicate key: OmegaConf refuses it
    "{a: 1, a: 1}",
    "a: [1, 2\n",
    "a:\n\t- x\n",
    "key: value\n  bad: indent\n",
    "a: b: c\n",
    "- a\nb: c\n",
    "x: !!python/object:os.system 1\n",
    "&a [*b]",
]


@pytest.mark.parametrize("document", BAD)
def test_a_bad_document_raises_omegaconfs_own_error(document):
    slow = _utils.get_yaml_loader()
    fast = hydra_startup._libyaml_loader(slow)

    def named():
        stream = io.StringIO(document)
        stream.name = "/conf/model/x.yaml"
        return stream

    for make in (lambda: document, lambda: io.StringIO(document), named):
        errors = []
        for loader in (slow, fast):
            with pytest.raises(yaml.YAMLError) as caught:
                yaml.load(make(), Loader=loader)
            errors.append((type(caught.value), str(caught.value)))
        assert errors[0] == errors[1]


def test_the_replay_argument_is_the_one_replay_reads():
    assert app.REPLAY_ARG == replay.ARG
