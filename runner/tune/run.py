"""mode=tune, the orchestration: plan every candidate, launch the most promising first, bisect each
launched one's load under the SLO, prune what cannot win, write the answer.

Every candidate is planned and launched by the runner itself, as a subprocess, the way a user would
(``python -m runner <the run's overrides> <the candidate's> mode=plan|serve hydra.run.dir=…``), and read
back through its ``manifest.json``: the tune knows the pipeline only by its command line and its
manifest. Everything measured is written under ``<run dir>/candidates/<id>/`` as it happens
(``candidate.json``), so a second run with the same ``hydra.run.dir`` reuses what finished and launches
only what did not.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from runner import logs
from runner.launch.process import group_members, killpg
from runner.launch.pyenv import with_runner_path
from runner.problems import Problem
from runner.record.manifest import build_manifest, now_iso, runner_side_versions, write_json_atomic
from runner.record.redact import redact_argv
from runner.tune import rank, report, space
from runner.tune.bisect import Probe, find_max_load

EXIT_OK, EXIT_FAILED, EXIT_REJECTED = 0, 1, 2
FINISHED = ("measured", "failed")  # what a later run reuses without launching
# Overrides that are about this run, not the configuration served: never passed to a candidate
# (mode and hydra.* are set per candidate) nor written into the winner's recipe.
RUN_WIDE = ("mode", "hydra", "tune", "resume")
NOT_IN_RECIPE = (*RUN_WIDE, "bench", "cache_dir", "serve.port", "launch.python", "verify.ready_timeout_s")
CONFIG_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")
PLAN_TIMEOUT_S = 600.0  # a hang guard: planning takes seconds
log = logs.get("runner")


@dataclass(frozen=True)
class Context:
    run_dir: Path
    base: Tuple[str, ...]  # the run's own overrides, minus RUN_WIDE
    config_flags: Tuple[str, ...]  # --config-dir etc., passed on as given
    choices: Mapping[str, Optional[str]]  # hydra's runtime choices (hw, model, serve, bench)
    slo: rank.Slo
    workload: Dict[str, Any]
    load: str
    max_launches: Optional[int]
    prune: bool
    calibration_path: Optional[str]
    calibration: Optional[Dict[str, Any]]
    stop_grace_s: float
    ready_timeout_s: float
    api_key_env: Optional[str]
    started: float
    warmup: bool = True

    def elapsed(self) -> float:
        return time.time() - self.started

    def say(self, cid: str, stage: str, **fields: Any) -> None:
        """The progress line: which candidate, which stage, seconds since the tune started."""
        log.info("tune", candidate=cid, stage=stage, elapsed_s=round(self.elapsed(), 1), **fields)


# --------------------------------------------------------------------------- entry
def execute(cfg_node: DictConfig, run_dir: Path, process_start: Optional[float] = None) -> int:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    logs.log_to_run_dir(run_dir / "runner.jsonl")
    try:
        return _execute(cfg_node, run_dir, process_start or time.time())
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: the running candidate was stopped on the way out
        print(
            f"tune: interrupted; finished candidates are kept under {run_dir / 'candidates'}: "
            f"the same command with hydra.run.dir={run_dir} resumes",
            file=sys.stderr,
        )
        return getattr(interrupt, "exit_code", 130)
    finally:
        logs.log_to_run_dir(None)


def _execute(cfg_node: DictConfig, run_dir: Path, started: float) -> int:
    tune = OmegaConf.to_container(cfg_node.tune, resolve=True)
    found = input_problems(tune)
    calibration = None
    if not found and tune.get("calibration"):
        from runner.measure.calibrate import read_calibration

        try:
            calibration = read_calibration(tune["calibration"])
        except ValueError as e:
            found.append(Problem("tune.calibration", tune["calibration"], str(e), "python -m runner.measure.calibrate"))
        if calibration is None and not found:
            found.append(
                Problem(
                    "tune.calibration",
                    tune["calibration"],
                    "no such file",
                    "python -m runner.measure.calibrate RUN_DIRS -o calibration.json, or leave tune.calibration unset",
                )
            )
    if found:
        return _reject(run_dir, found)
    overrides, choices = _hydra_overrides(run_dir)
    slo = tune["slo"]
    ctx = Context(
        run_dir=run_dir,
        base=tuple(o for o in overrides if _key(o).split(".")[0] not in RUN_WIDE),
        config_flags=tuple(_config_flags(sys.argv[1:])),
        choices=choices,
        slo=rank.Slo(float(slo["ttft_p99_ms"]), float(slo["tpot_p99_ms"]), _float(slo.get("e2e_p99_ms"))),
        workload=OmegaConf.to_container(cfg_node.bench, resolve=True),
        load=tune["load"],
        max_launches=tune.get("max_launches"),
        prune=bool(tune.get("prune", True)),
        calibration_path=tune.get("calibration"),
        calibration=calibration,
        stop_grace_s=float(cfg_node.launch.stop_grace_s),
        ready_timeout_s=float(cfg_node.verify.ready_timeout_s),
        api_key_env=cfg_node.serve.api_key_env,
        started=started,
        warmup=bool(tune.get("warmup", True)),
    )
    candidates = space.expand(tune["space"])
    return tune_candidates(ctx, candidates, tune)


def _float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def input_problems(tune: Mapping[str, Any]) -> List[Problem]:
    """Bad tune.* input, one Problem each (the SLO's two targets, the space, load, max_launches)."""
    found: List[Problem] = []
    slo = tune.get("slo") or {}
    for key, example in (("ttft_p99_ms", 500), ("tpot_p99_ms", 15), ("e2e_p99_ms", None)):
        value = slo.get(key)
        if value is None and example is not None:
            found.append(
                Problem(f"tune.slo.{key}", None, "mode=tune needs this latency target", f"tune.slo.{key}={example}")
            )
        elif value is not None and not float(value) > 0:
            found.append(Problem(f"tune.slo.{key}", value, "a latency target must be positive", f"tune.slo.{key}=500"))
    found += space.problems(tune.get("space") or {})
    if tune.get("load") not in ("concurrency", "rate"):
        found.append(Problem("tune.load", tune.get("load"), "expected concurrency or rate", "tune.load=concurrency"))
    launches = tune.get("max_launches")
    if launches is not None and (isinstance(launches, bool) or not isinstance(launches, int) or launches < 1):
        found.append(Problem("tune.max_launches", launches, "expected a positive integer", "tune.max_launches=4"))
    return found


def _reject(run_dir: Path, found: Sequence[Problem]) -> int:
    manifest = build_manifest(
        status="rejected",
        exit_code=EXIT_REJECTED,
        mode="tune",
        run_dir=run_dir,
        started_at=now_iso(),
        command=redact_argv(sys.argv),
        versions=runner_side_versions(),
        problems=[p.to_dict() for p in found],
        notes=["mode=tune's input is not usable; nothing was planned or started"],
    )
    manifest.write(run_dir)
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    print(
        f"rejected: {len(found)} problem(s); nothing was started; manifest: {run_dir / 'manifest.json'}",
        file=sys.stderr,
    )
    return EXIT_REJECTED


# --------------------------------------------------------------------------- overrides
def _key(override: str) -> str:
    key = override.split("=", 1)[0]
    return key.lstrip("+~")


def _hydra_overrides(run_dir: Path) -> Tuple[List[str], Dict[str, Optional[str]]]:
    """The run's command-line overrides and config-group choices, as Hydra recorded them."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return list(hc.overrides.task), dict(OmegaConf.to_container(hc.runtime.choices))
    except ValueError:  # not under Hydra (a test calling execute): read what Hydra wrote
        pass
    hydra_dir = run_dir / ".hydra"
    overrides = OmegaConf.load(hydra_dir / "overrides.yaml") if (hydra_dir / "overrides.yaml").exists() else []
    choices: Dict[str, Optional[str]] = {}
    if (hydra_dir / "hydra.yaml").exists():
        choices = dict(OmegaConf.to_container(OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.choices))
    return [str(o) for o in overrides], choices


def _config_flags(argv: Sequence[str]) -> List[str]:
    """--config-dir and friends from the command line: a candidate must compose from the same configs."""
    out: List[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in CONFIG_FLAGS:
            if "=" in arg:
                out.append(arg)
            elif i + 1 < len(argv):
                out += [arg, argv[i + 1]]
                i += 1
        i += 1
    return out


def candidate_overrides(ctx: Context, cand: space.Candidate) -> List[str]:
    """The run's overrides with the candidate's on top (a base override of the same key is dropped)."""
    mine = {_key(o) for o in cand.overrides}
    return [o for o in ctx.base if _key(o) not in mine] + list(cand.overrides)


def runner_argv(ctx: Context, overrides: Sequence[str], mode: str, run_dir: Path) -> List[str]:
    return [
        sys.executable,
        "-m",
        "runner",
        *ctx.config_flags,
        *overrides,
        f"mode={mode}",
        f"hydra.run.dir={space.quoted(str(run_dir))}",
    ]


# --------------------------------------------------------------------------- the loop
def _record_path(ctx: Context, cid: str) -> Path:
    return ctx.run_dir / "candidates" / cid / "candidate.json"


def _save(ctx: Context, record: Dict[str, Any]) -> None:
    path = _record_path(ctx, record["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


def _previous(ctx: Context, cid: str, overrides: Sequence[str]) -> Optional[Dict[str, Any]]:
    """A finished record of this candidate with the same overrides, from an earlier run in this dir."""
    try:
        old = json.loads(_record_path(ctx, cid).read_text())
    except (OSError, ValueError):
        return None
    if old.get("overrides") == list(overrides) and old.get("state") in FINISHED:
        return old
    return None


def tune_candidates(ctx: Context, candidates: Sequence[space.Candidate], tune: Mapping[str, Any]) -> int:
    records: Dict[str, Dict[str, Any]] = {}
    for cand in candidates:
        overrides = candidate_overrides(ctx, cand)
        previous = _previous(ctx, cand.id, overrides)
        if previous is not None:
            previous["resumed"] = True
            records[cand.id] = previous
            ctx.say(cand.id, "resumed", state=previous["state"])
        else:
            records[cand.id] = {
                "id": cand.id,
                "label": cand.label,
                "candidate": list(cand.overrides),
                "values": cand.as_dict(),
                "overrides": overrides,
                "state": "pending",
                "resumed": False,
            }
    to_plan = [c for c in candidates if records[c.id]["state"] == "pending"]
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        planned = pool.map(lambda c: plan_candidate(ctx, c.id, records[c.id]["overrides"]), to_plan)
        for cand, outcome in zip(to_plan, planned, strict=True):
            records[cand.id].update(outcome)
            _save(ctx, records[cand.id])

    mixed = _mixed_machines(ctx, records)
    if mixed is not None:
        return _reject(ctx.run_dir, [mixed])

    forecasts: Dict[str, rank.Forecast] = {}
    card = None
    for cid, record in records.items():
        manifest = _plan_manifest(ctx, cid)
        if manifest is not None and manifest.get("status") == "planned":
            card = card if card is not None else rank.card_of(manifest)
            fc = rank.predict_manifest(
                manifest, (ctx.workload["input_len"], ctx.workload["output_len"]), ctx.slo, ctx.calibration
            )
            forecasts[cid] = fc
            record["forecast"] = fc.to_dict()
    err, err_source = rank.error_margin(ctx.calibration, card)
    predicting = any(f.predicted for f in forecasts.values())
    order = rank.order([c.id for c in candidates], forecasts)
    launches = 0
    for cid in order:
        record = records[cid]
        if record["state"] in FINISHED or record["state"] == "refused":
            continue
        best = _measured_best(records.values())
        why = (
            rank.twin_prune_reason(record, list(records.values())) if ctx.prune and ctx.load == "concurrency" else None
        )
        if why is None and predicting and ctx.prune:
            why = rank.prune_reason(forecasts.get(cid), best[0] if best else None, err)
        if why:
            record.update(state="pruned", reason=why)
            ctx.say(cid, "pruned", reason=why)
            _save(ctx, record)
            continue
        if ctx.max_launches is not None and launches >= ctx.max_launches:
            record.update(state="not_launched", reason=f"not launched: tune.max_launches={ctx.max_launches} reached")
            _save(ctx, record)
            continue
        launches += 1
        record.update(launch_and_measure(ctx, cid, record, forecasts.get(cid)))
        measured, manifest = record.get("measured"), _plan_manifest(ctx, cid)
        if measured and manifest and ctx.load == "concurrency":
            workload = (ctx.workload["input_len"], ctx.workload["output_len"])
            record["predicted_at_measured"] = rank.predicted_point(
                manifest, workload, int(measured["concurrency"]), ctx.calibration
            )
        _save(ctx, record)

    result = summary(ctx, candidates, records, order, err, err_source, predicting, tune)
    write_json_atomic(ctx.run_dir / "tune.json", result)
    report.write_all(ctx.run_dir, result)
    winner = result["winner"]
    if winner:
        print(report.answer(result))
        print(f"tune: {ctx.run_dir / 'tune.md'}; recipe: {ctx.run_dir / report.RECIPE_NAME}")
        return EXIT_OK
    print(f"tune: no candidate met the SLO ({ctx.slo.describe()}); {ctx.run_dir / 'tune.md'}", file=sys.stderr)
    return EXIT_FAILED


def _measured_best(records: Sequence[Mapping[str, Any]]) -> Optional[Tuple[float, str]]:
    scored = [
        (r["measured"]["tokens_per_s_per_gpu"], r["id"])
        for r in records
        if r.get("state") == "measured" and r.get("measured")
    ]
    return max(scored) if scored else None


def _machine_of(manifest: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The device a candidate was planned for, as its plan manifest names it: the first GPU's name
    (NVML's), or "cpu"."""
    if not manifest:
        return None
    if (manifest.get("plan") or {}).get("device") == "cpu":
        return "cpu"
    return rank.gpu_name(manifest)


def _mixed_machines(ctx: Context, records: Mapping[str, Mapping[str, Any]]) -> Optional[Problem]:
    """A problem where this run would launch on another device than the one its run dir's finished
    candidates were measured on: measurements of two cards do not rank together, and a pruned
    candidate would be launched again on the wrong machine. Resuming with nothing left to launch
    (a report redrawn elsewhere) is fine."""
    measured = {
        _machine_of(_plan_manifest(ctx, cid))
        for cid, r in records.items()
        if r.get("resumed") and r.get("state") in FINISHED
    } - {None}
    planned_now = {
        _machine_of(_plan_manifest(ctx, cid))
        for cid, r in records.items()
        if not r.get("resumed") and r.get("state") == "planned"
    } - {None}
    if not measured or not planned_now or planned_now <= measured:
        return None
    return Problem(
        "hydra.run.dir",
        str(ctx.run_dir),
        f"its candidates were measured on {', '.join(sorted(measured))}; this run plans for "
        f"{', '.join(sorted(planned_now - measured))}, and measurements of two devices do not rank together",
        "a new hydra.run.dir for this machine, or resume this one on the machine that measured it",
    )


def _plan_manifest(ctx: Context, cid: str) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((ctx.run_dir / "candidates" / cid / "plan" / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- planning
def plan_candidate(ctx: Context, cid: str, overrides: Sequence[str]) -> Dict[str, Any]:
    """``mode=plan`` for one candidate: planned (with its layout), or refused with its problems."""
    folder = ctx.run_dir / "candidates" / cid
    plan_dir = folder / "plan"
    folder.mkdir(parents=True, exist_ok=True)
    (plan_dir / "manifest.json").unlink(missing_ok=True)  # an earlier run's verdict must not stand in for this one
    ctx.say(cid, "planning")
    t0 = time.time()
    argv = runner_argv(ctx, overrides, "plan", plan_dir)
    try:
        done = subprocess.run(
            argv,
            env=with_runner_path(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PLAN_TIMEOUT_S,
        )
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        output = f"mode=plan gave no answer in {PLAN_TIMEOUT_S:g} s"
    (folder / "plan.out").write_text(output)
    seconds = round(time.time() - t0, 2)
    manifest = _plan_manifest(ctx, cid)
    if manifest is None:
        last = (output.strip().splitlines() or ["no output"])[-1]
        return {"state": "refused", "reason": f"mode=plan wrote no manifest: {last}", "plan_s": seconds}
    if manifest.get("status") != "planned":
        problems = [p.get("text") or str(p) for p in manifest.get("problems") or []]
        return {
            "state": "refused",
            "reason": "; ".join(problems) or f"mode=plan ended {manifest.get('status')}",
            "problems": manifest.get("problems") or [],
            "plan_s": seconds,
        }
    plan = manifest.get("plan") or {}
    return {
        "state": "planned",
        "plan_s": seconds,
        "tensor_parallel_size": plan.get("tensor_parallel_size"),
        "pipeline_parallel_size": plan.get("pipeline_parallel_size") or 1,
        "device": plan.get("device"),
        "max_running": _max_running(manifest, ctx.workload),
    }


def _max_running(manifest: Mapping[str, Any], workload: Mapping[str, Any]) -> Optional[int]:
    """The most requests the server runs at once: max_num_seqs (vLLM's default when unset) and the KV
    cache at input_len + output_len tokens each."""
    serve = rank.serve_settings(manifest)
    limits = [serve.get("max_num_seqs")]
    tokens = (manifest.get("fit") or {}).get("kv_cache_tokens")
    if tokens:
        limits.append(int(tokens) // max(1, int(workload["input_len"]) + int(workload["output_len"])))
    limits = [int(v) for v in limits if v]
    return min(limits) if limits else None


# --------------------------------------------------------------------------- launching and measuring
def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _wait_verified(proc: subprocess.Popen, serve_dir: Path, timeout_s: float) -> Optional[Dict[str, Any]]:
    """The serve run's manifest once it says verified, or whatever it says when the run ends first;
    None when neither happens within timeout_s (the caller stops it)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        manifest = _read_json(serve_dir / "manifest.json")
        if manifest is not None and manifest.get("status") == "verified":
            return manifest
        if proc.poll() is not None:
            return _read_json(serve_dir / "manifest.json") or {"status": "failed", "exit_code": proc.returncode}
        time.sleep(1.0)
    return None


def stop_child(proc: subprocess.Popen, grace_s: float) -> Dict[str, Any]:
    """SIGINT, the way Ctrl-C stops a serve run (it stops vLLM and records the stop), then wait; whatever
    of its process group is still alive after that gets SIGTERM, then SIGKILL."""
    pgid, t0 = proc.pid, time.time()
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=grace_s + 60)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.time() + 10
    while group_members(pgid) and time.time() < deadline:
        time.sleep(0.2)
    forced = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not group_members(pgid):
            break
        forced.append(sig.name)
        killpg(pgid, sig)
        end = time.time() + 10
        while group_members(pgid) and time.time() < end:
            time.sleep(0.2)
    if proc.poll() is None:
        proc.wait(timeout=10)
    return {
        "signal": "SIGINT",
        "forced": forced,
        "exit_code": proc.returncode,
        "seconds": round(time.time() - t0, 2),
        "survivors": group_members(pgid),
    }


def _failure_text(manifest: Optional[Mapping[str, Any]], timeout_s: float) -> str:
    if manifest is None:
        return f"not verified within {timeout_s:g} s"
    failure = manifest.get("failure") or {}
    if failure:
        return f"{failure.get('cause')}: {failure.get('summary') or failure.get('reason')}. Fix: {failure.get('fix')}"
    problems = [p.get("text") or str(p) for p in manifest.get("problems") or []]
    if problems:
        return "; ".join(problems)
    return f"the serve run ended {manifest.get('status')} (exit {manifest.get('exit_code')})"


def _set_aside(serve_dir: Path) -> None:
    """An earlier, unfinished attempt's serve dir is kept (its logs), under another name."""
    if not serve_dir.exists():
        return
    n = 1
    while serve_dir.with_name(f"{serve_dir.name}.attempt-{n}").exists():
        n += 1
    serve_dir.rename(serve_dir.with_name(f"{serve_dir.name}.attempt-{n}"))


def launch_and_measure(
    ctx: Context, cid: str, record: Mapping[str, Any], forecast: Optional[rank.Forecast]
) -> Dict[str, Any]:
    """Start the candidate with mode=serve, bisect its load with vLLM's bench, stop it."""
    folder = ctx.run_dir / "candidates" / cid
    serve_dir = folder / "serve"
    _set_aside(serve_dir)
    argv = runner_argv(ctx, record["overrides"], "serve", serve_dir)
    ctx.say(cid, "launching", command=" ".join(shlex.quote(a) for a in argv))
    t0 = time.time()
    with open(folder / "serve.out", "ab") as out:
        proc = subprocess.Popen(
            argv,
            env=with_runner_path(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        outcome = _measure_served(ctx, cid, record, forecast, proc, serve_dir, t0)
    finally:
        teardown = stop_child(proc, ctx.stop_grace_s)
        ctx.say(cid, "stopped", seconds=teardown["seconds"], survivors=teardown["survivors"])
    outcome["teardown"] = teardown
    return outcome


class _Prober:
    """One served candidate's benchmark runs: ``measure(load)`` runs vLLM's bench at that load through
    ``session`` (a BenchSession: one client process for every probe of the server) and adds up the
    bench seconds."""

    def __init__(self, ctx: Context, cid: str, plan: Mapping[str, Any], folder: Path, cap: Optional[int]):
        self.ctx, self.cid, self.plan, self.folder, self.cap = ctx, cid, plan, folder, cap
        self.gpus = int(plan.get("tensor_parallel_size") or 1) * int(plan.get("pipeline_parallel_size") or 1)
        env = {**os.environ, **(plan.get("env") or {})}
        if ctx.api_key_env and os.environ.get(ctx.api_key_env):
            env["OPENAI_API_KEY"] = os.environ[ctx.api_key_env]  # vLLM's bench client sends it as the bearer token
        self.env = env
        self.python = (plan.get("argv") or [sys.executable])[0]
        self.bench_s = 0.0
        self.runs = 0  # benchmarks run against this server: each takes its own seed (bench.run_seed)
        self.session = None

    def measure(self, load: float, tag: str = "") -> Dict[str, Any]:
        from runner.measure import bench

        ctx, workload = self.ctx, dict(self.ctx.workload)
        if ctx.load == "concurrency":
            concurrency, name, what = int(load), f"{tag}c{int(load)}.json", f"{tag}bench c={int(load)}"
        else:  # a request rate: the rate sets the load, the clients are capped at what the server runs
            concurrency, name, what = int(self.cap or 1024), f"{tag}rate{load:g}.json", f"{tag}bench rate={load:g}/s"
            workload.update(request_rate=load, prompts_per_concurrency=None)
        ctx.say(self.cid, what, prompts=bench.prompts_for(workload, concurrency))
        workload["seed"] = bench.run_seed(workload, self.runs)
        self.runs += 1
        plan = self.plan
        argv = bench.bench_argv(
            self.python,
            plan["url"],
            plan["model_name"],
            plan["model_path"],
            workload,
            concurrency,
            self.folder / "bench",
            name,
        )
        t = time.time()
        try:
            figures = self.session.run(
                argv, self.env, float(workload.get("timeout_s") or 1800), self.folder / "bench.log"
            )
        except bench.BenchError as e:
            figures = {"concurrency": concurrency, "error": str(e)}
        figures["seed"] = workload["seed"]
        self.bench_s += figures.get("wall_s") or (time.time() - t)
        figures["tokens_per_s_per_gpu"] = (figures.get("output_throughput") or 0.0) / self.gpus
        return figures


def _measure_served(
    ctx: Context,
    cid: str,
    record: Mapping[str, Any],
    forecast: Optional[rank.Forecast],
    proc: subprocess.Popen,
    serve_dir: Path,
    t0: float,
) -> Dict[str, Any]:
    from runner.measure import bench

    folder = serve_dir.parent
    timeout_s = ctx.ready_timeout_s + 120
    manifest = _wait_verified(proc, serve_dir, timeout_s)
    if manifest is None or manifest.get("status") != "verified":
        reason = _failure_text(manifest, timeout_s)
        ctx.say(cid, "failed", reason=reason)
        return {"state": "failed", "reason": f"failed: {reason}", "launch_s": round(time.time() - t0, 2)}
    timings = manifest.get("timings") or {}
    ready_s = timings.get("ready_s") or round(time.time() - t0, 2)
    ctx.say(cid, "ready", ready_s=ready_s)
    plan = manifest.get("plan") or {}
    cap = record.get("max_running")
    prober = _Prober(ctx, cid, plan, folder, cap)

    def progress(p: Probe) -> None:
        ctx.say(cid, "probe", load=p.load, meets=p.meets, why=p.why)

    start = None
    if forecast is not None and forecast.predicted and forecast.best_concurrency:
        start = forecast.best_concurrency
        if ctx.load == "rate":
            point = next((q for q in forecast.points if q["concurrency"] == start), None)
            start = point["requests_per_s"] if point else None
    # one vLLM bench client for every probe of this server: vLLM is imported once, not per probe
    with bench.BenchSession() as prober.session:
        warmup = _warm_up(prober.measure, start, cap) if ctx.warmup else None
        search = find_max_load(
            prober.measure,
            ctx.slo,
            load=ctx.load,
            start=start,
            upper=cap if ctx.load == "concurrency" else None,
            on_probe=progress,
        )
    best, gpus, bench_s = search.best, prober.gpus, prober.bench_s
    measured = _measured(best, gpus) if best else None
    reason = None if best else f"no load met the SLO: {search.probes[0].why if search.probes else 'no probe'}"
    return {
        "state": "measured",
        "reason": reason,
        "measured": measured,
        "search": search.to_dict(),
        "warmup": warmup,
        "serve_command": (manifest.get("command") or []),
        "launch_s": ready_s,
        "bench_s": round(bench_s, 2),
        "gpu_s": round(float(ready_s) + bench_s, 2),
        "gpus": gpus,
    }


def _warm_up(measure, start: Optional[float], cap: Optional[int]) -> Dict[str, Any]:
    """One benchmark at the search's first load, its figures kept but not judged against the SLO: the
    first batches a fresh server runs are slower than the rest (kernels compiled and tuned on first
    use), and the first probe would otherwise carry that."""
    load = start or 1
    if cap:
        load = min(load, cap)
    figures = measure(load, "warmup-")
    keys = (
        "concurrency",
        "seed",
        "output_throughput",
        "median_ttft_ms",
        "p99_ttft_ms",
        "median_tpot_ms",
        "wall_s",
        "error",
    )
    return {"load": load, **{k: figures.get(k) for k in keys if k in figures}}


def _measured(best: Probe, gpus: int) -> Dict[str, Any]:
    f = best.figures
    tpot = f.get("median_tpot_ms")
    return {
        "load": best.load,
        "concurrency": f.get("concurrency"),
        "output_tokens_per_s": f.get("output_throughput"),
        "tokens_per_s_per_gpu": (f.get("output_throughput") or 0.0) / gpus,
        "tokens_per_s_per_user": 1000.0 / tpot if tpot else None,
        "p99_ttft_ms": f.get("p99_ttft_ms"),
        "p99_tpot_ms": f.get("p99_tpot_ms"),
        "p99_e2el_ms": f.get("p99_e2el_ms"),
        "median_ttft_ms": f.get("median_ttft_ms"),
        "median_tpot_ms": tpot,
    }


# --------------------------------------------------------------------------- the record
def summary(
    ctx: Context,
    candidates: Sequence[space.Candidate],
    records: Mapping[str, Dict[str, Any]],
    order: Sequence[str],
    err: float,
    err_source: str,
    predicting: bool,
    tune: Mapping[str, Any],
) -> Dict[str, Any]:
    named, tied = rank.winner([records[cid] for cid in order])
    no_prediction = next((r["forecast"]["reason"] for r in records.values() if r.get("forecast")), None)
    ordered = [records[cid] for cid in order]
    return {
        "schema": 1,
        "run_dir": str(ctx.run_dir),
        "finished_at": now_iso(),
        "elapsed_s": round(ctx.elapsed(), 1),
        "slo": {
            "ttft_p99_ms": ctx.slo.ttft_p99_ms,
            "tpot_p99_ms": ctx.slo.tpot_p99_ms,
            "e2e_p99_ms": ctx.slo.e2e_p99_ms,
        },
        "slo_text": ctx.slo.describe(),
        "workload": ctx.workload,
        "load": ctx.load,
        "space": tune.get("space"),
        "base_overrides": list(ctx.base),
        "config_flags": list(ctx.config_flags),
        "choices": dict(ctx.choices),
        "calibration": {"path": ctx.calibration_path, "error": err, "source": err_source},
        "predicting": predicting,
        "prune": ctx.prune,
        "no_prediction_reason": None if predicting else no_prediction,
        "order": list(order),
        "candidates": ordered,
        "winner": named,
        "tied_with_winner": tied,
        "tie_reasons": rank.tie_reasons(ordered, named),
        "tie_band": rank.TIE_BAND,
        "launches": sum(1 for r in ordered if r.get("state") in FINISHED and not r.get("resumed")),
        "resumed": sum(1 for r in ordered if r.get("resumed")),
        "gpu_s": round(sum(float(r.get("gpu_s") or r.get("launch_s") or 0.0) for r in ordered), 1),
    }
