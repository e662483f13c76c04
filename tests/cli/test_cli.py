"""``python -m runner`` end to end, in modes that never launch vLLM (plan, and check runs
that are rejected before launch): exit codes, manifest, plan, secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "runner" / "record" / "manifest.schema.json").read_text())


def run_runner(tmp_path: Path, *overrides: str, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_TP_RUNNER_CACHE", "CUDA_VISIBLE_DEVICES")}
    env.update(env_extra or {})
    # the real probe must not find a GPU that would change the answers below
    env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [
        sys.executable,
        "-m",
        "runner",
        *overrides,
        f"hydra.run.dir={tmp_path / 'run'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def manifest(tmp_path: Path) -> dict:
    data = json.loads((tmp_path / "run" / "manifest.json").read_text())
    jsonschema.validate(data, SCHEMA)
    return data


def test_plan_mode(tmp_path):
    out = run_runner(tmp_path, "mode=plan", "hw=cpu-2", "model=tiny-llama")
    assert out.returncode == 0, out.stderr
    m = manifest(tmp_path)
    assert m["status"] == "planned" and m["exit_code"] == 0 and m["mode"] == "plan"
    assert m["problems"] == []
    assert m["plan"]["device"] == "cpu" and m["plan"]["tensor_parallel_size"] == 2
    assert m["run_dir"] == str(tmp_path / "run")
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["argv"] == m["plan"]["argv"]
    assert plan["argv"][1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert plan["problems"] == []
    assert "--tensor-parallel-size 2" in out.stdout  # the command it would run
    # plan mode launches nothing, but the command it prints runs as printed: the generated
    # model it names is on disk
    assert not (tmp_path / "run" / "vllm.log").exists()
    model_path = Path(plan["argv"][plan["argv"].index("--model") + 1])
    assert model_path.parent.parent == tmp_path / "cache"
    assert json.loads((model_path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert list(model_path.glob("*.safetensors")) and (model_path / "tokenizer.json").is_file()


def test_rejected_before_launch(tmp_path):
    out = run_runner(
        tmp_path, "mode=check", "hw=cpu-2", "model=tiny-llama", "serve.gpu_memory_utilization=1.5", "serve.port=0"
    )
    assert out.returncode == 2, out.stderr
    m = manifest(tmp_path)
    assert m["status"] == "rejected" and m["exit_code"] == 2
    assert {p["key"] for p in m["problems"]} == {"serve.gpu_memory_utilization", "serve.port"}
    assert "rejected: 2 problem(s)" in out.stderr
    assert not (tmp_path / "run" / "vllm.log").exists()
    assert not (tmp_path / "cache").exists()


def test_tp3_on_cpu2_exits_2_and_launches_nothing(tmp_path):
    out = run_runner(tmp_path, "mode=check", "hw=cpu-2", "model=tiny-llama", "serve.tensor_parallel_size=3")
    assert out.returncode == 2, out.stderr
    assert not (tmp_path / "run" / "vllm.log").exists()
    assert not (tmp_path / "cache").exists()


def test_tp3_on_cpu2_is_rejected_with_a_manifest(tmp_path):
    out = run_runner(tmp_path, "mode=check", "hw=cpu-2", "model=tiny-llama", "serve.tensor_parallel_size=3")
    assert out.returncode == 2
    m = manifest(tmp_path)
    assert m["status"] == "rejected"
    assert m["problems"]


def test_typo_key_exits_2(tmp_path):
    out = run_runner(tmp_path, "mode=plan", "hw=cpu-2", "serve.tensor_parallel_siz=2")
    assert out.returncode == 2
    assert "error: serve.tensor_parallel_siz=2: no such key in serve. Fix: serve.tensor_parallel_size=2" in out.stderr
    m = manifest(tmp_path)  # rejected before a config existed: still a manifest, nothing else
    assert m["status"] == "rejected" and "config" not in m


def test_recipe_plan(tmp_path):
    out = run_runner(tmp_path, "+recipe=llama70b-nvlink-4gpu", "model.load_format=dummy", "mode=plan")
    assert out.returncode == 0, out.stderr
    m = manifest(tmp_path)
    assert m["status"] == "planned"
    argv = m["plan"]["argv"]
    i = argv.index("--tensor-parallel-size")
    assert argv[i + 1] == "4"
    assert argv[argv.index("--load-format") + 1] == "dummy"
    assert m["plan"]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert m["config"]["hw"]["name"] == "nvlink-4gpu"


def _files_containing(root: Path, needle: str):
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(str(path.relative_to(root)))
    return hits


@pytest.mark.parametrize("mode_args", [("mode=plan",), ("mode=check", "serve.port=0")], ids=["planned", "rejected"])
def test_secret_in_environment_never_written(tmp_path, mode_args):
    out = run_runner(
        tmp_path,
        *mode_args,
        "hw=cpu-2",
        "model=tiny-llama",
        env_extra={"HF_TOKEN": "hf_secret123", "OPENAI_API_KEY": "sk-secret456"},
    )
    assert out.returncode in (0, 2), out.stderr
    run_dir = tmp_path / "run"
    assert (run_dir / "manifest.json").is_file()
    assert len([p for p in run_dir.rglob("*") if p.is_file()]) >= 3
    for secret in ("hf_secret123", "sk-secret456"):
        assert _files_containing(run_dir, secret) == []
        assert secret not in out.stdout and secret not in out.stderr


SECRET_OVERRIDES = ("+hw.env.HF_TOKEN=hf_envsecret", "+hw.env.WANDB_API_KEY=wb_keysecret")


def test_secret_overrides_redacted_in_plan_and_console(tmp_path):
    out = run_runner(tmp_path, "mode=plan", "hw=cpu-2", "model=tiny-llama", *SECRET_OVERRIDES)
    assert out.returncode == 0, out.stderr
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["env"]["HF_TOKEN"] == "***redacted***"
    assert plan["env"]["WANDB_API_KEY"] == "***redacted***"
    for secret in ("wb_keysecret", "hf_envsecret"):
        assert secret not in json.dumps(plan)
        assert secret not in out.stdout and secret not in out.stderr
    assert "HF_TOKEN='***redacted***'" in out.stdout  # the command it prints, shell-quoted


def test_api_key_in_argv_is_refused_and_not_written(tmp_path):
    out = run_runner(tmp_path, "mode=plan", "hw=cpu-2", "model=tiny-llama", "+serve.extra_args.api_key=sk-topsecret")
    assert out.returncode == 2
    assert "VLLM_API_KEY" in out.stderr and "sk-topsecret" not in out.stderr
    assert _files_containing(tmp_path / "run", "sk-topsecret") == []


def test_api_key_from_environment_reaches_vllm_env_not_argv(tmp_path):
    out = run_runner(
        tmp_path,
        "mode=plan",
        "hw=cpu-2",
        "model=tiny-llama",
        "serve.api_key_env=MY_SERVING_KEY",
        env_extra={"MY_SERVING_KEY": "sk-fromenv"},
    )
    assert out.returncode == 0, out.stderr
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["env"]["VLLM_API_KEY"] == "***redacted***"  # passed on under vLLM's own name
    assert not any("sk-fromenv" in a or a == "--api-key" for a in plan["argv"])
    assert _files_containing(tmp_path / "run", "sk-fromenv") == []


def test_all_interfaces_without_key_warns(tmp_path):
    out = run_runner(tmp_path, "mode=plan", "hw=cpu-2", "model=tiny-llama", "serve.host=0.0.0.0")
    assert out.returncode == 0
    assert "WARNING: serving on every interface without an API key" in out.stderr + out.stdout
    assert any("without an API key" in n for n in manifest(tmp_path)["notes"])


def test_secret_overrides_not_in_manifest(tmp_path):
    out = run_runner(tmp_path, "mode=plan", "hw=cpu-2", "model=tiny-llama", *SECRET_OVERRIDES)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "run" / "manifest.json").read_text()
    assert "wb_keysecret" not in text and "hf_envsecret" not in text
