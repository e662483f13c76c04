"""One run: compose → probe → plan → preflight → launch → ready → verify → [bench] → record →
teardown. Each stage is a function in its package that takes the earlier stages' records and
returns a new one; this module calls them in order, and the manifest is built from those
records in one place (``_write_manifest`` → runner/record/manifest.py ``build_manifest``).

``execute`` returns the exit code: 0 verified/planned, 2 rejected (bad input: nothing is
launched), 1 failed (vLLM did not come up, or did not verify).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner import logs
from runner.config import validate
from runner.config.compose_errors import duplicate_override, hydra_dir_override, problem_from_compose_error
from runner.config.schema import Mode, RunnerConfig
from runner.launch import slurm
from runner.launch.pyenv import module_argv, with_runner_path
from runner.launch.spec import LaunchSpec
from runner.plan import cluster, forecast, memory
from runner.plan.build import Plan, make_plan
from runner.plan.rules import valid_tp_sizes
from runner.plan.shape import ModelShape
from runner.preflight.gate import Preflight, run_preflight
from runner.probe import models
from runner.probe.hardware import HardwareProbe, probe_hardware
from runner.probe.versions import installed_vllm
from runner.problems import Problem
from runner.record import sections
from runner.record.manifest import (
    Failure,
    RunFailed,
    Timings,
    build_manifest,
    now_iso,
    runner_side_versions,
    write_json_atomic,
)
from runner.record.redact import redact_argv, redact_env, redact_tree, scrub_files, secret_values

if TYPE_CHECKING:  # the launch side's records; its modules are imported when a launch runs
    from runner.launch.server import Launched, RuntimeFacts
    from runner.measure.stage import BenchRecord
    from runner.preflight.allreduce import CollectiveCheck
    from runner.verify.completion import Completion
    from runner.verify.ready import Readiness
    from runner.verify.reference import Equivalence

EXIT_OK, EXIT_FAILED, EXIT_REJECTED = 0, 1, 2
log = logs.get("runner")


# --------------------------------------------------------------------------- stage records
@dataclass(frozen=True)
class Composed:
    """The composed config as plain Python, and where and when this run started."""

    cfg: RunnerConfig
    node: DictConfig
    run_dir: Path
    process_start: float  # the interpreter's start: overhead and total are counted from it
    run_start: float
    started_at: str
    api_key: Optional[str]
    tp_equivalence: bool


@dataclass(frozen=True)
class Probed:
    """What the machine and the model directory say; asked once per run."""

    probe: HardwareProbe
    hf_config: Optional[Dict[str, Any]]
    shape: Optional[ModelShape]
    problems: Tuple[Problem, ...]  # the model inspection's and the interpreter's
    python: str
    vllm: Optional[str]
    weights_on_disk: Optional[Dict[str, Any]]


class Progress:
    """The records the stages have returned so far (each set once, never edited), so every exit
    path writes the same manifest from them."""

    def __init__(self, composed: Composed):
        self.composed = composed
        self.versions: Dict[str, Any] = runner_side_versions()
        self.probed: Optional[Probed] = None
        self.plan: Optional[Plan] = None
        self.preflight: Optional[Preflight] = None
        self.notes: List[str] = []  # said after planning (plan mode's model files)
        self.spec: Optional[LaunchSpec] = None
        self.collective: Optional[CollectiveCheck] = None
        self.launched: Optional[Launched] = None
        self.runtime_facts: Optional[RuntimeFacts] = None
        self.topology_matrix: Optional[str] = None
        self.ready: Optional[Readiness] = None
        self.completion: Optional[Completion] = None
        self.reported: Optional[Dict[str, Any]] = None
        self.nccl_transport: Optional[Dict[str, Any]] = None
        self.equivalence: Optional[Equivalence] = None
        self.bench: Optional[BenchRecord] = None
        self.teardown: Optional[Dict[str, Any]] = None
        self.failure_sections: Dict[str, Any] = {}
        self.performance: Optional[Dict[str, Any]] = None  # predicted from the plan's records, once

    @property
    def server(self):
        return self.launched.server if self.launched is not None and self.teardown is None else None


# --------------------------------------------------------------------------- entry
def execute(cfg_node: DictConfig, run_dir: Path, process_start: float, sweep: bool = False) -> int:
    if getattr(cfg_node.mode, "value", cfg_node.mode) == "tune":  # plans and launches runs of its own
        from runner.tune.run import execute as tune

        return tune(cfg_node, run_dir, process_start)
    job = slurm.role(os.environ) if cfg_node.hw.nodes > 1 else None
    if job is None:
        return _execute_here(cfg_node, run_dir, process_start, sweep)
    return _execute_slurm(job, cfg_node, run_dir, process_start, sweep)


def _execute_slurm(job, cfg_node: DictConfig, run_dir: Path, process_start: float, sweep: bool) -> int:
    """A multi-node SLURM job: the first node starts Ray's head and runs the point, the others
    join it as Ray workers until the job ends (runner/launch/slurm.py)."""
    from runner.preflight import ray as ray_cluster  # multi-node jobs only

    device = "cpu" if getattr(cfg_node.hw.device, "value", cfg_node.hw.device) == "cpu" else "cuda"
    devices = cluster.devices_per_node(cfg_node.hw) or 1
    code = slurm.run(slurm.ray_argv(job, devices, device), os.environ)
    if not job.is_head:
        return code
    if code != 0:
        print(
            f"error: ray start --head failed on {job.head} (exit {code}). Fix: read the lines above; "
            "is ray installed (pip install -e '.[multinode]')?",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        deadline = time.time() + 300
        while True:  # the workers start at the same time as this node: wait for them to join
            summary, _ = ray_cluster.check_ray_cluster(
                job.address, devices * job.nodes, device=device, expect_nodes=job.nodes
            )
            if summary.get("alive_nodes", 0) >= job.nodes or time.time() > deadline:
                break
            time.sleep(5)
        # the job's own cluster, given to the point as its config (a copy: Hydra's stays as composed)
        point = OmegaConf.merge(cfg_node, {"hw": {"ray_address": job.address, "node_ips": list(job.hosts)}})
        return _execute_here(point, run_dir, process_start, sweep)
    finally:
        slurm.run(["ray", "stop"], os.environ)


def _execute_here(cfg_node: DictConfig, run_dir: Path, process_start: float, sweep: bool = False) -> int:
    mode = getattr(cfg_node.mode, "value", cfg_node.mode)
    if cfg_node.get("resume") and (previous := _verified_before(Path(run_dir), str(mode))):
        print(f"resume: {run_dir} already holds a verified {mode} run ({previous}); skipped")
        return EXIT_OK
    if twice := duplicate_override(sys.argv[1:]):  # Hydra lets the last one win, silently
        return reject_before_compose(twice, sys.argv[1:], Path(run_dir))
    try:
        composed = compose(cfg_node, Path(run_dir), process_start, sweep)
    except OmegaConfBaseException as exc:  # an interpolation that does not resolve: bad input
        return reject_before_compose(exc, sys.argv[1:], Path(run_dir))
    run = Progress(composed)
    logs.log_to_run_dir(run.composed.run_dir / "runner.jsonl")
    try:
        return _execute(run)
    finally:
        if run.server is not None:  # an exception we did not expect: never leave vLLM behind
            _stop(run)
        logs.log_to_run_dir(None)


def _execute(run: Progress) -> int:
    c = run.composed
    # values no later stage should see (NaN, names that break argv, keys the schema lacks)
    early = validate.unknown_keys(c.node) + validate.config_problems(c.cfg)
    if early:
        run.preflight = Preflight(tuple(early))
        return _reject(run)
    run.probed = probe(c)
    run.plan = plan(c, run.probed)
    run.preflight = preflight(c, run.probed, run.plan)
    if c.cfg.replay:
        _check_replay(run)
    _write_plan_json(run)
    for note in run.plan.notes:
        (log.warning if note.startswith("WARNING") else log.info)("plan", note=note)
    if c.cfg.mode is Mode.doctor:
        return _doctor_verdict(run)
    if not run.preflight.ok:
        return _reject(run)
    if c.cfg.mode is Mode.plan:
        return _planned(run)
    return _launch_to_teardown(run)


# --------------------------------------------------------------------------- compose, probe, plan, preflight
def compose(cfg_node: DictConfig, run_dir: Path, process_start: float, sweep: bool) -> Composed:
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    cfg: RunnerConfig = OmegaConf.to_object(cfg_node)
    # A secret given as an override (+hw.env.HF_TOKEN=…) must not stay in Hydra's copies.
    scrub_files(run_dir / ".hydra", secret_values(OmegaConf.to_container(cfg_node, resolve=True)))
    key_env = cfg.serve.api_key_env
    # TP equivalence: on by default in sweeps (verify.tp_equivalence=null), else as set.
    wanted = cfg.verify.tp_equivalence
    return Composed(
        cfg=cfg,
        node=cfg_node,
        run_dir=run_dir,
        process_start=process_start,
        run_start=started,
        started_at=now_iso(),
        api_key=os.environ.get(key_env) if key_env else None,
        tp_equivalence=sweep if wanted is None else wanted,
    )


def probe(c: Composed) -> Probed:
    cfg = c.cfg
    launching = cfg.mode is not Mode.plan
    # a launch asks for the topology matrix while vLLM loads, not before it starts
    hw = probe_hardware(with_topology=not launching)
    hf_config, found = models.inspect_model(
        cfg.model, cfg.cache_dir, cfg.serve.trust_remote_code, planning_only=not launching
    )
    python = cfg.launch.python or sys.executable
    version = None
    if not shutil.which(python):
        found.append(
            Problem(
                "launch.python",
                python,
                "no such interpreter",
                "launch.python=/path/to/python-with-vllm, or leave it unset",
            )
        )
    else:
        version = _vllm_version_for(python) if launching else installed_vllm()[1]
        if hf_config and version and os.path.realpath(python) == os.path.realpath(sys.executable):
            found += _dropped_architecture(cfg, hf_config, version)
            if launching:
                found += _missing_torchvision(cfg, hf_config)
    return Probed(
        probe=hw,
        hf_config=hf_config,
        shape=ModelShape.from_hf_config(hf_config) if hf_config else None,
        problems=tuple(found),
        python=python,
        vllm=version,
        weights_on_disk=models.safetensors_weights(models.model_dir(cfg.model, cfg.cache_dir)),
    )


def _dropped_architecture(cfg, hf_config: Mapping[str, Any], version: str) -> List[Problem]:
    """An architecture the installed vLLM's registry names as removed or moved to a plugin: vLLM
    would stop on it after its start-up; said before anything starts."""
    arch, key, value = _architecture_key(cfg, hf_config)
    verdict = validate.dropped_architecture(arch) if arch else None
    if verdict is None:
        return []
    kind, detail = verdict
    if kind == "removed":
        why = f"vLLM {version} no longer serves {arch} (its registry: supported until v{detail})"
        fix = f"launch.python=<a Python whose vLLM is v{detail} or older>, or another model"
    else:
        why = f"vLLM {version} serves {arch} only through an out-of-tree plugin"
        fix = f"install the plugin ({detail}) into vLLM's Python"
    return [Problem(key, value, why, fix)]


def _architecture_key(cfg, hf_config: Mapping[str, Any]) -> Tuple[Optional[str], str, Any]:
    """(config.json's first architecture, the key a problem about it names, that key's value)."""
    names = hf_config.get("architectures")
    arch = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None
    return (arch, "model.path", cfg.model.path) if cfg.model.path else (arch, "model.hf_config.architectures", arch)


def _missing_torchvision(cfg, hf_config: Mapping[str, Any]) -> List[Problem]:
    """A multimodal model whose vLLM code imports torchvision (read from the installed sources)
    where this Python has none: vLLM would stop on it seconds into its start; said before it."""
    arch, key, value = _architecture_key(cfg, hf_config)
    if not arch or "vision_config" not in hf_config or importlib.util.find_spec("torchvision") is not None:
        return []
    chain = validate.torchvision_chain(arch)
    if not chain:
        return []
    from runner.diagnose.signatures import torch_paired_fix  # the failing case only

    why = f"vLLM's {arch} code imports torchvision ({' -> '.join(chain)}), and vLLM's Python has none"
    return [Problem(key, value, why, torch_paired_fix("torchvision"))]


def _vllm_version_for(python: str) -> Optional[str]:
    """The vLLM version launch.python finds (another interpreter is asked, not imported)."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return installed_vllm()[1]
    out = subprocess.run(
        module_argv(python, "runner.preflight.runtime", "--vllm-version"),
        capture_output=True,
        text=True,
        env=with_runner_path(),
    )
    return out.stdout.strip() or None


def plan(c: Composed, p: Probed) -> Plan:
    return make_plan(
        c.cfg, p.probe, p.hf_config, p.vllm, os.environ, python=p.python, weights_on_disk=p.weights_on_disk
    )


def preflight(c: Composed, p: Probed, planned: Plan) -> Preflight:
    launching = c.cfg.mode is not Mode.plan
    return run_preflight(c.cfg, planned, p.probe, p.shape, p.problems, p.python, p.vllm, launching)


def _check_replay(run: Progress) -> None:
    """replay=: can this machine take the original's run? A problem rejects; a warning is noted."""
    from runner.record import replay

    c, p = run.composed, run.probed
    problems, warnings = replay.check_machine(c.cfg.replay, c.cfg, p.probe, run.plan, p.vllm)
    run.preflight = dataclasses.replace(run.preflight, problems=run.preflight.problems + tuple(problems))
    for warning in warnings:
        log.warning("replay", warning=warning)
    run.notes += warnings


def _write_plan_json(run: Progress) -> None:
    """Written before anything runs: what will be launched, and with which environment."""
    record = sections.plan_record(run.plan) | {"problems": [p.to_dict() for p in run.preflight.problems]}
    write_json_atomic(run.composed.run_dir / "plan.json", record)


# --------------------------------------------------------------------------- the verdicts that launch nothing
def _reject(run: Progress) -> int:
    _write_manifest(run, "rejected", EXIT_REJECTED)
    for problem in run.preflight.problems:
        print(f"error: {problem}", file=sys.stderr)
    where = run.composed.run_dir / "manifest.json"
    print(
        f"rejected: {len(run.preflight.problems)} problem(s); nothing was started; manifest: {where}", file=sys.stderr
    )
    return EXIT_REJECTED


def _doctor_verdict(run: Progress) -> int:
    from runner.preflight import doctor  # mode=doctor and launches only

    rows = run.preflight.doctor_rows
    print(doctor.render(rows))
    failed = [r for r in rows if r.status == doctor.FAIL]
    code = EXIT_REJECTED if failed else EXIT_OK
    _write_manifest(run, "rejected" if failed else "planned", code)
    where = run.composed.run_dir / "manifest.json"
    print(f"doctor: {len(failed)} failing check(s); manifest: {where}", file=sys.stderr)
    return code


def _planned(run: Progress) -> int:
    cfg = run.composed.cfg
    # the printed command must run as printed: write the (small) files of a generated or
    # dummy-weight model now, or its --model path would not exist until a launch
    from runner.launch import generate  # only plan mode and launches write model files

    try:
        generate.materialise(cfg.model, cfg.cache_dir)
    except OSError as e:
        run.notes.append(f"model files not written ({e}); the first launch writes them")
    needs = models.launch_needs(cfg.model, cfg.cache_dir, run.probed.hf_config)
    run.notes += needs
    _write_manifest(run, "planned", EXIT_OK)
    print(_plan_text(run.plan, cfg.hw, run.performance))
    for note in needs:
        print(f"note: {note}")
    return EXIT_OK


# --------------------------------------------------------------------------- launch → teardown
def _launch_to_teardown(run: Progress) -> int:
    """launch → ready → verify → [bench] → record → teardown (or keep serving)."""
    c, cfg = run.composed, run.composed.cfg
    try:
        _launch_and_verify(run)
    except RunFailed as failure:
        return _fail(run, failure, EXIT_FAILED)
    except KeyboardInterrupt as interrupt:
        name, code = _interrupt_code(interrupt)
        stage = "verify" if run.ready is not None else "start-up"
        return _fail(run, RunFailed(stage, f"{name} received; vLLM stopped", "interrupted", "run it again"), code)

    if cfg.mode is Mode.bench:
        try:
            _benchmarks(run)
        except RunFailed as failure:
            return _fail(run, failure, EXIT_FAILED)
        except KeyboardInterrupt as interrupt:
            name, code = _interrupt_code(interrupt)
            return _fail(run, RunFailed("bench", f"{name} received; vLLM stopped", "interrupted", "run it again"), code)

    if cfg.mode in (Mode.check, Mode.bench):
        teardown = _stop(run)
        code = EXIT_OK if teardown and not teardown["survivors"] else EXIT_FAILED
        _write_manifest(run, "verified" if code == EXIT_OK else "failed", code)
        print(
            f"verified {run.plan.model_name} at TP={run.plan.tensor_parallel_size} in {run.ready.ready_s:.1f} s; "
            f"manifest: {c.run_dir / 'manifest.json'}"
        )
        for r in run.bench.results if run.bench else []:
            print(
                f"bench c={r['concurrency']}: {r.get('output_throughput') or 0:.1f} output tok/s, "
                f"median TTFT {r.get('median_ttft_ms') or 0:.1f} ms, "
                f"median TPOT {r.get('median_tpot_ms') or 0:.2f} ms, "
                f"{r.get('completed')} ok / {r.get('failed')} failed"
            )
        return code
    return _serve_until_stopped(run)


def _launch_and_verify(run: Progress) -> None:
    """Each stage's record is kept as it returns, so a failure's manifest holds what ran."""
    # The launch side's modules are imported here, not at the top: mode=plan never needs them
    # and would pay for every import (benchmarks/startup.py measures it).
    from runner.diagnose.nccl import nccl_transport
    from runner.launch import generate
    from runner.launch.server import RuntimeFacts, start_server
    from runner.preflight.allreduce import check_collective
    from runner.probe.hardware import topology_matrix
    from runner.record import vllm_log
    from runner.verify.chat import has_chat_template
    from runner.verify.completion import check_completion
    from runner.verify.ready import wait_ready

    c, cfg, plan_ = run.composed, run.composed.cfg, run.plan
    run.spec = LaunchSpec.from_plan(plan_)
    if cfg.launch.collective_check and plan_.world_size >= 2:
        run.collective = check_collective(plan_, run.spec, cfg.launch)
        if run.collective.failure is not None:
            raise run.collective.failure
        run.spec = run.collective.spec
    models.fetch_hub_model(cfg.model)
    generate.materialise(cfg.model, cfg.cache_dir)
    run.launched = start_server(run.spec, c.run_dir, cfg.launch.echo_log, c.process_start, c.run_start)
    # manifest-only facts, gathered while vLLM loads
    run.runtime_facts = RuntimeFacts(run.spec)
    if run.probed.probe.gpus:
        run.topology_matrix = topology_matrix()
    run.ready = wait_ready(run.server, run.spec.url, run.spec.model_name, cfg.verify.ready_timeout_s, c.api_key)
    log.info("vllm ready", url=run.spec.url, ready_s=run.ready.ready_s)
    chat_template = has_chat_template(models.model_dir(cfg.model, cfg.cache_dir), cfg.serve.extra_args)
    run.completion = check_completion(run.spec.url, run.spec.model_name, cfg.verify, c.api_key, chat_template)
    run.notes += run.completion.notes
    run.runtime_facts.collect()
    whole_log = run.server.log_tail(10**6, window=8 * 2**20)
    run.reported = vllm_log.reported_figures(whole_log)
    if plan_.cluster:
        # which transport NCCL chose between the nodes (Socket for cross-node TP is a warning)
        run.nccl_transport = nccl_transport(whole_log)
        if run.nccl_transport.get("warning"):
            log.warning("nccl transport", warning=run.nccl_transport["warning"])
    checked = sections.fit_check(sections.fit_summary(plan_), run.reported)
    if checked is not None:
        kv = checked["kv_cache_tokens"]
        log.info(
            "memory model",
            kv_tokens_predicted=kv["predicted"],
            kv_tokens_measured=kv["measured"],
            error_pct=kv["error_pct"],
        )
    if not run.completion.passed:
        failed = [k for k, ok in run.completion.verification["checks"].items() if not ok]
        raise RunFailed(
            "verify",
            f"checks failed: {failed}",
            "verification_failed",
            "read the completion in the manifest's verification section",
        )
    log.info("verified", text=run.completion.verification["completion"]["text"], **run.reported)
    if c.tp_equivalence:
        _tp_equivalence(run)


def _tp_equivalence(run: Progress) -> None:
    from runner.verify.reference import Context, check_equivalence

    c, plan_ = run.composed, run.plan
    ctx = Context(c.cfg, plan_, run.probed.probe, run.probed.hf_config, run.probed.vllm, c.run_dir, c.api_key)
    run.equivalence = check_equivalence(ctx, stop_main=lambda: _stop(run))
    eq = run.equivalence.result
    keys = ("role", "passed", "max_abs_diff", "mean_abs_diff", "skipped")
    log.info("tp equivalence", **{k: eq[k] for k in keys if k in eq})
    if eq.get("passed") is False:
        why = (
            eq.get("reason") or f"max |Δ logprob| {eq.get('max_abs_diff')} > {eq.get('tolerance')} ({eq.get('dtype')})"
        )
        raise RunFailed(
            "verify",
            f"TP={plan_.tensor_parallel_size} does not compute what TP=1 does: {why}",
            "tp_mismatch",
            "check the model files and the interconnect (hw.env NCCL settings); "
            "serve.tensor_parallel_size=1 serves correctly meanwhile",
        )


def _benchmarks(run: Progress) -> None:
    from runner.measure.stage import run_benchmarks

    c = run.composed
    run.bench = run_benchmarks(c.cfg.bench, run.spec, run.plan.model_path, c.run_dir, c.api_key)
    failed = run.bench.failure(c.run_dir)
    if failed is not None:
        raise failed


def _serve_until_stopped(run: Progress) -> int:
    """mode=serve: keep serving until Ctrl-C / SIGTERM, or until vLLM dies."""
    _write_manifest(run, "verified", EXIT_OK)
    plan_ = run.plan
    print(
        f"serving {plan_.model_name} (TP={plan_.tensor_parallel_size}) at {run.spec.url}/v1  —  Ctrl-C to stop",
        flush=True,
    )
    server = run.server
    try:
        while server is not None and server.alive():
            server.track_descendants()
            time.sleep(1)
    except KeyboardInterrupt as interrupt:
        by = _interrupt_code(interrupt)[0]
        _stop(run)
        _write_manifest(run, "verified", EXIT_OK, stopped_by=by)
        log.info("stopped", by=by)
        return EXIT_OK
    code = server.proc.returncode if server else None
    return _fail(run, RunFailed("serving", f"vLLM exited with code {code} while serving", "vllm_exited"), EXIT_FAILED)


def _stop(run: Progress) -> Optional[Dict[str, Any]]:
    """Stop the main server (once; later calls return the same record)."""
    if run.server is None:
        return run.teardown
    report = run.launched.server.stop(run.composed.cfg.launch.stop_grace_s)
    if report.survivors:
        log.error("vllm processes survived the stop", pids=report.survivors)
    run.teardown = {
        "signal": report.signal,
        "seconds": report.seconds,
        "exit_code": report.exit_code,
        "survivors_after_term": report.survivors_after_term,
        "survivors": report.survivors,
    }
    return run.teardown


# --------------------------------------------------------------------------- failure
def _fail(run: Progress, failed: RunFailed, code: int) -> int:
    failure = _failure(run, failed)
    if run.runtime_facts is not None:
        run.runtime_facts.collect()
    _stop(run)
    run.failure_sections = dict(failed.sections)
    _write_manifest(run, "failed", code, failure=failure)
    log.error("failed", stage=failure.stage, cause=failure.cause, reason=failure.reason)
    if failure.log_tail:
        print(f"--- last lines of {run.composed.run_dir / 'vllm.log'} ---\n{failure.log_tail}", file=sys.stderr)
    print(f"error: {failure.cause}: {failure.summary}. Fix: {failure.fix}", file=sys.stderr)
    return code


def _failure(run: Progress, failed: RunFailed) -> Failure:
    """The manifest's failure section; vLLM's own log is asked for the root cause first."""
    from runner.diagnose.signatures import NOTE_CAUSES, diagnose  # only a failed launch reads logs

    server = run.server
    tail = server.log_tail(60) if server else ""
    # The whole log (up to 8 MiB): the root cause often sits above pages of rank tracebacks.
    whole = server.log_tail(10**6, window=8 * 2**20) if server else ""
    found = diagnose(whole, _diagnosis_context(run))
    cause, fix = failed.cause, failed.fix
    if found and found.cause not in NOTE_CAUSES and cause != "interrupted":
        cause, fix, summary, evidence = found.cause, found.fix, found.summary, found.evidence
    else:
        summary, evidence = failed.reason, None
    return Failure(
        stage=failed.stage,
        reason=failed.reason,
        cause=cause or "unknown",
        summary=summary,
        fix=fix or f"read {run.composed.run_dir / 'vllm.log'}",
        evidence=evidence,
        log_tail=tail,
    )


def _diagnosis_context(run: Progress) -> Dict[str, Any]:
    """What the failure signatures may name in their fixes (runner/diagnose/signatures.py)."""
    cfg, plan_, p = run.composed.cfg, run.plan, run.probed
    if plan_ is None or p is None:
        return {}
    shape = p.shape
    return {
        "tensor_parallel_size": plan_.tensor_parallel_size,
        "pipeline_parallel_size": plan_.pipeline_parallel_size,
        "device": plan_.device,
        "interconnect": cfg.hw.interconnect.value,
        "gpu_count": plan_.devices_available,
        "valid_tp_sizes": valid_tp_sizes(shape, plan_.devices_available, p.hf_config),
        "num_attention_heads": shape.num_attention_heads if shape else None,
        "num_key_value_heads": shape.num_key_value_heads if shape else None,
        "max_model_len": cfg.serve.max_model_len or cfg.model.max_model_len,
        "gpu_memory_utilization": cfg.serve.gpu_memory_utilization,
        "port": cfg.serve.port,
        "cpu_kvcache_space_gib": cfg.hw.cpu_kvcache_space_gib,
    }


def _interrupt_code(interrupt: KeyboardInterrupt) -> Tuple[str, int]:
    name = getattr(interrupt, "signal_name", "SIGINT (Ctrl-C)")
    return name, getattr(interrupt, "exit_code", 130)


# --------------------------------------------------------------------------- record
def _write_manifest(run: Progress, status: str, exit_code: int, **ending: Any) -> Dict[str, Any]:
    """The manifest, from the records the stages returned so far (the one place it is built)."""
    c = run.composed
    versions = dict(run.versions)
    if run.probed is not None:
        versions["vllm"] = run.probed.vllm
    if run.runtime_facts is not None:
        versions.update(run.runtime_facts.facts)
    found: Dict[str, Any] = {}
    if run.plan is not None:
        p, plan_, pre = run.probed, run.plan, run.preflight
        fit = sections.fit_summary(plan_)
        found.update(
            config=redact_tree(OmegaConf.to_container(c.node, resolve=True)),
            plan=sections.plan_record(plan_, run.spec.env if run.spec else None),
            hardware=sections.hardware_summary(p.probe, run.topology_matrix),
            model=sections.model_summary(c.cfg, plan_, p.hf_config),
            placement=plan_.placement,
            fit=fit,
            cluster=pre.cluster,
            doctor=[dataclasses.asdict(row) for row in pre.doctor_rows] or None,
        )
        if run.reported is not None:
            found["fit_check"] = sections.fit_check(fit, run.reported)
        if run.performance is None:
            run.performance = _performance(c.cfg, {**found, "versions": versions}, run.notes)
        found["performance"] = run.performance
    if run.collective is not None:
        found["collective"] = run.collective.record
    if run.completion is not None:
        verification = dict(run.completion.verification)
        if run.equivalence is not None:
            verification["tp_equivalence"] = run.equivalence.result
            if run.equivalence.result.get("passed") is False:
                verification["passed"] = False
        found["verification"] = verification
    if run.equivalence is not None and run.equivalence.reference_teardown is not None:
        found["reference_teardown"] = run.equivalence.reference_teardown
    if run.bench is not None:
        found["bench"] = run.bench.section()
        if run.performance and run.performance.get("predicted"):
            found["bench"]["predicted"] = forecast.against_measured(run.performance, run.bench.results)
    found.update(
        vllm_reported=run.reported,
        nccl_transport=run.nccl_transport,
        teardown=run.teardown,
        timings=_timings(run),
    )
    found.update(run.failure_sections)
    if c.cfg.replay:
        from runner.record.replay import origin

        found["replayed_from"] = origin(c.cfg.replay)
    found.update(ending)
    problems = [pr.to_dict() for pr in run.preflight.problems] if run.preflight else []
    notes = list(run.plan.notes if run.plan else ()) + list(run.spec.notes if run.spec else ()) + run.notes
    manifest = build_manifest(
        status=status,
        exit_code=exit_code,
        mode=c.cfg.mode.value,
        run_dir=c.run_dir,
        started_at=c.started_at,
        command=redact_argv(sys.argv),
        versions=versions,
        problems=problems,
        notes=notes,
        **found,
    )
    return manifest.write(c.run_dir)


def _performance(cfg, records: Mapping[str, Any], notes: List[str]) -> Dict[str, Any]:
    """Predicted TTFT / TPOT / tokens/s at the bench group's workload (runner/plan/forecast.py), with
    the calibration file tune.calibration names (stated defaults without one)."""
    data = None
    if cfg.tune.calibration:
        from runner.measure.calibrate import read_calibration  # numpy: only when a file is named

        try:
            data = read_calibration(cfg.tune.calibration)
        except (OSError, ValueError) as e:
            notes.append(f"tune.calibration={cfg.tune.calibration}: not read ({e}); predictions use stated defaults")
        if data is None and not any(n.startswith("tune.calibration=") for n in notes):
            notes.append(f"tune.calibration={cfg.tune.calibration}: no such file; predictions use stated defaults")
    workload = (cfg.bench.input_len, cfg.bench.output_len)
    return forecast.performance_section(records, workload, list(cfg.bench.concurrencies or [1]), data)


def _timings(run: Progress) -> Timings:
    launched, ready = run.launched, run.ready
    return Timings(
        overhead_before_spawn_s=launched.overhead_before_spawn_s if launched else None,
        spawn_s=launched.spawn_s if launched else None,
        collective_s=run.collective.seconds if run.collective is not None else None,
        health_s=ready.health_s if ready else None,
        ready_s=ready.ready_s if ready else None,
        verify_s=run.completion.seconds if run.completion is not None else None,
        bench_s=run.bench.seconds if run.bench is not None else None,
        total_s=round(time.time() - run.composed.process_start, 3),
    )


def _verified_before(run_dir: Path, mode: str) -> Optional[str]:
    """When this run dir's manifest is a verified run of this mode: when it finished."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("status") == "verified" and manifest.get("mode") == mode:
        return manifest.get("finished_at") or "earlier"
    return None


def reject_before_compose(exc: BaseException, argv: List[str], run_dir: Optional[Path] = None) -> int:
    """Bad overrides: Hydra could not even compose a config. Still one line and a manifest."""
    problem = getattr(exc, "problem", None) or problem_from_compose_error(exc, argv)  # replay= names its own
    multirun = any(a in ("-m", "--multirun") for a in argv)
    where = hydra_dir_override(argv, multirun)
    stamp = time.strftime("%Y-%m-%d/%H-%M-%S") + f"-{int(time.time() * 1e6) % 1_000_000:06d}_rejected"
    run_dir = run_dir or (Path(where) if where else Path("outputs") / stamp)
    if (why := validate.run_dir_problem(run_dir)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        print(
            f"error: hydra.run.dir={run_dir}: cannot be written ({why}); no manifest. Fix: hydra.run.dir=outputs/run",
            file=sys.stderr,
        )
        return EXIT_REJECTED
    mode = next((a.split("=", 1)[1] for a in argv if a.startswith("mode=")), "serve")
    manifest = build_manifest(
        status="rejected",
        exit_code=EXIT_REJECTED,
        mode=mode if mode in {m.value for m in Mode} else "serve",
        run_dir=run_dir,
        started_at=now_iso(),
        command=redact_argv(["python", "-m", "runner", *argv]),
        versions=runner_side_versions(),
        problems=[problem.to_dict()],
        notes=["the overrides could not be composed into a config; nothing was probed or started"],
    )
    manifest.write(run_dir)
    print(f"error: {problem}", file=sys.stderr)
    print(f"rejected: nothing was started; manifest: {run_dir / 'manifest.json'}", file=sys.stderr)
    return EXIT_REJECTED


# --------------------------------------------------------------------------- mode=plan's text
def _performance_text(perf: Optional[Mapping[str, Any]]) -> List[str]:
    if not perf:
        return []
    w = perf["workload"]
    if not perf.get("table"):
        return [f"performance at {w['input_len']} in / {w['output_len']} out: not predicted ({perf.get('reason')})"]
    lines = [
        f"performance at {w['input_len']} in / {w['output_len']} out, {perf['card']} "
        f"({perf['calibration']}), each fitting TP size at the most sequences it runs:",
        "  TP  running  limited by     TTFT ms  p99 TTFT  TPOT ms   output tok/s  tok/s/GPU",
    ]
    for r in perf.get("table") or []:
        lines.append(
            f"  {r['tensor_parallel_size']:<3} {r['running']:>7}  {str(r.get('limited_by') or '-'):<12} "
            f"{r['ttft_ms']:>9,.1f} {r['ttft_p99_ms']:>9,.1f} {r['tpot_ms']:>8.2f} "
            f"{r['output_tokens_per_s']:>14,.1f} {r['output_tokens_per_s_per_gpu']:>10,.1f}"
        )
    return lines


def _plan_text(plan: Plan, cfg_hw=None, performance: Optional[Mapping[str, Any]] = None) -> str:
    env = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in redact_env(plan.env).items())  # pastes into a shell
    lines = [
        f"plan: {plan.model_name} on {plan.device} devices {list(plan.devices)} "
        f"(TP={plan.tensor_parallel_size}, PP={plan.pipeline_parallel_size}, {plan.devices_available} available)",
    ]
    fit = plan.estimate.get("fit")
    source = plan.estimate.get("memory_source")
    if fit and plan.device == "cpu":
        lines.append(
            f"fit per rank ({source}): weights {fit['weights_gib_per_gpu']:.2f} GiB, "
            f"KV cache {fit['kv_cache_gib']:.2f} GiB = {fit['kv_cache_tokens']:,} tokens, "
            f"{fit['max_concurrency']:.2f} requests of {fit['max_model_len']:,} tokens"
        )
    elif fit:
        lines.append(
            f"fit per GPU ({source}): {fit['gpu_total_gib']:.2f} GiB x {fit['gpu_memory_utilization']:g} = "
            f"{fit['requested_gib']:.2f} GiB for vLLM: weights {fit['weights_gib_per_gpu']:.2f}, "
            f"activations {fit['activation_peak_gib']:.2f}, "
            f"other {fit['non_torch_gib']:.2f}, KV cache {fit['kv_cache_gib']:.2f} GiB = "
            f"{fit['kv_cache_tokens']:,} tokens, "
            f"{fit['max_concurrency']:.2f} requests of {fit['max_model_len']:,} tokens"
        )
    elif plan.estimate:
        lines.append("estimate: " + ", ".join(f"{k}={v}" for k, v in plan.estimate.items()))
    if fit and plan.device != "cpu":
        lines += memory.describe_stages(fit)
    rows = plan.estimate.get("fit_table", [])
    if rows:
        lines.append("  TP  weights/GPU  KV cache/GPU      KV tokens  concurrency  verdict")
    for row in rows:
        verdict = "fits" if row["fits"] else ("invalid: " if not row["valid"] else "") + str(row["why_not"])
        if row.get("tightest_stage") is not None:
            verdict += f" (tightest: PP stage {row['tightest_stage']})"
        mark = "*" if row["tensor_parallel_size"] == plan.tensor_parallel_size else " "
        lines.append(
            f"{mark} {row['tensor_parallel_size']:<3} {row['weights_gib_per_gpu']:>8.2f} GiB  "
            f"{max(row['kv_cache_gib'], 0):>8.2f} GiB "
            f"{row['kv_cache_tokens']:>14,}  {row['max_concurrency']:>10.2f}x  {verdict}"
        )
    lines += _performance_text(performance)
    lines += [f"note: {n}" for n in plan.notes]
    if plan.cluster and plan.cluster.get("uses_ray") and cfg_hw is not None and not cfg_hw.ray_address:
        lines.append(
            "start Ray first, on each node (head first), then run this on the head with hw.ray_address=HEAD_IP:6379:"
        )
        lines += [f"  {c}" for c in cluster.ray_start_commands(cfg_hw)]
    lines.append(f"command: {env} {' '.join(shlex.quote(a) for a in redact_argv(plan.argv))}")
    return "\n".join(lines)


__all__: List[str] = ["execute", "EXIT_OK", "EXIT_FAILED", "EXIT_REJECTED", "RunFailed"]
