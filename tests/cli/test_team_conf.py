"""A team's own config directory on top of the shipped one (Hydra's --config-dir), through the
real command line from another directory: their hardware profile, model and recipe plan, and
the shipped groups stay selectable beside them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEAM_CONF = REPO / "tests" / "fixtures" / "team_conf"


@pytest.fixture
def elsewhere(tmp_path):
    """A directory outside the checkout holding the team's config directory."""
    shutil.copytree(TEAM_CONF, tmp_path / "team-conf")
    return tmp_path


def runner(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_TP_RUNNER_CACHE"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # a GPU here must not change the plans below
    cmd = [sys.executable, "-m", "runner", *args, f"hydra.run.dir={cwd / 'run'}", f"cache_dir={cwd / 'cache'}"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def manifest(cwd: Path) -> dict:
    return json.loads((cwd / "run" / "manifest.json").read_text())


def test_team_recipe_plans_with_the_team_profile_and_model(elsewhere):
    out = runner(elsewhere, "-cd", "team-conf", "+recipe=theirs", "mode=plan")
    assert out.returncode == 0, out.stderr
    m = manifest(elsewhere)
    assert m["status"] == "planned" and m["problems"] == []
    assert m["config"]["hw"]["name"] == "team-a10-4" and m["config"]["hw"]["gpu_memory_gib"] == 22.49
    assert m["config"]["model"]["name"] == "team-13b" and m["model"]["num_hidden_layers"] == 40
    assert m["plan"]["tensor_parallel_size"] == 4 and m["config"]["serve"]["max_num_seqs"] == 64
    assert "plan: team-13b on cuda devices [0, 1, 2, 3] (TP=4" in out.stdout
    assert "22.49 GiB" in out.stdout  # the fit is computed on the team's card


def test_shipped_groups_stay_selectable_beside_the_team_ones(elsewhere):
    out = runner(elsewhere, "-cd", "team-conf", "hw=pcie-4gpu", "model=team-13b", "mode=plan")
    assert out.returncode == 0, out.stderr
    assert manifest(elsewhere)["config"]["hw"]["name"] == "pcie-4gpu"
    out = runner(elsewhere, "-cd", "team-conf", "+recipe=tiny-llama-cpu-2", "mode=plan")
    assert out.returncode == 0, out.stderr
    assert manifest(elsewhere)["config"]["hw"]["name"] == "cpu-2"


def test_hydra_searchpath_override_works_too(elsewhere):
    conf = (elsewhere / "team-conf").as_uri()
    out = runner(elsewhere, f"hydra.searchpath=[{conf}]", "+recipe=theirs", "mode=plan")
    assert out.returncode == 0, out.stderr
    assert manifest(elsewhere)["config"]["hw"]["name"] == "team-a10-4"


def test_a_misspelt_team_profile_is_one_line_listing_team_and_shipped_options(elsewhere):
    out = runner(elsewhere, "-cd", "team-conf", "hw=team-a10-5", "mode=plan")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if "team-a10-5" in line]
    assert len(lines) == 1 and "hw=team-a10-4" in lines[0], out.stderr
    assert manifest(elsewhere)["status"] == "rejected"


def test_without_the_config_dir_the_team_recipe_is_not_found(elsewhere):
    out = runner(elsewhere, "+recipe=theirs", "mode=plan")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "theirs" in out.stderr
