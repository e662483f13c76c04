"""runner.export: each file it writes, checked with the tool that reads it (vLLM's config-file
parser, bash, systemd-analyze, the Kubernetes schema), and no secret value in any of them."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from runner.record import export
from tests.e2e_util import load_manifest, run_runner

ROOT = Path(__file__).resolve().parents[2]
H100_TP2 = (
    ROOT
    / "docs/validation/2026-11-27-h100x4-sweep/llama3-8b"
    / "1_bench=h100-quick,hw=auto,model.load_format=dummy,model=llama3-8b,serve.tensor_parallel_size=2"
)
SECRET = "hf_exportsecret4242"
KEY = "sk-exportkey4242"
K8S_VERSION = "1.30.0"


@pytest.fixture(scope="module")
def cpu_manifest(tmp_path_factory) -> Path:
    """A CPU run's manifest with an HF token and an API key under another name: planned for real,
    then marked verified (its argv and env are what a check run launches)."""
    run_dir = tmp_path_factory.mktemp("cpu") / "run"
    out = run_runner(
        [
            "hw=cpu-2",
            "model=tiny-llama",
            "mode=plan",
            "serve.tensor_parallel_size=2",
            f"+hw.env.HF_TOKEN={SECRET}",
            "serve.api_key_env=MY_KEY",
            f"hydra.run.dir={run_dir}",
        ],
        env={"MY_KEY": KEY},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    manifest = load_manifest(run_dir)
    manifest["status"] = "verified"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir / "manifest.json"


def vllm_parser():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser())


@pytest.mark.parametrize("which", ["cpu", "h100"])
def test_serve_yaml_parses_with_vllm_into_the_argv_it_came_from(which, cpu_manifest, tmp_path):
    path = cpu_manifest if which == "cpu" else H100_TP2 / "manifest.json"
    paths = export.export(path, tmp_path)
    argv = json.loads(path.read_text())["plan"]["argv"]
    flags = argv[argv.index("--model") :]
    parser = vllm_parser()
    from_file = vars(parser.parse_args(["--config", str(paths["serve.yaml"])]))
    from_argv = vars(parser.parse_args(flags))
    from_file.pop("config", None), from_argv.pop("config", None)
    assert from_file == from_argv
    assert from_file["tensor_parallel_size"] == 2


def test_env_file_sources_in_bash_with_secrets_as_references(cpu_manifest, tmp_path):
    paths = export.export(cpu_manifest, tmp_path)
    text = paths["vllm.env"].read_text()
    assert 'HF_TOKEN="${HF_TOKEN}"' in text
    assert 'VLLM_API_KEY="${MY_KEY}"' in text  # vLLM reads VLLM_API_KEY; the run's key lived in MY_KEY
    out = subprocess.run(
        ["bash", "-c", f"set -a; . {shlex.quote(str(paths['vllm.env']))}; set +a; env"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HF_TOKEN": "from-caller", "MY_KEY": "key-from-caller"},
    )
    env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert env["HF_TOKEN"] == "from-caller" and env["VLLM_API_KEY"] == "key-from-caller"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"


def test_systemd_unit(cpu_manifest, tmp_path):
    paths = export.export(cpu_manifest, tmp_path)
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(paths["vllm.service"])
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    argv = load_manifest(cpu_manifest.parent)["plan"]["argv"]
    exec_start = shlex.split(unit["Service"]["ExecStart"])
    assert exec_start == argv[:3] + ["--config", str(paths["serve.yaml"].resolve())]
    assert unit["Service"]["EnvironmentFile"] == "/etc/vllm/secrets.env"
    if shutil.which("systemd-analyze"):
        out = subprocess.run(["systemd-analyze", "verify", str(paths["vllm.service"])], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr


def documents(path: Path):
    return list(yaml.safe_load_all(path.read_text()))


def test_kubernetes_deployment_against_the_official_schema(tmp_path):
    paths = export.export(H100_TP2 / "manifest.json", tmp_path)
    config_map, deployment = documents(paths["deployment.yaml"])
    for doc in (config_map, deployment):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "/v1/models" in json.dumps(container["readinessProbe"])
    names = {e["name"] for e in container["env"]}
    assert {"CUDA_DEVICE_ORDER", "DO_NOT_TRACK"} <= names and "CUDA_VISIBLE_DEVICES" not in names
    served = yaml.safe_load(config_map["data"]["serve.yaml"])
    assert served["host"] == "0.0.0.0" and served["tensor-parallel-size"] == 2
    # a broken Deployment is refused by the same check: it is not a formality
    container["resources"]["limits"]["nvidia.com/gpu"] = [2]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kubernetes_secrets_come_from_a_secret(cpu_manifest, tmp_path):
    paths = export.export(cpu_manifest, tmp_path, image="example.org/vllm-cpu:0.32.0")
    _, deployment = documents(paths["deployment.yaml"])
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "vllm-secrets",
        "key": "HF_TOKEN",
        "optional": False,
    }
    assert "valueFrom" in env["VLLM_API_KEY"] and "value" not in env["VLLM_API_KEY"]
    assert "resources" not in container or not container["resources"].get("limits")  # no GPU on a CPU run


def test_no_secret_value_in_any_file_written(cpu_manifest, tmp_path):
    # an older manifest that kept the values: they still come out as references
    leaked = load_manifest(cpu_manifest.parent)
    leaked["plan"]["env"]["HF_TOKEN"] = SECRET
    leaked["plan"]["argv"] += ["--api-key", KEY]
    (tmp_path / "leaked.json").write_text(json.dumps(leaked))
    for source in (cpu_manifest, tmp_path / "leaked.json"):
        out_dir = tmp_path / source.stem
        out = subprocess.run(
            [sys.executable, "-m", "runner.export", str(source), "--out", str(out_dir)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        written = sorted(out_dir.iterdir())
        assert [p.name for p in written] == ["deployment.yaml", "serve.yaml", "vllm.env", "vllm.service"]
        for text in [p.read_text() for p in written] + [out.stdout, out.stderr]:
            assert SECRET not in text and KEY not in text
        assert "api-key" not in (out_dir / "serve.yaml").read_text()


def test_only_a_verified_manifest_is_exported(cpu_manifest, tmp_path):
    planned = load_manifest(cpu_manifest.parent) | {"status": "failed"}
    (tmp_path / "failed.json").write_text(json.dumps(planned))
    for path in (tmp_path / "failed.json", tmp_path / "missing.json"):
        out = subprocess.run(
            [sys.executable, "-m", "runner.export", str(path)], capture_output=True, text=True, cwd=ROOT
        )
        assert out.returncode == 2
        assert len(out.stderr.strip().splitlines()) == 1 and str(path) in out.stderr and "Fix:" in out.stderr


def test_argv_values_round_trip_as_strings():
    head, options, secret = export.split_argv(
        ["py", "-m", "m", "--max-model-len", "-1", "--enforce-eager", "--seed", "007", "--api-key", "***redacted***"]
    )
    assert head == ["py", "-m", "m"] and secret == ["--api-key"]
    assert options == {"max-model-len": -1, "enforce-eager": True, "seed": "007"}
