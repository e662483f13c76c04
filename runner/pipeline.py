"""One run: probe → plan → preflight → launch → ready → verify → manifest → teardown.

``execute`` returns the exit code: 0 verified/planned, 2 rejected (bad input: nothing is
launched), 1 failed (vLLM did not come up, or did not verify).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from runner import logs
from runner.config.compose_errors import hydra_dir_override, problem_from_compose_error
from runner.config.schema import Mode, RunnerConfig
from runner.diagnose.signatures import NOTE_CAUSES, diagnose
from runner.launch import process, slurm
from runner.measure import bench
from runner.plan import cluster as multinode
from runner.plan import compat
from runner.plan.build import Plan, Problem, make_plan, valid_tp_sizes
from runner.preflight import doctor
from runner.probe import models
from runner.probe.hardware import HardwareProbe, probe_hardware, topology_matrix
from runner.record import vllm_log
from runner.record.manifest import (
    RUNTIME_PROBE,
    SCHEMA_VERSION,
    dist_version,
    now_iso,
    runner_side_versions,
    write_json_atomic,
)
from runner.record.redact import redact_argv, redact_env, redact_tree, scrub_files, secret_values
from runner.verify import equivalence

EXIT_OK, EXIT_FAILED, EXIT_REJECTED = 0, 1, 2
log = logs.get("runner")


class RunFailed(Exception):
    def __init__(self, stage: str, reason: str, cause: Optional[str] = None, fix: Optional[str] = None):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason, self.cause, self.fix = stage, reason, cause, fix


def _vllm_version_for(python: str) -> Optional[str]:
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return compat.installed_vllm()[1]
    out = subprocess.run(
        [python, "-c", "from runner.plan.compat import installed_vllm as v; print(v()[1] or '')"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    return out.stdout.strip() or None


def hardware_summary(probe: HardwareProbe) -> Dict[str, Any]:
    return {
        "source": probe.source,
        "gpus": [dataclasses.asdict(g) for g in probe.gpus],
        "driver_version": probe.driver_version,
        "cuda_driver_version": probe.cuda_driver_version,
        "cpus_allowed": len(probe.cpus_allowed),
        "inherited_cuda_visible_devices": probe.inherited_cuda_mask,
        "topology_matrix": probe.topology_matrix,
        "links": {f"{a}-{b}": v for (a, b), v in sorted(probe.links.items())},
        "p2p": {f"{a}-{b}": v for (a, b), v in sorted(probe.p2p.items())},
        "numa_nodes": probe.numa_nodes,
        "notes": list(probe.notes),
    }


def fit_summary(plan: Plan) -> Optional[Dict[str, Any]]:
    """The memory plan for the chosen TP size, and the table over every TP size."""
    fit = plan.estimate.get("fit")
    if not fit:
        return None
    return fit | {"source": plan.estimate.get("memory_source"), "table": plan.estimate.get("fit_table", [])}


def fit_check(fit: Optional[Dict[str, Any]], reported: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Predicted against what vLLM reported at start-up: the memory model's report card."""
    if not fit or "kv_cache_tokens" not in reported:
        return None
    measured = reported["kv_cache_tokens"]
    out: Dict[str, Any] = {
        "kv_cache_tokens": {
            "predicted": fit["kv_cache_tokens"],
            "measured": measured,
            "error_pct": round(100 * (fit["kv_cache_tokens"] - measured) / measured, 2) if measured else None,
        },
    }
    profile = reported.get("memory_profile") or {}
    for key, theirs in (
        ("requested_gib", "requested_gib"),
        ("weights_gib_per_gpu", "weights_gib"),
        ("activation_peak_gib", "activation_peak_gib"),
        ("non_torch_gib", "non_torch_gib"),
        ("kv_cache_gib", None),
    ):
        value = reported.get("kv_cache_gib") if theirs is None else profile.get(theirs)
        if value is not None:
            out[key] = {"predicted": fit[key], "measured": value}
    return out


def model_summary(cfg: RunnerConfig, plan: Plan, hf_config: Optional[dict]) -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "name": cfg.model.name,
        "source": cfg.model.source.value,
        "path": plan.model_path,
        "load_format": cfg.model.load_format,
    }
    if hf_config:
        shape = models.ModelShape.from_hf_config(hf_config)
        out.update(dataclasses.asdict(shape))
        out["parameters"] = shape.parameter_count()
    return out


class Run:
    """Carries one run's state so every exit path writes the same manifest."""

    def __init__(self, cfg_node: DictConfig, run_dir: Path, process_start: float):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.process_start = process_start
        self.t0 = time.time()
        self.cfg_node = cfg_node
        self.cfg: RunnerConfig = OmegaConf.to_object(cfg_node)
        # A secret given as an override (+hw.env.HF_TOKEN=…) must not stay in Hydra's copies.
        scrub_files(self.run_dir / ".hydra", secret_values(OmegaConf.to_container(cfg_node, resolve=True)))
        self.server: Optional[process.Server] = None
        self.versions: Dict[str, Any] = runner_side_versions()
        self.timings: Dict[str, float] = {}
        self.manifest: Dict[str, Any] = {}
        self._runtime_probe: Optional[subprocess.Popen] = None
        self.diagnosis_context: Dict[str, Any] = {}
        self.teardown: Optional[Dict[str, Any]] = None
        self.tp_equivalence = False
        self.probe: Optional[HardwareProbe] = None
        self.hf_config: Optional[Dict[str, Any]] = None
        self.doctor_rows: List[doctor.Check] = []
        key_env = self.cfg.serve.api_key_env
        self.api_key: Optional[str] = os.environ.get(key_env) if key_env else None

    # ----------------------------------------------------------------- manifest
    def write_manifest(self, status: str, exit_code: int, **sections: Any) -> Dict[str, Any]:
        self.timings["total_s"] = round(time.time() - self.process_start, 3)
        self.manifest.update(
            {
                "schema_version": SCHEMA_VERSION,
                "status": status,
                "exit_code": exit_code,
                "mode": self.cfg.mode.value,
                "started_at": self.manifest.get("started_at") or now_iso(),
                "finished_at": now_iso(),
                "run_dir": str(self.run_dir),
                "command": redact_argv(sys.argv),
                "versions": self.versions,
                "timings": self.timings,
            }
        )
        self.manifest.update(sections)
        write_json_atomic(self.run_dir / "manifest.json", self.manifest)
        return self.manifest

    def collect_runtime_versions(self) -> None:
        if self._runtime_probe is None:
            return
        try:
            out, _ = self._runtime_probe.communicate(timeout=60)
            self.versions.update(json.loads(out.strip().splitlines()[-1]))
        except Exception as e:  # versions are informative; never fail a run for them
            self.versions["runtime_probe_error"] = repr(e)
            self._runtime_probe.kill()
        self._runtime_probe = None

    # ----------------------------------------------------------------- stages
    def prepare(self) -> Plan:
        """Probe, plan, preflight; write plan.json. Nothing is started here."""
        cfg = self.cfg
        self.manifest["started_at"] = now_iso()
        launching = cfg.mode is not Mode.plan  # mode=plan may plan for a machine elsewhere
        probe = probe_hardware(with_topology=not launching)
        hf_config, preflight = models.inspect_model(cfg.model, cfg.cache_dir)
        shape = models.ModelShape.from_hf_config(hf_config) if hf_config else None
        python = cfg.launch.python or sys.executable
        version = None
        if not shutil.which(python):
            preflight.append(
                Problem(
                    "launch.python",
                    python,
                    "no such interpreter",
                    "launch.python=/path/to/python-with-vllm, or leave it unset",
                )
            )
        else:
            version = _vllm_version_for(python) if launching else compat.installed_vllm()[1]
        on_disk = models.safetensors_weights(models.model_dir(cfg.model, cfg.cache_dir))
        plan = make_plan(cfg, probe, hf_config, version, os.environ, python=python, weights_on_disk=on_disk)
        self.probe, self.hf_config, self.versions["vllm"] = probe, hf_config, version
        # A missing interpreter is said once, by the preflight, not again as "no vLLM".
        said = {p.key for p in preflight}
        problems = tuple(preflight) + tuple(p for p in plan.problems if p.key not in said)
        if launching:
            problems += tuple(self._machine_problems())
            if plan.cluster and cfg.hw.ray_address:
                # attach to the Ray cluster and count what it offers before vLLM asks for it
                summary, found = multinode.check_ray_cluster(
                    str(cfg.hw.ray_address),
                    plan.world_size,
                    device=plan.device,
                    expect_nodes=cfg.hw.nodes,
                    python=python,
                )
                self.manifest["cluster"] = summary
                problems += tuple(found)
            problems += tuple(self._doctor(plan, probe, python, version, shape, problems))
        plan = dataclasses.replace(plan, problems=problems)
        self.manifest.update(
            {
                "config": redact_tree(OmegaConf.to_container(self.cfg_node, resolve=True)),
                "plan": self.plan_record(plan),
                "problems": plan.to_dict()["problems"],
                "notes": list(plan.notes),
                "hardware": hardware_summary(probe),
                "model": model_summary(cfg, plan, hf_config),
                "placement": plan.placement,
                "fit": fit_summary(plan),
            }
        )
        self.diagnosis_context = {
            "tensor_parallel_size": plan.tensor_parallel_size,
            "pipeline_parallel_size": plan.pipeline_parallel_size,
            "device": plan.device,
            "interconnect": cfg.hw.interconnect.value,
            "gpu_count": plan.devices_available,
            "valid_tp_sizes": valid_tp_sizes(shape, plan.devices_available, hf_config),
            "num_attention_heads": shape.num_attention_heads if shape else None,
            "num_key_value_heads": shape.num_key_value_heads if shape else None,
            "max_model_len": cfg.serve.max_model_len or cfg.model.max_model_len,
            "gpu_memory_utilization": cfg.serve.gpu_memory_utilization,
            "port": cfg.serve.port,
            "cpu_kvcache_space_gib": cfg.hw.cpu_kvcache_space_gib,
        }
        # Written before anything runs: what will be launched, and with which environment.
        write_json_atomic(self.run_dir / "plan.json", self.manifest["plan"] | {"problems": self.manifest["problems"]})
        return plan

    def _machine_problems(self) -> List[Problem]:
        cfg, found = self.cfg, []
        if 0 < cfg.serve.port < 65536 and process.port_in_use(cfg.serve.host, cfg.serve.port):
            found.append(
                Problem(
                    "serve.port",
                    cfg.serve.port,
                    "something already listens there",
                    f"serve.port={cfg.serve.port + 1}, or stop the other server",
                )
            )
        if not cfg.model.path and not _writable_dir(models.cache_root(cfg.cache_dir)):
            found.append(
                Problem(
                    "cache_dir",
                    cfg.cache_dir,
                    "cannot be created or written (the model is written there)",
                    "cache_dir=~/.cache/vllm-tp-runner",
                )
            )
        return found

    def _doctor(
        self,
        plan: Plan,
        probe: HardwareProbe,
        python: str,
        version: Optional[str],
        shape: Optional[models.ModelShape],
        problems: Sequence[Problem],
    ) -> List[Problem]:
        """The machine's own checks (the table of mode=doctor); returns the failing ones."""
        architecture = shape.architecture if shape else None
        if self.cfg.mode is Mode.doctor and shutil.which(python):
            runtime = doctor.query_runtime(python, architecture, {**os.environ, **plan.env})
        else:  # every launch's preflight: package metadata only; importing vLLM takes seconds
            own = python == sys.executable
            runtime = {
                "vllm": version,
                "vllm_distribution": compat.installed_vllm()[0] if own else None,
                "torch": dist_version("torch") if own else None,
            }
        rows = doctor.environment_checks(plan, probe, runtime, doctor.shm_bytes(), doctor.nofile_limits(), architecture)
        self.doctor_rows = doctor.table_rows(plan, probe, rows, problems)
        self.manifest["doctor"] = doctor.to_records(self.doctor_rows)
        return doctor.as_problems(rows)

    @staticmethod
    def plan_record(plan: Plan) -> Dict[str, Any]:
        record = plan.to_dict()
        record.pop("problems")
        record.pop("notes")
        record["argv"] = redact_argv(plan.argv)
        record["env"] = redact_env(plan.env)
        return record

    def run_benchmarks(self, plan: Plan) -> None:
        """vLLM's own `vllm bench serve` against this server, once per concurrency
        (runner/measure/bench.py); its result files stay in the run dir, the key figures go to the
        manifest. A benchmark that fails fails the run (bench_failed), after the others."""
        cfg = self.cfg
        workload = dataclasses.asdict(cfg.bench)
        workload["request_rate"] = workload["request_rate"] or "inf"
        results: List[Dict[str, Any]] = []
        self.manifest["bench"] = {"workload": workload, "results": results}
        env = {**os.environ, **plan.env}
        if self.api_key:
            env["OPENAI_API_KEY"] = self.api_key  # vLLM's bench client sends it as the bearer token
        started = time.time()
        for concurrency in cfg.bench.concurrencies:
            argv = bench.bench_argv(
                plan.argv[0],
                plan.url,
                plan.model_name,
                str(plan.model_path),
                workload,
                concurrency,
                self.run_dir / "bench",
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
                figures = bench.run_bench(argv, env, cfg.bench.timeout_s, self.run_dir / "bench.log")
            except bench.BenchError as exc:
                results.append({"concurrency": concurrency, "error": str(exc)})
                log.error("bench failed", concurrency=concurrency, error=str(exc))
                continue
            figures["result_file"] = os.path.relpath(figures["result_file"], self.run_dir)
            figures.pop("log", None)
            results.append(figures)
            log.info(
                "bench done",
                concurrency=concurrency,
                output_tok_s=figures.get("output_throughput"),
                median_ttft_ms=figures.get("median_ttft_ms"),
                median_tpot_ms=figures.get("median_tpot_ms"),
                failed=figures.get("failed"),
            )
        self.timings["bench_s"] = round(time.time() - started, 3)
        broken = [r for r in results if "error" in r or r.get("failed")]
        if broken:
            raise RunFailed(
                "bench",
                f"{len(broken)} of {len(results)} benchmark(s) failed: {broken[0].get('error') or str(broken[0].get('failed')) + ' failed requests'}",
                "bench_failed",
                f"read {self.run_dir / 'bench.log'}",
            )

    def collective_check(self, plan: Plan) -> Plan:
        """All-reduce over the plan's devices before vLLM starts (runner/preflight/collective.py).

        A hang or failure with P2P on that passes with NCCL_P2P_DISABLE=1 gives the launch
        that fallback (and says so); one that fails either way stops the run here."""
        cfg = self.cfg.launch
        backend = "nccl" if plan.device == "cuda" else "gloo"
        script = Path(__file__).resolve().parent / "preflight" / "collective.py"

        def attempt(extra_env: Dict[str, str]) -> Dict[str, Any]:
            argv = [
                plan.argv[0],
                str(script),
                "--world",
                str(plan.world_size),
                "--backend",
                backend,
                "--size-mib",
                str(cfg.collective_size_mib),
                "--timeout-s",
                str(cfg.collective_timeout_s),
            ]
            env = {**os.environ, **plan.env, **extra_env}
            log.info("collective check", backend=backend, devices=list(plan.devices), **extra_env)
            result = process.run_json(argv, env, timeout=cfg.collective_timeout_s + 60)
            result["env"] = extra_env
            return result

        attempts = [attempt({})]
        if (
            not attempts[0].get("ok")
            and plan.device == "cuda"
            and os.environ.get("NCCL_P2P_DISABLE") != "1"
            and plan.env.get("NCCL_P2P_DISABLE") != "1"
        ):
            attempts.append(attempt({"NCCL_P2P_DISABLE": "1"}))
        final = attempts[-1]
        self.manifest["collective"] = {"devices": list(plan.devices), "attempts": attempts, "ok": bool(final.get("ok"))}
        self.timings["collective_s"] = round(sum(a.get("seconds", 0) for a in attempts), 2)
        if not final.get("ok"):
            raise RunFailed(
                "preflight",
                f"{backend} all-reduce over devices {list(plan.devices)} failed: {attempts[0].get('error')}",
                "collective_failed",
                "check the GPUs' P2P path (nvidia-smi topo -p2p r); try hw.env.NCCL_P2P_DISABLE=1, or fewer GPUs (serve.tensor_parallel_size)",
            )
        log.info("collective ok", busbw_gbps=final.get("busbw_gbps"), median_ms=final.get("median_ms"))
        if len(attempts) > 1:
            note = f"NCCL_P2P_DISABLE=1: the all-reduce over {list(plan.devices)} failed with P2P ({attempts[0].get('error')}) and passed without it"
            self.manifest["notes"].append(note)
            log.warning("plan", note=note)
            plan = dataclasses.replace(plan, env={**plan.env, "NCCL_P2P_DISABLE": "1"}, notes=plan.notes + (note,))
            self.manifest["plan"] = self.plan_record(plan)
        return plan

    def launch(self, plan: Plan) -> None:
        cfg = self.cfg
        models.materialise(cfg.model, cfg.cache_dir)
        env = {**os.environ, **plan.env}
        self.timings["overhead_before_spawn_s"] = round(time.time() - self.process_start, 3)
        self.server = process.Server(plan.argv, env, self.run_dir / "vllm.log", echo=cfg.launch.echo_log)
        self.timings["spawn_s"] = round(time.time() - self.t0, 3)
        log.info(
            "vllm started",
            pid=self.server.pid,
            log=str(self.run_dir / "vllm.log"),
            argv=" ".join(redact_argv(plan.argv)),
        )
        self._runtime_probe = subprocess.Popen(
            [plan.argv[0], "-c", RUNTIME_PROBE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        # Manifest-only facts are gathered while vLLM loads, not before it starts.
        if self.manifest["hardware"]["gpus"]:
            self.manifest["hardware"]["topology_matrix"] = topology_matrix()

    def wait_ready(self, plan: Plan, server: Optional[process.Server] = None) -> float:
        try:
            return self._wait_ready(plan, server)
        finally:
            _status_line(None)

    def _wait_ready(self, plan: Plan, server: Optional[process.Server] = None) -> float:
        """process alive → /health answers 200 → /v1/models lists the served name.

        Returns the seconds from spawn to ready; the main server's stages go to the timings."""
        main = server is None
        server = server or self.server
        assert server is not None
        deadline = server.started_at + self.cfg.verify.ready_timeout_s
        health_at: Optional[float] = None
        last_stage = None
        while True:
            server.track_descendants()
            if not server.alive():
                raise RunFailed(
                    "start-up", f"vLLM exited with code {server.proc.returncode} before it was ready", "vllm_exited"
                )
            if time.time() > deadline:
                limit = self.cfg.verify.ready_timeout_s
                raise RunFailed(
                    "start-up",
                    f"not ready after {limit:.0f} s",
                    "startup_timeout",
                    f"verify.ready_timeout_s={max(2 * limit, 60):.0f} (vLLM was still at: {last_stage or 'starting'})",
                )
            stage = vllm_log.current_stage(server.log_tail(200))
            if stage and stage != last_stage:
                _status_line(None)
                log.info(
                    "vllm stage",
                    stage=stage,
                    elapsed_s=round(time.time() - server.started_at, 1),
                    server="main" if main else "reference",
                )
                last_stage = stage
            _status_line(
                f"vLLM {'(reference) ' if not main else ''}{last_stage or 'starting'} … {time.time() - server.started_at:.0f} s"
            )
            if health_at is None:
                if process.http_ok(plan.url + "/health"):
                    health_at = time.time()
                    if main:
                        self.timings["health_s"] = round(health_at - server.started_at, 3)
            else:
                try:
                    listed = process.http_json(plan.url + "/v1/models", timeout=5, api_key=self.api_key)
                    if any(m.get("id") == plan.model_name for m in listed.get("data", [])):
                        _status_line(None)
                        ready = round(time.time() - server.started_at, 3)
                        if main:
                            self.timings["ready_s"] = ready
                        return ready
                except process.HttpError:
                    pass
            time.sleep(0.5)

    def check_equivalence(self, plan: Plan) -> Dict[str, Any]:
        """Teacher-forced logprobs of this server against a TP=1 reference (recorded, given,
        or — in mode=check — launched here once this server has stopped)."""
        cfg = self.cfg
        if cfg.model.load_format == "dummy":
            return {"skipped": "dummy weights are drawn per rank, so a TP=k model is not the TP=1 model"}
        if not (plan.model_path and os.path.isdir(plan.model_path)):
            return {"skipped": "needs a local model directory to key the reference"}
        dtype = equivalence.effective_dtype(cfg.serve.dtype, self.hf_config or {})
        key = equivalence.reference_key(plan.model_path, dtype)
        t = time.time()
        candidate = equivalence.score(
            plan.url, plan.model_name, api_key=self.api_key, timeout=cfg.verify.request_timeout_s
        )
        if plan.world_size == 1:
            meta = {"run_dir": str(self.run_dir), "model": plan.model_path, "vllm": self.versions.get("vllm")}
            path = equivalence.save_reference(cfg.cache_dir, key, candidate, meta)
            return {"role": "reference", "passed": True, "dtype": dtype, "key": key, "reference": str(path)}
        if cfg.verify.tp_reference:
            reference, source = json.loads(Path(os.path.expanduser(cfg.verify.tp_reference)).read_text()), "given"
        else:
            reference, source = equivalence.load_reference(cfg.cache_dir, key), "recorded"
        if reference is None:
            if cfg.mode is not Mode.check:
                return {
                    "skipped": "no TP=1 reference is recorded for this model and dtype: run it once with "
                    "serve.tensor_parallel_size=1 verify.tp_equivalence=true (or mode=check, which launches one)"
                }
            self.stop()  # the GPUs (or cores) are needed for the reference
            reference, source = self.reference_run(plan, key, dtype), "launched"
        result = equivalence.compare(candidate, reference, dtype)
        result.update(
            role="candidate",
            reference_source=source,
            key=key,
            reference_key=reference.get("key"),
            seconds=round(time.time() - t, 2),
        )
        return result

    def reference_run(self, plan: Plan, key: str, dtype: str) -> Dict[str, Any]:
        """Start the same model at TP=1 on a free port, score it, stop it, record it."""
        cfg = self.cfg
        serve = dataclasses.replace(
            cfg.serve, tensor_parallel_size=1, pipeline_parallel_size=1, port=process.free_port()
        )
        ref_plan = make_plan(
            dataclasses.replace(cfg, serve=serve),
            self.probe,
            self.hf_config,
            self.versions.get("vllm"),
            os.environ,
            python=plan.argv[0],
        )
        server = process.Server(ref_plan.argv, {**os.environ, **ref_plan.env}, self.run_dir / "reference-vllm.log")
        log.info(
            "reference started", pid=server.pid, tensor_parallel_size=1, log=str(self.run_dir / "reference-vllm.log")
        )
        try:
            ready = self.wait_ready(ref_plan, server)
            scored = equivalence.score(
                ref_plan.url, ref_plan.model_name, api_key=self.api_key, timeout=cfg.verify.request_timeout_s
            )
        finally:
            report = server.stop(cfg.launch.stop_grace_s)
            self.manifest["reference_teardown"] = dataclasses.asdict(report)
        meta = {
            "run_dir": str(self.run_dir),
            "model": plan.model_path,
            "vllm": self.versions.get("vllm"),
            "ready_s": ready,
        }
        path = equivalence.save_reference(cfg.cache_dir, key, scored, meta)
        return equivalence.load_reference(cfg.cache_dir, key) or {**scored, "key": key, "path": str(path)}

    def verify(self, plan: Plan) -> Dict[str, Any]:
        v = self.cfg.verify
        t = time.time()
        listed = process.http_json(plan.url + "/v1/models", timeout=v.request_timeout_s, api_key=self.api_key)
        ids = [m.get("id") for m in listed.get("data", [])]
        request = {
            "model": plan.model_name,
            "prompt": v.prompt,
            "max_tokens": v.max_tokens,
            "temperature": 0,
            "ignore_eos": True,  # the same number of tokens on any weights, random ones included
        }
        try:
            resp = process.http_json(
                plan.url + "/v1/completions", request, timeout=v.request_timeout_s, api_key=self.api_key
            )
        except process.HttpError as e:
            raise RunFailed("verify", str(e)) from None
        self.timings["verify_s"] = round(time.time() - t, 3)
        choice = (resp.get("choices") or [{}])[0]
        usage = resp.get("usage") or {}
        completion = {
            "prompt": v.prompt,
            "text": choice.get("text") or "",
            "finish_reason": choice.get("finish_reason"),
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
            "latency_s": self.timings["verify_s"],
        }
        checks = {
            "models_lists_served_name": plan.model_name in ids,
            "completion_has_tokens": completion["completion_tokens"] > 0,
            "completion_has_text": bool(completion["text"]),
        }
        return {"passed": all(checks.values()), "checks": checks, "models": ids, "completion": completion}

    def stop(self) -> Optional[Dict[str, Any]]:
        """Stop the main server (once; later calls return the same record)."""
        if self.server is None:
            return self.teardown
        report = self.server.stop(self.cfg.launch.stop_grace_s)
        self.server = None
        if report.survivors:
            log.error("vllm processes survived the stop", pids=report.survivors)
        self.teardown = dataclasses.asdict(report)
        return self.teardown


def execute(cfg_node: DictConfig, run_dir: Path, process_start: float, sweep: bool = False) -> int:
    job = slurm.role(os.environ) if cfg_node.hw.nodes > 1 else None
    if job is None:
        return _execute_here(cfg_node, run_dir, process_start, sweep)
    # A multi-node SLURM job: the first node starts Ray's head and runs the point, the others
    # join it as Ray workers until the job ends (runner/launch/slurm.py).
    device = "cpu" if getattr(cfg_node.hw.device, "value", cfg_node.hw.device) == "cpu" else "cuda"
    devices = multinode.devices_per_node(cfg_node.hw) or 1
    code = slurm.run(slurm.ray_argv(job, devices, device), os.environ)
    if not job.is_head:
        return code
    if code != 0:
        print(
            f"error: ray start --head failed on {job.head} (exit {code}). Fix: read the lines above; is ray installed (pip install -e '.[multinode]')?",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        deadline = time.time() + 300
        while True:  # the workers start at the same time as this node: wait for them to join
            summary, _ = multinode.check_ray_cluster(
                job.address, devices * job.nodes, device=device, expect_nodes=job.nodes
            )
            if summary.get("alive_nodes", 0) >= job.nodes or time.time() > deadline:
                break
            time.sleep(5)
        cfg_node.hw.ray_address = job.address
        cfg_node.hw.node_ips = list(job.hosts)
        return _execute_here(cfg_node, run_dir, process_start, sweep)
    finally:
        slurm.run(["ray", "stop"], os.environ)


def _execute_here(cfg_node: DictConfig, run_dir: Path, process_start: float, sweep: bool = False) -> int:
    mode = getattr(cfg_node.mode, "value", cfg_node.mode)
    if cfg_node.get("resume") and (previous := _verified_before(Path(run_dir), str(mode))):
        print(f"resume: {run_dir} already holds a verified {mode} run ({previous}); skipped")
        return EXIT_OK
    run = Run(cfg_node, run_dir, process_start)
    # TP equivalence: on by default in sweeps (verify.tp_equivalence=null), else as set.
    wanted = run.cfg.verify.tp_equivalence
    run.tp_equivalence = sweep if wanted is None else wanted
    logs.log_to_run_dir(run.run_dir / "runner.jsonl")
    try:
        return _execute(run)
    finally:
        if run.server is not None:  # an exception we did not expect: never leave vLLM behind
            run.stop()
        logs.log_to_run_dir(None)


def _status_line(text: Optional[str]) -> None:
    """A live status line on an interactive terminal (nothing in logs or pipes); None clears it."""
    if not sys.stderr.isatty():
        return
    sys.stderr.write("\r\x1b[2K" + (text or ""))
    sys.stderr.flush()


def _verified_before(run_dir: Path, mode: str) -> Optional[str]:
    """When this run dir's manifest is a verified run of this mode: when it finished."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("status") == "verified" and manifest.get("mode") == mode:
        return manifest.get("finished_at") or "earlier"
    return None


def _failure(run: Run, stage: str, reason: str, cause: Optional[str], fix: Optional[str]) -> Dict[str, Any]:
    """The manifest's failure section; vLLM's own log is asked for the root cause first."""
    tail = run.server.log_tail(60) if run.server else ""
    # The whole log (up to 8 MiB): the root cause often sits above pages of rank tracebacks.
    whole = run.server.log_tail(10**6, window=8 * 2**20) if run.server else ""
    found = diagnose(whole, run.diagnosis_context)
    if found and found.cause not in NOTE_CAUSES and cause != "interrupted":
        cause, fix, summary, evidence = found.cause, found.fix, found.summary, found.evidence
    else:
        summary, evidence = reason, None
    return {
        "stage": stage,
        "reason": reason,
        "cause": cause or "unknown",
        "summary": summary,
        "fix": fix or f"read {run.run_dir / 'vllm.log'}",
        "evidence": evidence,
        "log_tail": tail,
    }


def _fail(run: Run, failure: Dict[str, Any], code: int) -> int:
    run.collect_runtime_versions()
    teardown = run.stop()
    sections: Dict[str, Any] = {"failure": failure}
    if teardown:
        sections["teardown"] = teardown
    run.write_manifest("failed", code, **sections)
    log.error("failed", stage=failure["stage"], cause=failure["cause"], reason=failure["reason"])
    if failure["log_tail"]:
        print(f"--- last lines of {run.run_dir / 'vllm.log'} ---\n{failure['log_tail']}", file=sys.stderr)
    print(f"error: {failure['cause']}: {failure['summary']}. Fix: {failure['fix']}", file=sys.stderr)
    return code


def _interrupt_code(interrupt: KeyboardInterrupt) -> Tuple[str, int]:
    name = getattr(interrupt, "signal_name", "SIGINT (Ctrl-C)")
    return name, getattr(interrupt, "exit_code", 130)


def _execute(run: Run) -> int:
    cfg = run.cfg
    plan = run.prepare()
    for note in plan.notes:
        (log.warning if note.startswith("WARNING") else log.info)("plan", note=note)
    if not plan.ok and cfg.mode is not Mode.doctor:
        run.write_manifest("rejected", EXIT_REJECTED)
        for problem in plan.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(
            f"rejected: {len(plan.problems)} problem(s); nothing was started; manifest: {run.run_dir / 'manifest.json'}",
            file=sys.stderr,
        )
        return EXIT_REJECTED
    if cfg.mode is Mode.doctor:
        print(doctor.render(run.doctor_rows))
        failed = [r for r in run.doctor_rows if r.status == doctor.FAIL]
        run.write_manifest("rejected" if failed else "planned", EXIT_REJECTED if failed else EXIT_OK)
        print(f"doctor: {len(failed)} failing check(s); manifest: {run.run_dir / 'manifest.json'}", file=sys.stderr)
        return EXIT_REJECTED if failed else EXIT_OK
    if cfg.mode is Mode.plan:
        # the printed command must run as printed: write the (small) files of a generated or
        # dummy-weight model now, or its --model path would not exist until a launch
        try:
            models.materialise(cfg.model, cfg.cache_dir)
        except OSError as e:
            run.manifest["notes"].append(f"model files not written ({e}); the first launch writes them")
        run.write_manifest("planned", EXIT_OK)
        print(_plan_text(plan, cfg.hw))
        return EXIT_OK

    try:
        if cfg.launch.collective_check and plan.world_size >= 2:
            plan = run.collective_check(plan)
        run.launch(plan)
        run.wait_ready(plan)
        log.info("vllm ready", url=plan.url, ready_s=run.timings["ready_s"])
        verification = run.verify(plan)
        run.collect_runtime_versions()
        reported = vllm_log.reported_figures(run.server.log_tail(10**6, window=8 * 2**20) if run.server else "")
        run.manifest["verification"] = verification
        run.manifest["vllm_reported"] = reported
        if plan.cluster and run.server:
            # which transport NCCL chose between the nodes (Socket for cross-node TP is a warning)
            run.manifest["nccl_transport"] = multinode.nccl_transport(run.server.log_tail(10**6, window=8 * 2**20))
            if run.manifest["nccl_transport"].get("warning"):
                log.warning("nccl transport", warning=run.manifest["nccl_transport"]["warning"])
        if (checked := fit_check(run.manifest.get("fit"), reported)) is not None:
            run.manifest["fit_check"] = checked
            log.info(
                "memory model",
                kv_tokens_predicted=checked["kv_cache_tokens"]["predicted"],
                kv_tokens_measured=checked["kv_cache_tokens"]["measured"],
                error_pct=checked["kv_cache_tokens"]["error_pct"],
            )
        if not verification["passed"]:
            failed = [k for k, ok in verification["checks"].items() if not ok]
            raise RunFailed(
                "verify",
                f"checks failed: {failed}",
                "verification_failed",
                "read the completion in the manifest's verification section",
            )
        log.info("verified", text=verification["completion"]["text"], **reported)
        if run.tp_equivalence:
            eq = run.check_equivalence(plan)
            verification["tp_equivalence"] = eq
            log.info(
                "tp equivalence",
                **{k: eq[k] for k in ("role", "passed", "max_abs_diff", "mean_abs_diff", "skipped") if k in eq},
            )
            if eq.get("passed") is False:
                verification["passed"] = False
                why = (
                    eq.get("reason")
                    or f"max |Δ logprob| {eq.get('max_abs_diff')} > {eq.get('tolerance')} ({eq.get('dtype')})"
                )
                raise RunFailed(
                    "verify",
                    f"TP={plan.tensor_parallel_size} does not compute what TP=1 does: {why}",
                    "tp_mismatch",
                    "check the model files and the interconnect (hw.env NCCL settings); serve.tensor_parallel_size=1 serves correctly meanwhile",
                )
    except RunFailed as failure:
        return _fail(run, _failure(run, failure.stage, failure.reason, failure.cause, failure.fix), EXIT_FAILED)
    except KeyboardInterrupt as interrupt:
        name, code = _interrupt_code(interrupt)
        stage = "verify" if "ready_s" in run.timings else "start-up"
        return _fail(run, _failure(run, stage, f"{name} received; vLLM stopped", "interrupted", "run it again"), code)

    if cfg.mode is Mode.bench:
        try:
            run.run_benchmarks(plan)
        except RunFailed as failure:
            return _fail(run, _failure(run, failure.stage, failure.reason, failure.cause, failure.fix), EXIT_FAILED)
        except KeyboardInterrupt as interrupt:
            name, code = _interrupt_code(interrupt)
            return _fail(
                run, _failure(run, "bench", f"{name} received; vLLM stopped", "interrupted", "run it again"), code
            )

    if cfg.mode in (Mode.check, Mode.bench):
        teardown = run.stop()
        code = EXIT_OK if teardown and not teardown["survivors"] else EXIT_FAILED
        run.write_manifest("verified" if code == EXIT_OK else "failed", code, teardown=teardown)
        print(
            f"verified {plan.model_name} at TP={plan.tensor_parallel_size} in {run.timings['ready_s']:.1f} s; manifest: {run.run_dir / 'manifest.json'}"
        )
        for r in (run.manifest.get("bench") or {}).get("results", []):
            print(
                f"bench c={r['concurrency']}: {r.get('output_throughput') or 0:.1f} output tok/s, median TTFT {r.get('median_ttft_ms') or 0:.1f} ms, "
                f"median TPOT {r.get('median_tpot_ms') or 0:.2f} ms, {r.get('completed')} ok / {r.get('failed')} failed"
            )
        return code

    # mode=serve: keep serving until Ctrl-C / SIGTERM, or until vLLM dies.
    run.write_manifest("verified", EXIT_OK)
    print(f"serving {plan.model_name} (TP={plan.tensor_parallel_size}) at {plan.url}/v1  —  Ctrl-C to stop", flush=True)
    try:
        while run.server is not None and run.server.alive():
            run.server.track_descendants()
            time.sleep(1)
    except KeyboardInterrupt as interrupt:
        teardown = run.stop()
        run.write_manifest("verified", EXIT_OK, teardown=teardown, stopped_by=_interrupt_code(interrupt)[0])
        log.info("stopped", by=_interrupt_code(interrupt)[0])
        return EXIT_OK
    code = run.server.proc.returncode if run.server else None
    return _fail(
        run, _failure(run, "serving", f"vLLM exited with code {code} while serving", "vllm_exited", None), EXIT_FAILED
    )


def reject_before_compose(exc: BaseException, argv: List[str]) -> int:
    """Bad overrides: Hydra could not even compose a config. Still one line and a manifest."""
    problem = problem_from_compose_error(exc)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    where = hydra_dir_override(argv, multirun)
    stamp = time.strftime("%Y-%m-%d/%H-%M-%S") + f"-{int(time.time() * 1e6) % 1_000_000:06d}_rejected"
    run_dir = Path(where) if where else Path("outputs") / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    mode = next((a.split("=", 1)[1] for a in argv if a.startswith("mode=")), "serve")
    record = {
        "schema_version": SCHEMA_VERSION,
        "status": "rejected",
        "exit_code": EXIT_REJECTED,
        "mode": mode if mode in {m.value for m in Mode} else "serve",
        "started_at": now_iso(),
        "finished_at": now_iso(),
        "run_dir": str(run_dir),
        "command": redact_argv(["python", "-m", "runner", *argv]),
        "problems": [problem.to_dict()],
        "notes": ["the overrides could not be composed into a config; nothing was probed or started"],
        "versions": runner_side_versions(),
    }
    write_json_atomic(run_dir / "manifest.json", record)
    print(f"error: {problem}", file=sys.stderr)
    print(f"rejected: nothing was started; manifest: {run_dir / 'manifest.json'}", file=sys.stderr)
    return EXIT_REJECTED


def _writable_dir(path: Path) -> bool:
    """Could the runner create and write path? Asked without creating anything."""
    path = path.absolute()
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _plan_text(plan: Plan, cfg_hw=None) -> str:
    env = " ".join(f"{k}={v}" for k, v in redact_env(plan.env).items())
    lines = [
        f"plan: {plan.model_name} on {plan.device} devices {list(plan.devices)} "
        f"(TP={plan.tensor_parallel_size}, PP={plan.pipeline_parallel_size}, {plan.devices_available} available)",
    ]
    fit = plan.estimate.get("fit")
    if fit and plan.device == "cpu":
        lines.append(
            f"fit per rank ({plan.estimate.get('memory_source')}): weights {fit['weights_gib_per_gpu']:.2f} GiB, "
            f"KV cache {fit['kv_cache_gib']:.2f} GiB = {fit['kv_cache_tokens']:,} tokens, {fit['max_concurrency']:.2f} requests of {fit['max_model_len']:,} tokens"
        )
    elif fit:
        lines.append(
            f"fit per GPU ({plan.estimate.get('memory_source')}): {fit['gpu_total_gib']:.2f} GiB x {fit['gpu_memory_utilization']:g} = "
            f"{fit['requested_gib']:.2f} GiB for vLLM: weights {fit['weights_gib_per_gpu']:.2f}, activations {fit['activation_peak_gib']:.2f}, "
            f"other {fit['non_torch_gib']:.2f}, KV cache {fit['kv_cache_gib']:.2f} GiB = {fit['kv_cache_tokens']:,} tokens, "
            f"{fit['max_concurrency']:.2f} requests of {fit['max_model_len']:,} tokens"
        )
    elif plan.estimate:
        lines.append("estimate: " + ", ".join(f"{k}={v}" for k, v in plan.estimate.items()))
    rows = plan.estimate.get("fit_table", [])
    if rows:
        lines.append("  TP  weights/GPU  KV cache/GPU      KV tokens  concurrency  verdict")
    for row in rows:
        verdict = "fits" if row["fits"] else ("invalid: " if not row["valid"] else "") + str(row["why_not"])
        mark = "*" if row["tensor_parallel_size"] == plan.tensor_parallel_size else " "
        lines.append(
            f"{mark} {row['tensor_parallel_size']:<3} {row['weights_gib_per_gpu']:>8.2f} GiB  {max(row['kv_cache_gib'], 0):>8.2f} GiB "
            f"{row['kv_cache_tokens']:>14,}  {row['max_concurrency']:>10.2f}x  {verdict}"
        )
    lines += [f"note: {n}" for n in plan.notes]
    if plan.cluster and plan.cluster.get("uses_ray") and cfg_hw is not None and not cfg_hw.ray_address:
        lines.append(
            "start Ray first, on each node (head first), then run this on the head with hw.ray_address=HEAD_IP:6379:"
        )
        lines += [f"  {c}" for c in multinode.ray_start_commands(cfg_hw)]
    lines.append(f"command: {env} {' '.join(_shell_quote(a) for a in redact_argv(plan.argv))}")
    return "\n".join(lines)


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


__all__: List[str] = ["execute", "EXIT_OK", "EXIT_FAILED", "EXIT_REJECTED"]
