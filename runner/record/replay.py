"""``python -m runner replay=outputs/…/manifest.json [overrides…]``: run what a manifest ran.

The manifest's ``config`` is the resolved config, so it is given to Hydra whole, as an overlay
(``+replayed=manifest``, stored in Hydra's ConfigStore) placed after the profile choices the
original run made: the composed config is the original's, and any override after ``replay=``
still wins because Hydra applies command-line values after the defaults list. A manifest of a
run rejected before composition has no config: its command line is replayed instead, which
reproduces the rejection.

Secrets were masked when the manifest was written; a masked value is dropped, not replayed as
the mask, and a note says how to give it again. After planning, ``check_machine`` compares this
machine with the original's: a different device type is a problem (nothing is started), a
different vLLM, GPU model, GPU memory or GPU count is a warning naming both.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from runner.plan.secret_flags import MASK
from runner.problems import Problem
from runner.record.redact import is_secret_name

ARG = "replay="
OVERLAY_GROUP = "replayed"
GROUPS = ("hw", "model", "serve", "bench")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class BadReplay(ValueError):
    """replay= names no manifest: reported like a compose error (one line, exit 2)."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


def manifest_path(value: str) -> Path:
    """A manifest file, or a run dir holding one."""
    path = Path(value).expanduser()
    file = path / "manifest.json" if path.is_dir() else path
    fix = "replay=outputs/<date>/<time>_<model>/manifest.json (a run dir works too)"
    if not file.is_file():
        raise BadReplay(Problem("replay", value, "no such manifest", fix))
    return file.resolve()


def load(value: str) -> Tuple[Path, Dict[str, Any]]:
    file = manifest_path(value)
    fix = "replay= takes the manifest.json a run wrote in its run dir"
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise BadReplay(Problem("replay", value, f"not readable as JSON ({e})", fix)) from None
    if not isinstance(manifest, dict) or "schema_version" not in manifest or "status" not in manifest:
        raise BadReplay(Problem("replay", value, "not a runner manifest (no schema_version/status)", fix))
    return file, manifest


def unmasked(tree: Any, path: str = "", dropped: Optional[List[str]] = None) -> Tuple[Any, List[str]]:
    """The config without the values redaction masked, and their keys."""
    dropped = [] if dropped is None else dropped
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            key = f"{path}.{k}" if path else str(k)
            if v == MASK:
                dropped.append(key)
            else:
                out[k] = unmasked(v, key, dropped)[0]
        return out, dropped
    return tree, dropped


def _quoted(file: Path) -> str:
    """replay='PATH': a sweep point's dir name holds '=' and ',', which Hydra's override grammar
    would otherwise parse."""
    return ARG + "'" + str(file).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _group_choices(file: Path, config: Mapping[str, Any]) -> List[str]:
    """The profile choices the original made (Hydra's record in its run dir, else the names in
    its config), only those that still exist here."""
    choices: Dict[str, str] = {}
    recorded = file.parent / ".hydra" / "overrides.yaml"
    if recorded.is_file():
        for override in yaml.safe_load(recorded.read_text()) or []:
            key, _, option = str(override).partition("=")
            if key in GROUPS:
                choices[key] = option
    for group in GROUPS:
        name = (config.get(group) or {}).get("name") if isinstance(config.get(group), Mapping) else None
        if group not in choices and name:
            choices[group] = str(name)
    return [f"{g}={o}" for g, o in choices.items() if (CONF_DIR / g / f"{o}.yaml").is_file()]


def _command_overrides(manifest: Mapping[str, Any]) -> List[str]:
    """A run rejected before composition kept only its command line: its overrides, less Hydra's
    own settings (where it wrote) and the flags."""
    return [
        a
        for a in (manifest.get("command") or [])[1:]
        if "=" in a and not a.startswith("-") and not a.lstrip("+~").startswith("hydra.")
    ]


def expand_argv(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``replay=PATH`` in argv → the overrides that compose the manifest's config, followed by
    the rest of argv; and the notes to print. argv without ``replay=`` comes back as it is."""
    found = [a for a in argv if a.startswith(ARG)]
    if not found:
        return list(argv), []
    if len(found) > 1:
        raise BadReplay(Problem("replay", found[1][len(ARG) :], "given twice", "give one replay=PATH"))
    value = found[0][len(ARG) :]
    file, manifest = load(value)
    # in replay='s place: Hydra's flags (-m, -cd DIR) stay before it, the overrides after it follow
    at = list(argv).index(found[0])
    before, rest = list(argv[:at]), list(argv[at + 1 :])
    named = {a.split("=", 1)[0].lstrip("+~") for a in before + rest if "=" in a}
    notes: List[str] = []
    config = manifest.get("config")
    if not isinstance(config, Mapping):
        replayed = [o for o in _command_overrides(manifest) if o.split("=", 1)[0].lstrip("+~") not in named]
        notes.append(f"replay: {file} has no config (rejected before composition); its overrides are replayed")
        return before + replayed + [_quoted(file)] + rest, notes
    config, dropped = unmasked({k: v for k, v in config.items() if k != "replay"})
    for key in dropped:
        if is_secret_name(key.rsplit(".", 1)[-1]):
            notes.append(
                f"replay: {key} was redacted in the manifest and is not replayed; give it again (+{key}=…) "
                "or set it in the environment"
            )
        else:  # masked by an earlier runner that took a model's shape for a secret
            notes.append(f"replay: {key} was masked in the manifest; the profile's value is used")
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group=OVERLAY_GROUP, name="manifest", node=config, package="_global_")
    choices = [c for c in _group_choices(file, config) if c.split("=", 1)[0] not in named]
    return before + choices + [f"+{OVERLAY_GROUP}=manifest", _quoted(file)] + rest, notes


# --------------------------------------------------------------------------- after planning
def origin(path: str) -> Dict[str, Any]:
    """The manifest's ``replayed_from`` section: which run this one replays."""
    record: Dict[str, Any] = {"manifest": str(path)}
    try:
        original = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return record
    for key in ("status", "mode", "started_at", "run_dir"):
        if original.get(key) is not None:
            record[key] = original[key]
    return record


def _gpu_summary(hardware: Mapping[str, Any]) -> Tuple[int, List[str], List[float]]:
    gpus = hardware.get("gpus") or []
    names = sorted({str(g.get("name")) for g in gpus})
    memory = sorted({round((g.get("memory_total_bytes") or 0) / 2**30, 1) for g in gpus})
    return len(gpus), names, memory


def check_machine(path: str, cfg, probe, plan, vllm: Optional[str]) -> Tuple[List[Problem], List[str]]:
    """Can this machine take the original's run? (problems, warnings). ``cfg`` is the replay's
    composed config: an override after replay= (hw.device=…, a smaller TP size) is respected."""
    try:
        original = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return [], [f"replay: {path} is no longer readable; the machine was not compared with the original's"]
    problems: List[Problem] = []
    warnings: List[str] = []
    was = (original.get("plan") or {}).get("device")
    asked = ((original.get("config") or {}).get("hw") or {}).get("device")
    device_now = getattr(cfg.hw.device, "value", cfg.hw.device)
    if was and plan.device != was and device_now == asked:
        count, names, _ = _gpu_summary(original.get("hardware") or {})
        on = f"{count} x {', '.join(names)}" if names else was
        problems.append(
            Problem(
                "replay",
                path,
                f"the original ran on {was} ({on}); this machine would run it on {plan.device}",
                f"replay it on a machine like the original's, or add hw.device={plan.device} after replay= "
                "to run it here anyway",
            )
        )
    before_vllm = (original.get("versions") or {}).get("vllm")
    if before_vllm and vllm and before_vllm != vllm:
        warnings.append(f"WARNING replay: vLLM {vllm} here, the original ran vLLM {before_vllm}")
    if original.get("hardware"):
        count, names, memory = _gpu_summary(original["hardware"])
        now = [dataclasses.asdict(g) if dataclasses.is_dataclass(g) else g for g in probe.gpus]
        count_now, names_now, memory_now = _gpu_summary({"gpus": now})
        if count_now != count:
            warnings.append(f"WARNING replay: {count_now} GPU(s) here, the original machine had {count}")
        if names and names_now and names_now != names:
            warnings.append(f"WARNING replay: GPU {', '.join(names_now)} here, the original ran on {', '.join(names)}")
        if memory and memory_now and min(memory_now) < min(memory):
            warnings.append(
                f"WARNING replay: {min(memory_now)} GiB per GPU here, the original had {min(memory)} GiB "
                "(the plan's fit above is this machine's)"
            )
    return problems, warnings


__all__ = ["ARG", "BadReplay", "check_machine", "expand_argv", "origin"]
