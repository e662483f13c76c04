"""runner/measure/bench.py: the `vllm bench serve` command, its saved result, the roofline formula;
and one real benchmark against a tiny vLLM-CPU server (marker e2e)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from runner.measure import bench
from runner.measure.bench import BenchError, bench_argv, read_result, roofline_fraction, run_bench
from tests.e2e_util import load_manifest, processes_mentioning, serve_tiny

# Ctrl-C arrives after 1.5 s; the bench timeout only guards against a hang, so it is far above that.
HANG_GUARD_S = 600
BENCH = {
    "dataset": "random",
    "input_len": 512,
    "output_len": 64,
    "num_prompts": 100,
    "concurrencies": [1, 4],
    "ignore_eos": True,
    "seed": 7,
}


def flags(argv):
    """{--flag: value or True} of an argv after 'bench serve'."""
    rest = argv[argv.index("serve") + 1 :]
    out = {}
    for i, a in enumerate(rest):
        if a.startswith("--"):
            nxt = rest[i + 1] if i + 1 < len(rest) else None
            out[a] = nxt if nxt is not None and not nxt.startswith("--") else True
    return out


def test_bench_argv_module_form_has_every_flag(tmp_path):
    argv = bench_argv(
        "/venv/bin/python",
        "http://127.0.0.1:8102/v1/",
        "llama3-8b",
        "/models/llama3-8b",
        BENCH,
        4,
        tmp_path / "bench",
        "c4.json",
        cli="module",
    )
    assert argv[:5] == ["/venv/bin/python", "-m", "vllm.entrypoints.cli.main", "bench", "serve"]
    f = flags(argv)
    assert f == {
        "--backend": "openai",
        "--base-url": "http://127.0.0.1:8102",  # vLLM appends --endpoint itself
        "--endpoint": "/v1/completions",
        "--model": "llama3-8b",
        "--tokenizer": "/models/llama3-8b",
        "--dataset-name": "random",
        "--random-input-len": "512",
        "--random-output-len": "64",
        "--num-prompts": "100",
        "--max-concurrency": "4",
        "--request-rate": "inf",
        "--ignore-eos": True,
        "--percentile-metrics": "ttft,tpot,itl,e2el",
        "--metric-percentiles": "99",
        "--save-result": True,
        "--result-dir": str(tmp_path / "bench"),
        "--result-filename": "c4.json",
        "--seed": "7",
    }
    assert bench.result_path(argv) == tmp_path / "bench" / "c4.json"


def test_bench_argv_options(tmp_path):
    argv = bench_argv(
        "py",
        "http://h:1",
        "m",
        "/t",
        {**BENCH, "ignore_eos": False, "request_rate": 2.5},
        1,
        tmp_path,
        "r.json",
        cli="shim",
    )
    assert argv[:3] == ["py", "-m", bench.CLI_SHIM_MODULE] and argv[3:5] == ["bench", "serve"]
    f = flags(argv)
    assert "--ignore-eos" not in f and f["--request-rate"] == "2.5" and f["--max-concurrency"] == "1"
    assert (
        flags(
            bench_argv(
                "py",
                "http://h:1",
                "m",
                "/t",
                {**BENCH, "request_rate": float("inf")},
                1,
                tmp_path,
                "r.json",
                cli="module",
            )
        )["--request-rate"]
        == "inf"
    )
    for bad in (
        {**BENCH, "dataset": "sharegpt"},
        {**BENCH, "input_len": 0},
        {**BENCH, "num_prompts": "8"},
        {**BENCH, "request_rate": 0},
    ):
        with pytest.raises(ValueError):
            bench_argv("py", "http://h:1", "m", "/t", bad, 1, tmp_path, "r.json", cli="module")
    with pytest.raises(ValueError):
        bench_argv("py", "http://h:1", "m", "/t", BENCH, 0, tmp_path, "r.json", cli="module")
    with pytest.raises(ValueError):
        bench.cli_prefix("py", cli="rust")


def test_cli_prefix_auto_uses_the_module_only_where_vllm_metadata_exists():
    # this interpreter has vllm-cpu (distribution "vllm-cpu"): the shim; a python without vLLM
    # has no "vllm" distribution either
    import importlib.metadata as md

    try:
        md.version("vllm")
        expected = bench.VLLM_CLI_MODULE
    except md.PackageNotFoundError:
        expected = bench.CLI_SHIM_MODULE
    assert bench.cli_prefix(sys.executable)[1:] == ["-m", expected]


def vllm_result_json(**over) -> dict:
    """A result file as vllm/benchmarks/serve.py (0.32) writes it with --save-result and
    without --save-detailed: main_async()'s header keys, then benchmark()'s result dict (the
    per-request lists removed), with process_one_metric()'s mean/median/std/pNN keys."""
    result = {
        "date": "20261127-101500",
        "endpoint_type": "openai",
        "backend": "openai",
        "label": None,
        "model_id": "llama3-8b",
        "tokenizer_id": "/models/llama3-8b",
        "num_prompts": 100,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": 4,
        "duration": 12.5,
        "completed": 98,
        "failed": 2,
        "total_input_tokens": 50176,
        "total_output_tokens": 6272,
        "request_throughput": 7.84,
        "request_goodput": None,
        "output_throughput": 501.76,
        "total_token_throughput": 4515.84,
        "max_output_tokens_per_s": 620.0,
        "max_concurrent_requests": 4,
        "rtfx": 0.0,
    }
    for metric, median, p99 in (
        ("ttft", 45.5, 120.25),
        ("tpot", 7.5, 9.75),
        ("itl", 7.25, 15.5),
        ("e2el", 520.0, 700.0),
    ):
        result |= {
            f"mean_{metric}_ms": median * 1.1,
            f"median_{metric}_ms": median,
            f"std_{metric}_ms": 1.0,
            f"p99_{metric}_ms": p99,
        }
    return result | over


def test_read_result_takes_vllm_field_names(tmp_path):
    path = tmp_path / "c4.json"
    path.write_text(json.dumps(vllm_result_json()))
    got = read_result(path)
    assert got == {
        "concurrency": 4,
        "num_prompts": 100,
        "completed": 98,
        "failed": 2,
        "duration_s": 12.5,
        "total_input_tokens": 50176,
        "total_output_tokens": 6272,
        "request_throughput": 7.84,
        "output_throughput": 501.76,
        "total_token_throughput": 4515.84,
        "median_ttft_ms": 45.5,
        "p99_ttft_ms": 120.25,
        "median_tpot_ms": 7.5,
        "p99_tpot_ms": 9.75,
        "median_itl_ms": 7.25,
        "p99_itl_ms": 15.5,
        "median_e2el_ms": 520.0,
        "p99_e2el_ms": 700.0,
        "result_file": str(path),
    }


def test_read_result_without_failed_field_and_with_nan(tmp_path):
    raw = vllm_result_json(median_ttft_ms=float("nan"))
    del raw["failed"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(raw))  # json.dump writes NaN as vLLM's may
    got = read_result(path)
    assert got["failed"] == 2 and got["median_ttft_ms"] is None
    json.dumps(got, allow_nan=False)  # fit for a manifest
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BenchError):
        read_result(tmp_path / "bad.json")


def test_roofline_formula():
    # batch 1: 8 GB of weights, 100 tok/s on one GPU of 3350 GB/s -> 800 GB/s of 3350
    assert roofline_fraction(100.0, 8e9, 1, 3350.0) == pytest.approx(800 / 3350)
    # concurrency 32: 3200 tok/s is 100 decode steps/s, each reading the 140 GB once, over 4 GPUs
    assert roofline_fraction(3200.0, 140e9, 4, 3350.0, concurrency=32) == pytest.approx(100 * 140e9 / (4 * 3350e9))
    # the same tokens/s at higher concurrency means fewer steps: a smaller fraction
    assert roofline_fraction(3200.0, 140e9, 4, 3350.0, concurrency=64) == pytest.approx(
        0.5 * 100 * 140e9 / (4 * 3350e9)
    )
    for bad in (
        (None, 1e9, 1, 1.0),
        (1.0, 0, 1, 1.0),
        (1.0, 1e9, 0, 1.0),
        (1.0, 1e9, 1, None),
        (float("nan"), 1e9, 1, 1.0),
    ):
        assert roofline_fraction(*bad) is None


def fake_client(tmp_path, body: str) -> list:
    """An argv shaped like bench_argv's whose 'client' is a Python one-liner."""
    return [
        sys.executable,
        "-c",
        body,
        "--save-result",
        "--result-dir",
        str(tmp_path),
        "--result-filename",
        "r.json",
        "--max-concurrency",
        "3",
    ]


def test_run_bench_reads_the_result_and_removes_a_stale_one(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(vllm_result_json(completed=1)))
    body = (
        "import json, os, sys; d = sys.argv[sys.argv.index('--result-dir') + 1]; "
        f"json.dump({vllm_result_json(max_concurrency=None)!r}, open(os.path.join(d, 'r.json'), 'w')); print('ran')"
    )
    got = run_bench(fake_client(tmp_path, body), os.environ, 30, tmp_path / "bench.log")
    assert got["completed"] == 98 and got["concurrency"] == 3 and got["wall_s"] > 0
    assert "ran" in (tmp_path / "bench.log").read_text()
    # exits 0 but saves nothing: an error, not the stale file
    with pytest.raises(BenchError, match="wrote no"):
        run_bench(fake_client(tmp_path, "print('nothing')"), os.environ, 30, tmp_path / "bench.log")
    with pytest.raises(BenchError, match="code 3") as err:
        run_bench(
            fake_client(tmp_path, "import sys; print('boom'); sys.exit(3)"), os.environ, 30, tmp_path / "bench.log"
        )
    assert "boom" in err.value.log_tail


def test_run_bench_timeout_kills_the_whole_group(tmp_path):
    marker = f"bench-timeout-{os.getpid()}-{time.time_ns()}"
    # the client starts a grandchild, then hangs: both must be gone after the timeout
    body = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', '{marker}']); "
        "time.sleep(120)"
    )
    t0 = time.time()
    with pytest.raises(BenchError, match="no result in 2 s"):
        run_bench(fake_client(tmp_path, body) + [marker], os.environ, 2, tmp_path / "bench.log")
    assert time.time() - t0 < 100  # a hang guard: the client and its grandchild sleep 120 s
    assert processes_mentioning(marker) == []


def test_run_bench_ctrl_c_stops_the_client_and_reraises(tmp_path):
    marker = f"bench-sigint-{os.getpid()}-{time.time_ns()}"
    body = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', '{marker}']); "
        "time.sleep(120)"
    )
    timer = threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_bench(fake_client(tmp_path, body) + [marker], os.environ, HANG_GUARD_S, tmp_path / "bench.log")
    finally:
        timer.cancel()
    assert processes_mentioning(marker) == []


# --------------------------------------------------------------------------- e2e
@pytest.mark.e2e
def test_bench_against_a_real_tiny_server(tmp_path):
    proc, run_dir, port = serve_tiny(tmp_path)
    try:
        manifest = load_manifest(run_dir)
        workload = {
            "dataset": "random",
            "input_len": 32,
            "output_len": 8,
            "num_prompts": 8,
            "concurrencies": [2],
            "ignore_eos": True,
            "seed": 0,
        }
        argv = bench_argv(
            sys.executable,
            manifest["plan"]["url"],
            manifest["plan"]["model_name"],
            manifest["plan"]["model_path"],
            workload,
            2,
            run_dir / "bench",
            "c2.json",
        )
        got = run_bench(argv, os.environ, 600, run_dir / "bench" / "c2.log")
        print("bench argv:", " ".join(argv))
        print("bench figures:", json.dumps(got))
        assert got["completed"] == 8 and got["failed"] == 0 and got["concurrency"] == 2
        assert got["output_throughput"] > 0 and got["request_throughput"] > 0
        assert got["total_output_tokens"] == 8 * 8  # ignore_eos: every request runs to output_len
        assert got["median_ttft_ms"] > 0 and got["median_tpot_ms"] > 0 and got["p99_itl_ms"] > 0
        assert got["duration_s"] > 0 and Path(got["result_file"]).exists()
        raw = json.loads(Path(got["result_file"]).read_text())
        assert raw["num_prompts"] == 8 and raw["max_concurrency"] == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert load_manifest(run_dir)["teardown"]["survivors"] == []
    assert processes_mentioning(f"--port {port}") == []
    assert processes_mentioning(str(run_dir)) == []


def test_prompts_per_concurrency_gives_each_run_full_waves_and_never_fewer_than_num_prompts(tmp_path):
    workload = {**BENCH, "num_prompts": 8, "prompts_per_concurrency": 4}
    counts = {
        c: int(
            flags(bench_argv("py", "http://h:1", "m", "/t", workload, c, tmp_path, "r.json", cli="module"))[
                "--num-prompts"
            ]
        )
        for c in (1, 2, 32)
    }
    assert counts == {1: 8, 2: 8, 32: 128}
    # unset: every concurrency runs num_prompts
    assert flags(
        bench_argv(
            "py",
            "http://h:1",
            "m",
            "/t",
            {**BENCH, "prompts_per_concurrency": None},
            32,
            tmp_path,
            "r.json",
            cli="module",
        )
    )["--num-prompts"] == str(BENCH["num_prompts"])
    with pytest.raises(ValueError, match="prompts_per_concurrency"):
        bench.prompts_for({**BENCH, "prompts_per_concurrency": 0}, 4)


def test_the_gpu_workload_composes_with_its_wave_rule(compose):
    from omegaconf import OmegaConf

    cfg = compose(["bench=h100-quick", "hw=cpu-2", "model=tiny-llama"])
    workload = OmegaConf.to_container(cfg.bench)
    assert [bench.prompts_for(workload, c) for c in workload["concurrencies"]] == [8, 128]


# --------------------------------------------------------------------------- one seed per run
def _random_prompts(tokenizer_dir: Path, seed: int, count: int):
    """The prompts vLLM's own random dataset draws for a run (the dataset `vllm bench serve` uses)."""
    transformers = pytest.importorskip("transformers")
    datasets = pytest.importorskip("vllm.benchmarks.datasets.datasets")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    dataset = datasets.RandomDataset(random_seed=seed, dataset_path=None)
    requests = dataset.sample(tokenizer=tokenizer, num_requests=count, input_len=32, output_len=8, range_ratio=0.0)
    return [r.prompt for r in requests]


@pytest.fixture(scope="module")
def tiny_tokenizer(compose, tmp_path_factory):
    from omegaconf import OmegaConf

    from runner.launch import generate

    model = OmegaConf.to_object(compose(["model=tiny-llama"])).model
    return Path(generate.materialise(model, str(tmp_path_factory.mktemp("cache"))))


def test_one_seed_repeats_the_smaller_runs_prompts_and_run_seed_gives_each_run_new_ones(tiny_tokenizer):
    # Why run_seed exists: with one seed, a 16-prompt run's prompts are the first 16 of a 32-prompt run,
    # which the server's prefix cache would then serve without prefill.
    same = _random_prompts(tiny_tokenizer, 7, 16), _random_prompts(tiny_tokenizer, 7, 32)
    assert same[1][:16] == same[0]
    assert [bench.run_seed(BENCH, k) for k in range(3)] == [7, 8, 9]
    first, second = (_random_prompts(tiny_tokenizer, bench.run_seed(BENCH, k), 16 * (k + 1)) for k in range(2))
    # The tiny tokenizer's vocabulary is small, so a few offsets meet by chance; the first run's
    # prompts are no longer the second run's opening ones.
    assert second[:16] != first
    assert len(set(first) & set(second)) <= 4
    assert bench.run_seed({"seed": None}, 2) == 2
