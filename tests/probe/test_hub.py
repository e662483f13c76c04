"""``model.path=org/name[@rev]`` through huggingface_hub's cache and a local stub of the hub's
HTTP answers (the real hub is not reachable here): planned from the cache, fetched when
allowed, refused before launch with one line when gated, missing, offline or remote code."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner.probe import hub

REPO = Path(__file__).resolve().parents[2]
HUB_CACHE = REPO / "tests" / "fixtures" / "hub_cache"
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_" + "q" * 34  # looks like a token; must appear in no file of the run dir
ONLINE_CONFIG = json.loads(
    (HUB_CACHE / "models--team--tiny-llama" / "snapshots" / SNAPSHOT / "config.json").read_text()
)
ONLINE_CONFIG["num_hidden_layers"] = 3  # tells the downloaded copy from the cached one
ONLINE_BODY = json.dumps(ONLINE_CONFIG).encode()
ONLINE_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _git_oid() -> str:
    return hashlib.sha1(b"blob %d\0" % len(ONLINE_BODY) + ONLINE_BODY).hexdigest()


class HubStub(BaseHTTPRequestHandler):
    """The hub's answers as huggingface_hub reads them: the status and X-Error-Code header.

    Unauthenticated, the hub answers 401 for a gated repo and for a missing one alike; with a
    token, 403 for a gated repo the account may not read and 404 for a missing one."""

    seen_auth: list = []

    def _answer(self, body: bool) -> None:
        auth = self.headers.get("Authorization")
        HubStub.seen_auth.append(auth)
        m = re.match(r"^/(?:api/models/)?([^/]+)/([^/]+)", self.path)
        org = m.group(1) if m else ""
        if org == "online" and self.path.startswith("/api/models/"):
            # repo info, then the file tree: what snapshot_download lists before fetching
            if "/tree/" in self.path:
                listing = [{"type": "file", "path": "config.json", "size": len(ONLINE_BODY), "oid": _git_oid()}]
            else:
                listing = {"id": "online/tiny-llama", "sha": ONLINE_COMMIT, "siblings": [{"rfilename": "config.json"}]}
            payload = json.dumps(listing).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)
            return
        if org == "gated":
            code, error = (403 if auth else 401), "GatedRepo"
            message = "Access to model gated/llama is restricted. You must have access to it and be authenticated."
        elif org == "online" and self.path.endswith("/config.json"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(ONLINE_BODY)))
            self.send_header("ETag", '"' + _git_oid() + '"')
            self.send_header("X-Repo-Commit", ONLINE_COMMIT)
            self.end_headers()
            if body:
                self.wfile.write(ONLINE_BODY)
            return
        else:
            code, error, message = (404 if auth else 401), "RepoNotFound", "Repository not found"
        payload = json.dumps({"error": message}).encode()
        self.send_response(code)
        self.send_header("X-Error-Code", error)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        self._answer(body=False)

    def do_GET(self):  # noqa: N802
        self._answer(body=True)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def hub_env(tmp_path, stub):
    """A writable copy of the cache fixture, the stub as the hub, and no token anywhere."""
    cache = tmp_path / "hub"
    shutil.copytree(HUB_CACHE, cache)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k not in ("CUDA_VISIBLE_DEVICES",)}
    env.update(
        HF_HOME=str(tmp_path / "hf-home"),  # no login token file from this machine
        HF_HUB_CACHE=str(cache),
        HF_ENDPOINT=stub,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_ETAG_TIMEOUT="30",
        CUDA_VISIBLE_DEVICES="",
    )
    HubStub.seen_auth.clear()
    return env


def plan(tmp_path: Path, env: dict, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "runner",
        "mode=plan",
        "hw=pcie-2gpu",
        "model=local",
        *overrides,
        f"hydra.run.dir={tmp_path / 'run'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def refused(tmp_path: Path, out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "rejected"
    assert not (tmp_path / "run" / "vllm.log").exists()
    assert len(manifest["problems"]) == 1, manifest["problems"]
    return manifest["problems"][0]


def no_token_in(run_dir: Path) -> None:
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert TOKEN not in path.read_text(errors="replace"), path


# ------------------------------------------------------------------ parsing (no hub involved)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("meta-llama/Llama-3.1-8B", ("meta-llama/Llama-3.1-8B", None)),
        ("Qwen/Qwen2.5-7B-Instruct@main", ("Qwen/Qwen2.5-7B-Instruct", "main")),
        ("org/name@" + SNAPSHOT, ("org/name", SNAPSHOT)),
        ("/models/llama", None),
        ("./llama", None),
        ("~/models/llama", None),
        ("llama", None),
        ("a/b/c", None),
    ],
)
def test_parse(path, expected):
    got = hub.parse(path)
    assert (got and (got.repo_id, got.revision)) == expected or (got is None and expected is None)


def test_parse_takes_model_revision_unless_the_path_names_one():
    assert hub.parse("org/name", revision="v2").revision == "v2"
    assert hub.parse("org/name@v3", revision="v2").revision == "v3"


def test_an_existing_directory_is_never_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub.parse("org/name") is None


def test_remote_code_needs_trust_only_for_an_architecture_transformers_lacks():
    cfg = json.loads((HUB_CACHE / "models--team--remote-arch" / "snapshots" / SNAPSHOT / "config.json").read_text())
    problem = hub.remote_code_problem(cfg, trusted=False, where="team/remote-arch")
    assert problem.key == "serve.trust_remote_code" and problem.fix.startswith("serve.trust_remote_code=true")
    assert hub.remote_code_problem(cfg, trusted=True, where="team/remote-arch") is None
    assert hub.remote_code_problem({**cfg, "auto_map": {}}, trusted=False, where="x") is None
    pytest.importorskip("transformers")
    # auto_map beside a model type transformers ships (many llama repos carry one): no code needed
    assert hub.remote_code_problem({**cfg, "model_type": "llama"}, trusted=False, where="x") is None


# ------------------------------------------------------------------ through the command line


def test_a_cached_hub_id_plans_from_the_snapshot(tmp_path, hub_env):
    hub_env["HF_HUB_OFFLINE"] = "1"  # the cache alone must do
    out = plan(tmp_path, hub_env, "model.path=team/tiny-llama", "model.name=tiny")
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "planned"
    assert manifest["model"]["num_hidden_layers"] == 6
    argv = manifest["plan"]["argv"]
    served = argv[argv.index("--model") + 1]
    assert Path(served) == Path(hub_env["HF_HUB_CACHE"]) / "models--team--tiny-llama" / "snapshots" / SNAPSHOT
    assert HubStub.seen_auth == []  # nothing asked of the hub


def test_a_revision_in_the_path_picks_that_snapshot(tmp_path, hub_env):
    hub_env["HF_HUB_OFFLINE"] = "1"
    out = plan(tmp_path, hub_env, f"model.path=team/tiny-llama@{SNAPSHOT}", "model.name=tiny")
    assert out.returncode == 0, out.stderr
    out = plan(tmp_path, hub_env, "model.path=team/tiny-llama@v9", "model.name=tiny")
    problem = refused(tmp_path, out)
    assert problem["key"] == "model.path" and "HF_HUB_OFFLINE" in problem["message"]


def test_not_cached_and_offline_is_refused_naming_the_fix(tmp_path, hub_env):
    hub_env["HF_HUB_OFFLINE"] = "1"
    out = plan(tmp_path, hub_env, "model.path=team/not-here", "model.name=x")
    problem = refused(tmp_path, out)
    assert problem["value"] == "team/not-here"
    assert "unset HF_HUB_OFFLINE" in problem["fix"]
    assert HubStub.seen_auth == []


def test_not_cached_and_online_fetches_config_json_into_the_cache(tmp_path, hub_env):
    out = plan(tmp_path, hub_env, "model.path=online/tiny-llama", "model.name=tiny")
    assert out.returncode == 0, out.stderr
    fetched = Path(hub_env["HF_HUB_CACHE"]) / "models--online--tiny-llama" / "snapshots" / ONLINE_COMMIT
    assert json.loads((fetched / "config.json").read_text())["num_hidden_layers"] == 3
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["model"]["num_hidden_layers"] == 3


def test_gated_repo_without_a_token(tmp_path, hub_env):
    out = plan(tmp_path, hub_env, "model.path=gated/llama", "model.name=x")
    problem = refused(tmp_path, out)
    assert problem["key"] == "model.path" and "no hub token" in problem["message"]
    assert "export HF_TOKEN=" in problem["fix"] and "/gated/llama" in problem["fix"]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "gated/llama" in errors[0], out.stderr


def test_gated_repo_with_a_token_that_lacks_access(tmp_path, hub_env):
    hub_env["HF_TOKEN"] = TOKEN
    out = plan(tmp_path, hub_env, "model.path=gated/llama", "model.name=x")
    problem = refused(tmp_path, out)
    assert "no access" in problem["message"] and "request access" in problem["fix"]
    assert f"Bearer {TOKEN}" in HubStub.seen_auth  # the token was offered to the hub...
    no_token_in(tmp_path / "run")  # ...and written nowhere
    assert TOKEN not in out.stdout + out.stderr


def test_missing_repo(tmp_path, hub_env):
    out = plan(tmp_path, hub_env, "model.path=team/no-such-model", "model.name=x")
    problem = refused(tmp_path, out)
    assert "no such repo" in problem["message"] and "HF_TOKEN" in problem["fix"]
    hub_env["HF_TOKEN"] = TOKEN
    out = plan(tmp_path, hub_env, "model.path=team/no-such-model", "model.name=x")
    problem = refused(tmp_path, out)
    assert "no such repo" in problem["message"] and "HF_TOKEN" not in problem["fix"]
    no_token_in(tmp_path / "run")


def test_remote_code_architecture_is_refused_until_trusted(tmp_path, hub_env):
    hub_env["HF_HUB_OFFLINE"] = "1"
    out = plan(tmp_path, hub_env, "model.path=team/remote-arch", "model.name=x")
    problem = refused(tmp_path, out)
    assert problem["key"] == "serve.trust_remote_code"
    assert problem["fix"].startswith("serve.trust_remote_code=true")
    out = plan(tmp_path, hub_env, "model.path=team/remote-arch", "model.name=x", "serve.trust_remote_code=true")
    assert out.returncode == 0, out.stderr


def fetch(env: dict, path: str) -> subprocess.CompletedProcess:
    """hub.download as the launch stage calls it, in a process that reads ``env`` at import."""
    code = f"from runner.probe import hub; print(hub.download(hub.parse({path!r})))"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_launch_fetches_the_snapshot_when_allowed_and_uses_the_cache_when_offline(tmp_path, hub_env):
    out = fetch(hub_env, "online/tiny-llama")
    assert out.returncode == 0, out.stderr
    snapshot = Path(out.stdout.strip().splitlines()[-1])
    assert snapshot == Path(hub_env["HF_HUB_CACHE"]) / "models--online--tiny-llama" / "snapshots" / ONLINE_COMMIT
    assert json.loads((snapshot / "config.json").read_text())["num_hidden_layers"] == 3
    hub_env["HF_HUB_OFFLINE"] = "1"
    asked = len(HubStub.seen_auth)
    out = fetch(hub_env, "team/tiny-llama")
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip().splitlines()[-1]).name == SNAPSHOT
    assert len(HubStub.seen_auth) == asked  # offline: the hub was not asked
