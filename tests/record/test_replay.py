"""replay=PATH: the runner composes a manifest's config again (mode=plan runs: real, and fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.record.replay import BadReplay, expand_argv
from tests.e2e_util import load_manifest, run_runner

ROOT = Path(__file__).resolve().parents[2]
H100_TP1 = (
    ROOT
    / "docs/validation/2026-11-27-h100x4-sweep/llama3-8b"
    / "0_bench=h100-quick,hw=auto,model.load_format=dummy,model=llama3-8b,serve.tensor_parallel_size=1"
)
SECRET = "hf_replaysecret4242"
KEY = "sk-replaykey4242"


def without_replay(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "replay"}


def all_text(run_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in Path(run_dir).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("original") / "run"
    out = run_runner(
        [
            "hw=cpu-2",
            "model=tiny-llama",
            "mode=plan",
            "serve.tensor_parallel_size=2",
            "serve.max_model_len=512",
            f"+hw.env.HF_TOKEN={SECRET}",
            "serve.api_key_env=MY_KEY",
            f"hydra.run.dir={run_dir}",
        ],
        env={"MY_KEY": KEY},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return run_dir


def test_replay_composes_the_same_config_and_names_the_original(original, tmp_path):
    out = run_runner(
        [f"replay={original}", f"+hw.env.HF_TOKEN={SECRET}", f"hydra.run.dir={tmp_path / 'replay'}"],
        env={"MY_KEY": KEY},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = load_manifest(original), load_manifest(tmp_path / "replay")
    assert after["status"] == "planned"
    assert without_replay(after["config"]) == without_replay(before["config"])
    assert after["config"]["replay"] == str(original / "manifest.json")
    assert after["replayed_from"]["manifest"] == str(original / "manifest.json")
    assert after["replayed_from"]["started_at"] == before["started_at"]
    assert after["plan"]["argv"] == before["plan"]["argv"]
    # the hw profile is the original's choice (Hydra's record), so the run dir names the same choices
    overrides = (tmp_path / "replay" / ".hydra" / "overrides.yaml").read_text()
    assert "hw=cpu-2" in overrides and "model=tiny-llama" in overrides
    for text in (all_text(tmp_path / "replay"), out.stdout, out.stderr):
        assert SECRET not in text and KEY not in text


def test_a_redacted_secret_is_not_replayed_as_the_mask(original, tmp_path):
    out = run_runner([f"replay={original}", f"hydra.run.dir={tmp_path / 'replay'}"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "hw.env.HF_TOKEN was redacted" in out.stderr
    after = load_manifest(tmp_path / "replay")
    assert "HF_TOKEN" not in after["config"]["hw"]["env"] and "HF_TOKEN" not in after["plan"]["env"]


def test_overrides_after_replay_win(original, tmp_path):
    out = run_runner([f"replay={original}", "serve.tensor_parallel_size=1", f"hydra.run.dir={tmp_path / 'r'}"])
    assert out.returncode == 0, out.stderr[-2000:]
    after = load_manifest(tmp_path / "r")
    assert after["config"]["serve"]["tensor_parallel_size"] == 1
    assert after["config"]["serve"]["max_model_len"] == 512  # the rest is still the original's


def test_a_gpu_run_is_refused_on_this_cpu_machine_naming_both(tmp_path):
    out = run_runner([f"replay={H100_TP1}", "mode=plan", f"hydra.run.dir={tmp_path / 'r'}"])
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NVIDIA H100" in errors[0] and "cpu" in errors[0] and "Fix:" in errors[0]
    manifest = load_manifest(tmp_path / "r")
    assert manifest["status"] == "rejected" and manifest["replayed_from"]["status"] == "verified"


def test_a_different_vllm_is_a_warning_naming_both(tmp_path):
    # hw.device=cpu after replay= takes the run here anyway (planned only: an 8B model)
    out = run_runner([f"replay={H100_TP1}", "mode=plan", "hw.device=cpu", f"hydra.run.dir={tmp_path / 'r'}"])
    assert out.returncode == 0, out.stderr[-2000:]
    manifest = load_manifest(tmp_path / "r")
    [warning] = [n for n in manifest["notes"] if "vLLM" in n and "replay" in n]
    assert "0.26.0" in warning and manifest["versions"]["vllm"] in warning
    # the shape model is the same: its directory hash is computed from the replayed hf_config
    original = json.loads((H100_TP1 / "manifest.json").read_text())
    assert manifest["model"]["path"] == original["model"]["path"]


def test_a_rejected_run_replays_its_rejection(tmp_path):
    first = run_runner(["hw=cpu-2", "serve.tensor_parallel_size=3", "mode=plan", f"hydra.run.dir={tmp_path / 'a'}"])
    assert first.returncode == 2
    again = run_runner([f"replay={tmp_path / 'a'}", f"hydra.run.dir={tmp_path / 'b'}"])
    assert again.returncode == 2
    a, b = load_manifest(tmp_path / "a"), load_manifest(tmp_path / "b")
    assert [p["text"] for p in b["problems"]] == [p["text"] for p in a["problems"]]
    # rejected before composition: only the command line was kept, and it is replayed
    first = run_runner(["hw=nope", "mode=plan", f"hydra.run.dir={tmp_path / 'c'}"])
    again = run_runner([f"replay={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'd'}"])
    assert first.returncode == again.returncode == 2
    assert load_manifest(tmp_path / "d")["problems"] == load_manifest(tmp_path / "c")["problems"]


@pytest.mark.parametrize("kind", ["missing", "not-json", "not-a-manifest"])
def test_bad_replay_path_is_one_line_and_exit_2(tmp_path, kind):
    path = tmp_path / "m.json"
    if kind == "not-json":
        path.write_text("not json")
    elif kind == "not-a-manifest":
        path.write_text('{"a": 1}')
    out = run_runner([f"replay={path}", f"hydra.run.dir={tmp_path / 'r'}"])
    assert out.returncode == 2
    [line] = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: replay={path}:") and "Fix: " in line
    assert load_manifest(tmp_path / "r")["status"] == "rejected"
    with pytest.raises(BadReplay):
        expand_argv([f"replay={path}"])


def test_argv_without_replay_is_untouched():
    assert expand_argv(["hw=cpu-2", "mode=plan"]) == (["hw=cpu-2", "mode=plan"], [])


def test_a_sweep_replays_the_manifest_at_every_point(original, tmp_path):
    out = run_runner(
        ["-m", f"replay={original}", "serve.tensor_parallel_size=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    )
    assert out.returncode == 0, out.stderr[-2000:]
    points = sorted((tmp_path / "sweep").glob("*/manifest.json"))
    # the points are named by what differs between them, not by the replayed path
    assert [p.parent.name for p in points] == [
        f"{i}_hw=cpu-2,model=tiny-llama,serve.tensor_parallel_size={i + 1}" for i in range(2)
    ]
    for tp, point in enumerate(points, start=1):
        manifest = json.loads(point.read_text())
        assert manifest["config"]["serve"]["tensor_parallel_size"] == tp
        assert manifest["config"]["serve"]["max_model_len"] == 512
        assert manifest["replayed_from"]["manifest"] == str(original / "manifest.json")
