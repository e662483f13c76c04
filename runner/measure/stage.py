"""mode=bench's stage: vLLM's own `vllm bench serve` against this server, once per concurrency
(runner/measure/bench.py). The result files stay in the run dir; the key figures become the
manifest's ``bench`` section. A benchmark that fails fails the run, after the others ran. The
concurrencies of a sweep share one client process (bench.BenchSession): vLLM is imported once."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from runner import logs
from runner.config.schema import BenchConfig
from runner.launch.spec import LaunchSpec
from runner.measure import bench
from runner.record.manifest import RunFailed

log = logs.get("runner")


@dataclass(frozen=True)
class BenchRecord:
    workload: Dict[str, Any]
    results: List[Dict[str, Any]]
    seconds: float

    def section(self) -> Dict[str, Any]:
        return {"workload": self.workload, "results": self.results}

    def failure(self, run_dir: Path) -> Optional[RunFailed]:
        broken = [r for r in self.results if "error" in r or r.get("failed")]
        if not broken:
            return None
        first = broken[0].get("error") or f"{broken[0].get('failed')} failed requests"
        failed = RunFailed(
            "bench",
            f"{len(broken)} of {len(self.results)} benchmark(s) failed: {first}",
            "bench_failed",
            f"read {run_dir / 'bench.log'}",
        )
        failed.sections["bench"] = self.section()
        return failed


def _one(
    session: bench.BenchSession,
    cfg: BenchConfig,
    spec: LaunchSpec,
    model_path: Optional[str],
    run_dir: Path,
    workload: Dict[str, Any],
    env: Dict[str, str],
    concurrency: int,
    results: List[Dict[str, Any]],
) -> None:
    """One concurrency's benchmark: its figures (or its error) appended to results. Each run has its own
    seed (bench.run_seed), so no prompt of an earlier concurrency is served from the prefix cache."""
    seed = bench.run_seed(workload, len(results))
    argv = bench.bench_argv(
        spec.python,
        spec.url,
        spec.model_name,
        str(model_path),
        {**workload, "seed": seed},
        concurrency,
        run_dir / "bench",
        f"c{concurrency}.json",
    )
    log.info(
        "bench",
        concurrency=concurrency,
        prompts=bench.prompts_for(workload, concurrency),
        input_len=workload["input_len"],
        output_len=workload["output_len"],
    )
    try:
        figures = session.run(argv, env, cfg.timeout_s, run_dir / "bench.log")
    except bench.BenchError as exc:
        results.append({"concurrency": concurrency, "seed": seed, "error": str(exc)})
        log.error("bench failed", concurrency=concurrency, error=str(exc))
        return
    figures["result_file"] = os.path.relpath(figures["result_file"], run_dir)
    figures.pop("log", None)
    figures["seed"] = seed
    results.append(figures)
    log.info(
        "bench done",
        concurrency=concurrency,
        output_tok_s=figures.get("output_throughput"),
        median_ttft_ms=figures.get("median_ttft_ms"),
        median_tpot_ms=figures.get("median_tpot_ms"),
        failed=figures.get("failed"),
    )


def run_benchmarks(
    cfg: BenchConfig, spec: LaunchSpec, model_path: Optional[str], run_dir: Path, api_key: Optional[str]
) -> BenchRecord:
    workload = dataclasses.asdict(cfg)
    workload["request_rate"] = workload["request_rate"] or "inf"
    results: List[Dict[str, Any]] = []
    env = {**os.environ, **spec.env}
    if api_key:
        env["OPENAI_API_KEY"] = api_key  # vLLM's bench client sends it as the bearer token
    started = time.time()
    # one client process for the whole sweep: vLLM is imported once, not once per concurrency
    with bench.BenchSession() as session:
        for concurrency in cfg.concurrencies:
            _one(session, cfg, spec, model_path, run_dir, workload, env, concurrency, results)
    return BenchRecord(workload, results, round(time.time() - started, 3))
