"""Secrets masked in the environment and argv the manifest records."""

from __future__ import annotations

from runner.record.redact import MASK, is_secret_name, redact_argv, redact_env


def test_redact_env():
    env = {
        "HF_TOKEN": "hf_abc",
        "OPENAI_API_KEY": "sk-abc",
        "DB_PASSWORD": "hunter2",
        "AWS_SECRET_ACCESS_KEY": "x",
        "PATH": "/usr/bin",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "TOKENIZERS_PARALLELISM": "false",
        "EMPTY_TOKEN": "",
    }
    out = redact_env(env)
    assert out["HF_TOKEN"] == MASK
    assert out["OPENAI_API_KEY"] == MASK
    assert out["DB_PASSWORD"] == MASK
    assert out["AWS_SECRET_ACCESS_KEY"] == MASK
    assert out["PATH"] == "/usr/bin"
    assert out["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert out["TOKENIZERS_PARALLELISM"] == "false"
    assert out["EMPTY_TOKEN"] == ""  # nothing to hide
    assert env["HF_TOKEN"] == "hf_abc"  # the input is not modified
    assert is_secret_name("hf_token") and not is_secret_name("KEYBOARD")


def test_redact_argv():
    argv = [
        "python",
        "-m",
        "vllm",
        "--api-key",
        "sk-1",
        "--port",
        "8000",
        "--api-key=sk-2",
        "--hf-token",
        "hf_3",
        "--model",
        "m",
    ]
    out = redact_argv(argv)
    assert out == [
        "python",
        "-m",
        "vllm",
        "--api-key",
        MASK,
        "--port",
        "8000",
        f"--api-key={MASK}",
        "--hf-token",
        MASK,
        "--model",
        "m",
    ]
    assert not any(s in " ".join(out) for s in ("sk-1", "sk-2", "hf_3"))
    assert redact_argv(("--api-key",)) == ["--api-key"]
