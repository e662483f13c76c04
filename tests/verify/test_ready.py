"""runner/verify/ready.py and completion.py against a real HTTP server process that answers the
way vLLM's does (/health, /v1/models, /v1/completions), started as vLLM is (process.Server)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from runner.config.schema import VerifyConfig
from runner.launch import process
from runner.record.manifest import RunFailed
from runner.verify.completion import check_completion
from runner.verify.ready import wait_ready

HANG_GUARD_S = 120  # a bound only against a hang; readiness is decided by the answers

SERVER = textwrap.dedent(
    """
    import json, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    NAME, TEXT = sys.argv[2], sys.argv[3]

    class H(BaseHTTPRequestHandler):
        def _send(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send({} if self.path == "/health" else {"data": [{"id": NAME}]})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            tokens = len(TEXT.split())
            self._send({"choices": [{"text": TEXT, "finish_reason": "length"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": tokens}})

        def log_message(self, *a):
            pass

    HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


@pytest.fixture
def serve(tmp_path):
    started = []

    def _serve(name: str = "m", text: str = "hello there"):
        port = process.free_port()
        script = tmp_path / "server.py"
        script.write_text(SERVER)
        server = process.Server([sys.executable, str(script), str(port), name, text], {}, tmp_path / "vllm.log")
        started.append(server)
        return server, f"http://127.0.0.1:{port}"

    yield _serve
    for server in started:
        assert server.stop(grace_s=5).survivors == []


def test_ready_once_health_answers_and_the_served_name_is_listed(serve):
    server, url = serve()
    ready = wait_ready(server, url, "m", HANG_GUARD_S)
    assert ready.health_s is not None and ready.ready_s >= ready.health_s


def test_a_server_that_lists_another_name_is_never_ready(serve):
    server, url = serve(name="other")
    with pytest.raises(RunFailed) as failed:
        wait_ready(server, url, "m", 3)
    assert failed.value.cause == "startup_timeout" and "verify.ready_timeout_s=60" in failed.value.fix


def test_a_server_that_exits_before_it_is_ready_fails_start_up(tmp_path):
    server = process.Server([sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path / "vllm.log")
    with pytest.raises(RunFailed) as failed:
        wait_ready(server, "http://127.0.0.1:9", "m", HANG_GUARD_S)
    assert failed.value.cause == "vllm_exited" and "code 3" in failed.value.reason
    server.stop(grace_s=5)


def test_the_completion_check_passes_on_text_and_tokens(serve):
    server, url = serve(text="one two three")
    wait_ready(server, url, "m", HANG_GUARD_S)
    done = check_completion(url, "m", VerifyConfig(), chat_template=False)
    assert done.passed and done.verification["completion"]["completion_tokens"] == 3
    assert done.verification["models"] == ["m"] and done.verification["completion"]["text"] == "one two three"


def test_the_completion_check_fails_on_an_empty_completion(serve):
    server, url = serve(text="")
    wait_ready(server, url, "m", HANG_GUARD_S)
    done = check_completion(url, "m", VerifyConfig(), chat_template=False)
    assert not done.passed
    assert done.verification["checks"] == {
        "models_lists_served_name": True,
        "completion_has_tokens": False,
        "completion_has_text": False,
    }
