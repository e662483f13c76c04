"""runner/verify/chat.py (and its part in completion.py) against a real HTTP server process that
answers chat the way vLLM does: JSON, server-sent events ending with ``data: [DONE]``, or the
400 of a tokenizer without a chat template."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap

import jsonschema
import pytest

from runner.config.schema import VerifyConfig
from runner.launch import process
from runner.record.manifest import SCHEMA_PATH, ChatCheck
from runner.verify.chat import NO_TEMPLATE_NOTE, check_chat, has_chat_template
from runner.verify.completion import check_completion
from runner.verify.ready import wait_ready

HANG_GUARD_S = 120  # a bound only against a hang
SCHEMA = json.loads(SCHEMA_PATH.read_text())

# MODE: ok | no-template (400 as vLLM words it) | no-chunks (a stream of the role delta only)
# | no-done (the stream stops without [DONE]). Each POST's path is printed to the log.
SERVER = textwrap.dedent(
    """
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    MODE, WORDS = sys.argv[2], ["Paris", " is", " the", " capital"]
    NO_TEMPLATE = ("As of transformers v4.44, default chat template is no longer allowed, so you must "
                   "provide a chat template if the tokenizer does not define one.")

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, body, code=200):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send({} if self.path == "/health" else {"data": [{"id": "m"}]})

        def _event(self, body):
            data = ("data: " + (body if isinstance(body, str) else json.dumps(body)) + "\\n\\n").encode()
            self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(data), data))
            self.wfile.flush()

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            print("POST", self.path, flush=True)
            if self.path == "/v1/completions":
                return self._send({"choices": [{"text": "".join(WORDS), "finish_reason": "length"}],
                                   "usage": {"prompt_tokens": 5, "completion_tokens": len(WORDS)}})
            if MODE == "no-template":
                return self._send({"error": {"message": NO_TEMPLATE, "type": "BadRequestError", "code": 400}}, 400)
            if not request.get("stream"):
                return self._send({"choices": [{"message": {"role": "assistant", "content": "".join(WORDS)},
                                                "finish_reason": "length"}],
                                   "usage": {"prompt_tokens": 9, "completion_tokens": len(WORDS)}})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            if MODE != "no-chunks":
                for word in WORDS:
                    self._event({"choices": [{"index": 0, "delta": {"content": word}}]})
            if MODE != "no-done":
                self._event("[DONE]")
            self.wfile.write(b"0\\r\\n\\r\\n")

        def log_message(self, *a):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


@pytest.fixture
def serve(tmp_path):
    started = []

    def _serve(mode: str = "ok"):
        port = process.free_port()
        script = tmp_path / "server.py"
        script.write_text(SERVER)
        server = process.Server([sys.executable, str(script), str(port), mode], {}, tmp_path / f"{mode}.log")
        started.append(server)
        url = f"http://127.0.0.1:{port}"
        wait_ready(server, url, "m", HANG_GUARD_S)
        return server, url

    yield _serve
    for server in started:
        assert server.stop(grace_s=5).survivors == []


def test_chat_answers_and_streams(serve):
    _, url = serve()
    chat = check_chat(url, "m", VerifyConfig())
    assert chat.available and chat.passed and chat.reason is None
    assert chat.text == "Paris is the capital" and chat.completion_tokens == 4 and chat.prompt_tokens == 9
    # the role-only opening delta carries no content and is not counted
    assert chat.streamed_chunks == 4 and chat.stream_done
    assert chat.latency_s >= 0 and chat.stream_latency_s >= 0


def test_a_400_is_a_failure_when_the_model_has_a_template(serve):
    _, url = serve("no-template")
    chat = check_chat(url, "m", VerifyConfig(), expected=True)
    assert chat.available and chat.passed is False
    assert "HTTP 400" in chat.reason and "chat template" in chat.reason
    done = check_completion(url, "m", VerifyConfig(), chat_template=True)
    assert not done.passed and done.verification["checks"]["chat_answers"] is False
    assert done.verification["checks"]["completion_has_tokens"] and done.notes == ()


def test_a_400_for_want_of_a_template_is_a_note_when_it_could_not_be_told(serve):
    _, url = serve("no-template")
    done = check_completion(url, "m", VerifyConfig(), chat_template=None)
    assert done.passed and "chat_answers" not in done.verification["checks"]
    chat = done.verification["chat"]
    assert chat["available"] is False and chat["note"] == NO_TEMPLATE_NOTE and "HTTP 400" in chat["reason"]
    assert done.notes == (NO_TEMPLATE_NOTE,)
    assert "+serve.extra_args.chat_template=" in NO_TEMPLATE_NOTE


def test_a_model_without_a_template_is_not_asked(serve):
    server, url = serve()
    done = check_completion(url, "m", VerifyConfig(), chat_template=False)
    assert done.passed and done.verification["chat"] == {"available": False, "note": NO_TEMPLATE_NOTE}
    assert done.notes == (NO_TEMPLATE_NOTE,)
    posts = [line for line in server.log_tail(100).splitlines() if line.startswith("POST")]
    assert posts == ["POST /v1/completions"]


@pytest.mark.parametrize(
    "mode, chunks, done, reason",
    [
        ("no-chunks", 0, True, "the stream had no content delta"),
        ("no-done", 4, False, "the stream did not end with [DONE]"),
    ],
)
def test_a_stream_without_content_or_end_fails(serve, mode, chunks, done, reason):
    _, url = serve(mode)
    chat = check_chat(url, "m", VerifyConfig())
    assert chat.passed is False and chat.text == "Paris is the capital"
    assert chat.streamed_chunks == chunks and chat.stream_done is done and chat.reason == reason
    verification = check_completion(url, "m", VerifyConfig(), chat_template=True).verification
    assert verification["passed"] is False and verification["chat"]["reason"] == reason


def test_has_chat_template(tmp_path):
    assert has_chat_template(str(tmp_path / "absent"), {}) is None  # a hub id vLLM resolves itself
    assert has_chat_template("org/name", {}) is None
    assert has_chat_template(str(tmp_path), {}) is False  # no tokenizer_config.json
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    assert has_chat_template(str(tmp_path), {}) is False
    assert has_chat_template(str(tmp_path), {"chat_template": "/t/chat.jinja"}) is True
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    assert has_chat_template(str(tmp_path), {}) is True
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert has_chat_template(str(tmp_path), {}) is True


def test_the_generated_model_has_a_chat_template(compose, tmp_path):
    from omegaconf import OmegaConf

    from runner.launch import generate

    model = OmegaConf.to_object(compose(["model=tiny-llama"])).model
    assert has_chat_template(generate.materialise(model, str(tmp_path)), {}) is True


def test_chat_record_and_schema_name_the_same_fields():
    node = SCHEMA["properties"]["verification"]["properties"]["chat"]
    fields = {f.name for f in dataclasses.fields(ChatCheck)}
    assert fields == set(node["properties"])
    assert set(node["required"]) == {f.name for f in dataclasses.fields(ChatCheck) if f.default is dataclasses.MISSING}
    passed = ChatCheck(True, True, "x", "length", 3, 4, 0.1, 4, True, 0.1)
    for record in (passed.to_dict(), ChatCheck(False, note=NO_TEMPLATE_NOTE).to_dict()):
        jsonschema.validate({"passed": True, "chat": record}, SCHEMA["properties"]["verification"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"passed": True, "chat": {"passed": True}}, SCHEMA["properties"]["verification"])
