"""Figures and start-up stages read from vLLM's own log."""

from __future__ import annotations

import pytest

from runner.record import vllm_log


def test_reported_figures_one_line_format():
    log = (
        "INFO 11-27 02:40:01 [kv_cache_utils.py:1087] CPU KV cache size: 4,194,304 tokens, "
        "Maximum concurrency for 2,048 tokens per request: 2048.00x\n"
    )
    assert vllm_log.reported_figures(log) == {
        "kv_cache_pool": "CPU",
        "kv_cache_tokens": 4194304,
        "max_concurrency_tokens_per_request": 2048,
        "max_concurrency": 2048.0,
    }


def test_reported_figures_two_line_format():
    log = (
        "INFO [gpu_worker.py:298] Model loading took 35.12 GiB and 20.1 seconds\n"
        "INFO [kv_cache_utils.py:716] GPU KV cache size: 1,234,567 tokens\n"
        "INFO [kv_cache_utils.py:720] Maximum concurrency for 8,192 tokens per request: 150.70x\n"
    )
    assert vllm_log.reported_figures(log) == {
        "kv_cache_pool": "GPU",
        "kv_cache_tokens": 1234567,
        "max_concurrency_tokens_per_request": 8192,
        "max_concurrency": pytest.approx(150.70),
        "model_loading_gib": pytest.approx(35.12),
    }


def test_reported_figures_absent():
    assert vllm_log.reported_figures("INFO starting\n") == {}


def test_current_stage_is_the_furthest():
    assert vllm_log.current_stage("") is None
    assert vllm_log.current_stage("Starting to load model x\n") == "loading weights"
    both = "Starting to load model\nGPU KV cache size: 10 tokens\nApplication startup complete.\n"
    assert vllm_log.current_stage(both) == "ready"
