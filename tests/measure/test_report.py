"""runner/measure/report.py: a sweep directory of manifests → report.csv, report.md and three PNGs.

The manifests are the recorded H100 ones of docs/validation/2026-11-27-h100x4-memory with a
"bench" section in the shape runner.measure.bench.run_bench returns, plus a rejected point, a failed
point and a point that never wrote its manifest."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.measure import report
from runner.measure.report import COLUMNS, SweepReport, write_report

ROOT = Path(__file__).resolve().parents[2]
VALIDATION = ROOT / "docs" / "validation" / "2026-11-27-h100x4-memory"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def recorded(name: str) -> dict:
    return json.loads((VALIDATION / f"{name}.manifest.json").read_text())


def bench_result(concurrency: int, out_tps: float, ttft: float, tpot: float, completed: int = 200) -> dict:
    """One entry of manifest["bench"]["results"], as run_bench returns it."""
    return {
        "concurrency": concurrency,
        "num_prompts": 200,
        "completed": completed,
        "failed": 200 - completed,
        "duration_s": 200 * 128 / out_tps,
        "total_input_tokens": 200 * 1024,
        "total_output_tokens": completed * 128,
        "request_throughput": out_tps / 128,
        "output_throughput": out_tps,
        "total_token_throughput": out_tps * (1024 + 128) / 128,
        "median_ttft_ms": ttft,
        "p99_ttft_ms": ttft * 3,
        "median_tpot_ms": tpot,
        "p99_tpot_ms": tpot * 1.5,
        "median_itl_ms": tpot * 0.98,
        "p99_itl_ms": tpot * 2.5,
        "median_e2el_ms": ttft + 127 * tpot,
        "p99_e2el_ms": 3 * ttft + 127 * 1.5 * tpot,
        "result_file": f"/runs/bench/c{concurrency}.json",
        "wall_s": 30.0,
        "log": f"/runs/bench/c{concurrency}.log",
    }


WORKLOAD = {
    "dataset": "random",
    "input_len": 1024,
    "output_len": 128,
    "num_prompts": 200,
    "concurrencies": [1, 8],
    "ignore_eos": True,
    "seed": 0,
}
REJECTED_TEXT = (
    "serve.tensor_parallel_size=3: num_attention_heads=32 is not divisible by it. "
    "Fix: serve.tensor_parallel_size=1, 2 or 4"
)


def point(sweep: Path, name: str, manifest, overrides) -> Path:
    d = sweep / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if manifest is not None:
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return d


def with_bench(manifest: dict, results, hw_name: str = "nvlink-4gpu") -> dict:
    m = copy.deepcopy(manifest)
    m["config"]["hw"]["name"] = hw_name
    m["config"]["hw"]["memory_bandwidth_gbps"] = 3350
    m["config"]["bench"] = dict(WORKLOAD)
    m["bench"] = {"results": results}
    return m


@pytest.fixture
def sweep(tmp_path) -> Path:
    s = tmp_path / "multirun" / "2026-11-27" / "10-00-00"
    common = ["hw=nvlink-4gpu", "mode=check", "serve.port=8102"]
    tp1 = with_bench(recorded("8b-tp1-u80"), [bench_result(1, 110.0, 20.0, 9.0), bench_result(8, 1200.0, 35.0, 6.5)])
    tp2 = with_bench(recorded("auto-8b-tp2"), [bench_result(1, 150.0, 15.0, 6.6), bench_result(8, 2000.0, 25.0, 3.9)])
    # TP=3: rejected before launch (the shape of run.py's rejected manifest: no ready, no vLLM figures)
    rejected = copy.deepcopy(recorded("8b-tp1-u80"))
    rejected.update(
        status="rejected",
        exit_code=2,
        problems=[
            {
                "key": "serve.tensor_parallel_size",
                "value": 3,
                "message": "num_attention_heads=32 is not divisible by it",
                "fix": "serve.tensor_parallel_size=1, 2 or 4",
                "text": REJECTED_TEXT,
            }
        ],
    )
    rejected["plan"]["tensor_parallel_size"] = 3
    rejected["config"]["serve"]["tensor_parallel_size"] = 3
    rejected["config"]["hw"]["name"] = "nvlink-4gpu"
    rejected["timings"] = {"overhead_before_spawn_s": 0.4, "total_s": 0.5}
    for key in ("vllm_reported", "verification", "teardown"):
        rejected.pop(key, None)
    failed = copy.deepcopy(recorded("70b-tp2-u95"))  # cuda_oom at start-up
    failed["config"]["hw"]["name"] = "nvlink-4gpu"
    point(s, "0_serve.tensor_parallel_size=1", tp1, [*common, "model=llama3-8b", "serve.tensor_parallel_size=1"])
    point(s, "1_serve.tensor_parallel_size=2", tp2, [*common, "model=llama3-8b", "serve.tensor_parallel_size=2"])
    point(s, "2_serve.tensor_parallel_size=3", rejected, [*common, "model=llama3-8b", "serve.tensor_parallel_size=3"])
    point(
        s,
        "3_model=llama70b,serve.tensor_parallel_size=2",
        failed,
        [*common, "model=llama70b", "serve.tensor_parallel_size=2"],
    )
    point(s, "4_serve.tensor_parallel_size=4", None, [*common, "model=llama3-8b", "serve.tensor_parallel_size=4"])
    (s / "multirun.yaml").write_text("hydra: {}\n")
    return s


def read_csv(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5000, (path, len(data))  # axes, lines, labels: not an empty canvas
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 400 and height >= 300


def test_csv_rows_values_and_reasons(sweep):
    written = write_report(sweep)
    assert written["csv"] == sweep / "report.csv" and written["md"] == sweep / "report.md"
    rows = read_csv(sweep / "report.csv")
    assert list(rows[0].keys()) == COLUMNS
    # llama3-8b: TP1 c1, TP1 c8, TP2 c1, TP2 c8, rejected TP3, missing TP4; then llama70b failed
    by = {(r["model"], r["tp"], r["concurrency"], r["status"]): r for r in rows}
    assert len(rows) == 7
    tp1c8 = by[("llama3-8b", "1", "8", "verified")]
    assert tp1c8["hw"] == "nvlink-4gpu" and tp1c8["gpu"] == "NVIDIA H100 80GB HBM3" and tp1c8["pp"] == "1"
    assert tp1c8["output_throughput"] == "1200.00" and tp1c8["output_throughput_per_gpu"] == "1200.00"
    assert tp1c8["median_ttft_ms"] == "35.000" and tp1c8["p99_ttft_ms"] == "105.000"
    assert tp1c8["median_tpot_ms"] == "6.500" and tp1c8["completed"] == "200" and tp1c8["failed"] == "0"
    assert tp1c8["kv_cache_tokens"] == "385472" and tp1c8["ready_s"] == "249.27"
    assert tp1c8["reason"] == ""
    # roofline by hand: 1200 tok/s at 8 in flight = 150 decode steps/s; each reads the
    # 14.96 GiB of weights (16,063,407,472.64 B) once, from one GPU of 3350 GB/s:
    # 150 x 16,063,407,472.64 / 3,350,000,000,000 = 0.71925
    assert tp1c8["roofline_fraction"] == "0.7192"
    tp2c8 = by[("llama3-8b", "2", "8", "verified")]
    assert tp2c8["output_throughput_per_gpu"] == "1000.00"
    # 2000 / 8 = 250 steps/s x (7.48 GiB x 2 ranks) / (2 x 3350 GB/s) = 0.59937
    assert tp2c8["roofline_fraction"] == "0.5994"
    assert by[("llama3-8b", "1", "1", "verified")]["roofline_fraction"] == "0.5274"  # 110 x 16.06e9 / 3.35e12

    rej = by[("llama3-8b", "3", "", "rejected")]
    assert rej["reason"] == REJECTED_TEXT
    assert all(
        rej[k] == "" for k in ("output_throughput", "median_ttft_ms", "roofline_fraction", "ready_s", "kv_cache_tokens")
    )
    fail = by[("llama70b", "2", "", "failed")]
    assert fail["reason"].startswith("cuda_oom: CUDA ran out of memory after the weights loaded")
    assert fail["output_throughput"] == "" and fail["roofline_fraction"] == ""
    missing = [r for r in rows if r["status"] == "missing"]
    assert len(missing) == 1 and missing[0]["point"] == "4_serve.tensor_parallel_size=4"
    assert "no manifest.json" in missing[0]["reason"]
    # what its overrides said: it sorts with its model, after TP=3
    assert (missing[0]["model"], missing[0]["hw"], missing[0]["tp"]) == ("llama3-8b", "nvlink-4gpu", "4")
    assert [(r["model"], r["tp"], r["concurrency"]) for r in rows] == [
        ("llama3-8b", "1", "1"),
        ("llama3-8b", "1", "8"),
        ("llama3-8b", "2", "1"),
        ("llama3-8b", "2", "8"),
        ("llama3-8b", "3", ""),
        ("llama3-8b", "4", ""),
        ("llama70b", "2", ""),
    ]
    # the points differ in TP and model only: no variant column content
    assert {r["variant"] for r in rows} == {""}


def test_markdown_table(sweep):
    write_report(sweep)
    md = (sweep / "report.md").read_text()
    assert md.startswith(f"# TP sweep report: {sweep}")
    assert "Points: 1 failed, 1 missing, 1 rejected, 2 verified." in md
    assert "Workload: dataset=random, input_len=1024, output_len=128, num_prompts=200" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 7  # header, separator, one line per row
    header = [c.strip() for c in table[0].strip("|").split("|")]
    # no variant column: the points differ in TP and model only
    assert header[:7] == ["point", "model", "hw", "TP", "PP", "status", "conc."]
    cells = {line.split("|")[1].strip() + "/" + line.split("|")[7].strip(): line for line in table[2:]}
    tp1c8 = cells["0_serve.tensor_parallel_size=1/8"]
    assert "| 1200.00 |" in tp1c8 and "| 71.9 % |" in tp1c8 and "| 385,472 |" in tp1c8
    rejected_line = next(line for line in table[2:] if "| rejected |" in line)
    assert REJECTED_TEXT in rejected_line
    assert "cuda_oom: CUDA ran out of memory" in next(line for line in table[2:] if "| failed |" in line)
    # the answer: most tok/s at TP=2 for both concurrencies; per GPU TP=1 wins at c=8 (1200 vs 1000)
    assert "llama3-8b nvlink-4gpu, concurrency 8: most output tok/s at TP=2 (2000.0 tok/s" in md
    assert "Card: NVIDIA H100 80GB HBM3 (hw=nvlink-4gpu)." in md  # the report names the card it measured
    assert "most per GPU at TP=1 (1200.00 tok/s/GPU)" in md
    for png in report.PLOTS.values():
        assert f"]({png})" in md


def test_plots_are_real_pngs(sweep):
    written = write_report(sweep)
    for name, filename in report.PLOTS.items():
        assert written[name] == sweep / filename
        assert_png(sweep / filename)


def test_report_without_matplotlib_still_writes_the_tables(sweep, monkeypatch):
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)  # import fails as if not installed
    written = write_report(sweep)
    assert set(written) == {"csv", "md"}
    assert len(read_csv(sweep / "report.csv")) == 7
    md = (sweep / "report.md").read_text()
    assert "Plots skipped: matplotlib is not installed" in md and "![" not in md


def test_only_rejected_points_still_make_a_report(tmp_path):
    s = tmp_path / "sweep"
    m = recorded("8b-tp1-u80")
    m.update(
        status="rejected",
        problems=[{"key": "k", "value": 1, "message": "m", "fix": "f", "text": "k=1: m | x\nnext. Fix: f"}],
    )
    point(s, "0", m, ["serve.tensor_parallel_size=1"])
    written = write_report(s)
    assert read_csv(written["csv"])[0]["reason"] == "k=1: m | x\nnext. Fix: f"
    assert "k=1: m \\| x next. Fix: f" in written["md"].read_text()  # escaped for the table
    for name in report.PLOTS:
        assert_png(written[name])  # empty axes saying "no benchmark figures"


def test_variant_names_what_else_differs(tmp_path):
    s = tmp_path / "sweep"
    base = with_bench(recorded("8b-tp1-u80"), [bench_result(4, 500.0, 20.0, 8.0)])
    point(s, "0", base, ["model=llama3-8b", "serve.tensor_parallel_size=1", "serve.gpu_memory_utilization=0.8"])
    point(s, "1", base, ["model=llama3-8b", "serve.tensor_parallel_size=1", "serve.gpu_memory_utilization=0.9"])
    written = write_report(s)
    rows = read_csv(written["csv"])
    assert [r["variant"] for r in rows] == ["serve.gpu_memory_utilization=0.8", "serve.gpu_memory_utilization=0.9"]
    md = written["md"].read_text()
    assert "| point | variant | model |" in md and "| serve.gpu_memory_utilization=0.9 |" in md


def test_bench_error_and_missing_bandwidth(tmp_path):
    s = tmp_path / "sweep"
    m = with_bench(
        recorded("8b-tp1-u80"), [bench_result(1, 110.0, 20.0, 9.0), {"concurrency": 64, "error": "timed out"}]
    )
    del m["config"]["hw"]["memory_bandwidth_gbps"]
    point(s, "0", m, [])
    rows = read_csv(write_report(s)["csv"])
    assert rows[0]["output_throughput"] == "110.00" and rows[0]["roofline_fraction"] == ""  # no bandwidth: no roofline
    assert (
        rows[1]["concurrency"] == "64"
        and rows[1]["reason"] == "bench: timed out"
        and rows[1]["output_throughput"] == ""
    )


def test_callback_writes_the_report_and_never_raises(sweep, tmp_path, capsys):
    cb = SweepReport()
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "report.csv").exists() and (sweep / "report.md").exists()
    assert "sweep report:" in capsys.readouterr().out
    # nothing to report on, a config without hydra, a report that fails: logged, not raised
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "nowhere")}}}))
    cb.on_multirun_end(OmegaConf.create({}))
    cb.on_multirun_end(None)
    (sweep / "report.csv").unlink()
    (sweep / "report.csv").mkdir()  # unwritable as a file
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))


def test_callback_falls_back_to_the_jobs_directories(sweep, tmp_path):
    cb = SweepReport()

    class JobReturn:  # what Hydra passes to on_job_end: its hydra_cfg names the output dir
        def __init__(self, out):
            self.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(out)}}})

    for d in sorted(sweep.iterdir()):
        if d.is_dir():
            cb.on_job_end(OmegaConf.create({}), JobReturn(d))
    # ${now:...} evaluated again after the sweep names a directory that does not exist
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "multirun" / "later")}}}))
    assert (sweep / "report.md").exists()


def test_cli(sweep, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "runner.measure.report", str(sweep)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"csv: {sweep / 'report.csv'}" in done.stdout and "throughput_vs_tp:" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "runner.measure.report", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "no such sweep directory" in bad.stderr


def test_hydra_multirun_calls_the_callback(tmp_path):
    """A real `python -m runner -m` sweep in mode=plan (nothing launched): runner/conf/config.yaml
    registers the callback, and the report lands in hydra.sweep.dir."""
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            "-m",
            "hw=nvlink-4gpu",
            "model=llama3-8b",
            "mode=plan",
            "serve.tensor_parallel_size=1,2,3",
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 2), done.stderr[-3000:]
    rows = read_csv(sweep / "report.csv")
    assert sorted((r["tp"], r["status"]) for r in rows) == [("1", "planned"), ("2", "planned"), ("3", "rejected")]
    assert "num_attention_heads=32" in next(r["reason"] for r in rows if r["tp"] == "3")
    assert (sweep / "report.md").exists() and (sweep / "throughput_vs_tp.png").exists()
