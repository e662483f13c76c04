"""What differs between two checkpoints: ``python -m runner.diff A B [--json]``.

A and B are manifests, run dirs, or two sweep dirs (their points matched by the overrides that
name them). Differences are grouped (versions, config, argv and env, hardware, outcomes) and
ranked by how likely they are to change what vLLM does: impact 1 (a different engine, TP size,
GPU, verdict) before 3 (a path, a port, a start time). Values go through the same redaction as
the manifest, so an old manifest's secret is never printed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from runner.plan.secret_flags import MASK
from runner.record.redact import is_secret_name, redact_argv

GROUPS = ("versions", "config", "argv/env", "hardware", "outcomes")
HIGH, MEDIUM, LOW = 1, 2, 3

# version keys: the engine and its numerics first, the runner's own tooling last
_VERSION_IMPACT = {
    "vllm": HIGH,
    "vllm_distribution": HIGH,
    "torch": HIGH,
    "torch_cuda": HIGH,
    "nccl": HIGH,
    "cuda_driver_version": HIGH,
    "driver_version": MEDIUM,
    "transformers": MEDIUM,
    "flashinfer": MEDIUM,
    "python": MEDIUM,
}
# config leaves that change the engine's shape or memory (vLLM's own option names)
_CONFIG_HIGH = re.compile(
    r"^(serve\.(tensor_parallel_size|pipeline_parallel_size|quantization|dtype|kv_cache_dtype|"
    r"distributed_executor_backend|enforce_eager)|model\.(name|path|source|load_format|revision|hf_config.*)|"
    r"hw\.(device|gpu_count|nodes|gpus_per_node|interconnect))$"
)
_CONFIG_MEDIUM = re.compile(
    r"^(serve\.(gpu_memory_utilization|max_model_len|max_num_seqs|max_num_batched_tokens|extra_args\..*)|"
    r"hw\.(env\..*|cpu_kvcache_space_gib|nvlink_multicast|gpu_memory_gib|gpu_name)|bench\..*|mode)$"
)
# differ between any two runs without saying anything about them
_CONFIG_NOISE = {"serve.port", "cache_dir", "launch.python", "verify.ready_timeout_s", "resume", "replay"}
_ENV_HIGH = re.compile(r"^(CUDA_VISIBLE_DEVICES|NCCL_.*|VLLM_ATTENTION_BACKEND|VLLM_CPU_.*|TORCH_.*|NVSHMEM_.*)$")
_ARGV_NOISE = {"--port", "--host"}
_OUTCOME_NUMBERS = (
    # (path, label, impact, higher_is_better)
    ("timings.ready_s", "time to ready (s)", MEDIUM, False),
    ("vllm_reported.kv_cache_tokens", "KV cache tokens", HIGH, True),
    ("vllm_reported.max_concurrency", "max concurrency", MEDIUM, True),
    ("vllm_reported.kv_cache_gib", "KV cache GiB", MEDIUM, True),
    ("timings.total_s", "total time (s)", LOW, False),
)
_BENCH_NUMBERS = (
    ("output_throughput", "output tok/s", HIGH, True),
    ("median_ttft_ms", "median TTFT ms", HIGH, False),
    ("median_tpot_ms", "median TPOT ms", HIGH, False),
    ("p99_ttft_ms", "p99 TTFT ms", MEDIUM, False),
    ("p99_tpot_ms", "p99 TPOT ms", MEDIUM, False),
    ("failed", "failed requests", HIGH, False),
)
# a sweep point's name leaves out what every point of a sweep may differ in (runner/conf/config.yaml)
_RUN_WIDE = (
    "mode",
    "cache_dir",
    "serve.port",
    "launch.python",
    "verify.ready_timeout_s",
    "resume",
    "replay",
    "replayed",
)


class BadInput(ValueError):
    """A path that is not a manifest, a run dir or a sweep dir: one line, exit 2."""


@dataclass(frozen=True)
class Difference:
    group: str
    key: str
    a: Any
    b: Any
    impact: int
    change_pct: Optional[float] = None  # numbers: (b - a) / a
    better: Optional[bool] = None  # outcomes: whether B is the better side

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k in ("a", "b")}


# --------------------------------------------------------------------------- loading
def load_manifest(path: Path) -> Dict[str, Any]:
    path = Path(path)
    file = path / "manifest.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except OSError as e:
        raise BadInput(f"{path}: {e.strerror or e}") from None
    except ValueError as e:
        raise BadInput(f"{file}: not JSON ({e})") from None
    if not isinstance(data, dict) or "schema_version" not in data or "status" not in data:
        raise BadInput(f"{file}: not a runner manifest (no schema_version/status)")
    return data


def is_sweep_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and not (path / "manifest.json").exists() and any(path.glob("*/manifest.json"))


def point_key(run_dir: Path, manifest: Mapping[str, Any]) -> Tuple[str, ...]:
    """The overrides that name a sweep point (Hydra's own record first, else the command line),
    less the run-wide settings every point of a sweep may differ in."""
    overrides: List[str] = []
    recorded = Path(run_dir) / ".hydra" / "overrides.yaml"
    if recorded.is_file():
        overrides = [str(o) for o in yaml.safe_load(recorded.read_text()) or []]
    else:
        overrides = [a for a in manifest.get("command") or [] if "=" in a and not a.startswith("-")]
    kept = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra.") or key in _RUN_WIDE:
            continue
        kept.append(o)
    return tuple(sorted(kept))


# --------------------------------------------------------------------------- flattening
def flatten(obj: Any, prefix: str = "") -> Dict[str, Any]:
    """Dotted paths to leaves; a secret-looking key's value is masked on the way."""
    out: Dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if is_secret_name(str(k)) and v not in (None, "", MASK):
                out[path] = MASK
            else:
                out.update(flatten(v, path))
    else:
        out[prefix] = obj
    return out


def argv_options(argv: Sequence[str]) -> Dict[str, Any]:
    """vLLM's argv as option → value (a bare flag → True), masked; the interpreter as ``(python)``."""
    argv = redact_argv(argv)
    out: Dict[str, Any] = {}
    if argv:
        out["(python)"] = argv[0]
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if eq:
                out[name] = value
            elif i + 1 < len(argv) and not is_option(argv[i + 1]):
                out[name] = argv[i + 1]
                i += 1
            else:
                out[name] = True
        elif arg == "-m" and i + 1 < len(argv):
            out["(module)"] = argv[i + 1]
            i += 1
        i += 1
    return out


def is_option(arg: str) -> bool:
    """An argv word that is a flag, not a value (a negative number such as -1 is a value)."""
    if not arg.startswith("-"):
        return False
    try:
        float(arg)  # --max-model-len -1
        return False
    except ValueError:
        return True


# --------------------------------------------------------------------------- the groups
def _changed(a: Mapping[str, Any], b: Mapping[str, Any]) -> Iterable[Tuple[str, Any, Any]]:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if va != vb:
            yield key, va, vb


def _pct(a: Any, b: Any) -> Optional[float]:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and a:
        return round(100.0 * (b - a) / abs(a), 1)
    return None


def diff_versions(a: Mapping[str, Any], b: Mapping[str, Any]) -> List[Difference]:
    va = dict(a.get("versions") or {})
    vb = dict(b.get("versions") or {})
    for side, m in ((va, a), (vb, b)):
        hw = m.get("hardware") or {}
        for key in ("driver_version", "cuda_driver_version"):
            if hw.get(key) is not None:
                side[key] = hw[key]
    out = []
    for key, x, y in _changed(va, vb):
        # a plan-mode run records no runtime versions: "not recorded" is not "different"
        impact = _VERSION_IMPACT.get(key, LOW) if x is not None and y is not None else LOW
        out.append(Difference("versions", key, x, y, impact))
    return out


def diff_config(a: Mapping[str, Any], b: Mapping[str, Any]) -> List[Difference]:
    out = []
    for key, x, y in _changed(flatten(a.get("config") or {}), flatten(b.get("config") or {})):
        if key in _CONFIG_NOISE:
            impact = LOW
        elif _CONFIG_HIGH.match(key):
            impact = HIGH
        elif _CONFIG_MEDIUM.match(key):
            impact = MEDIUM
        else:
            impact = LOW
        out.append(Difference("config", key, x, y, impact))
    return out


def diff_launch(a: Mapping[str, Any], b: Mapping[str, Any]) -> List[Difference]:
    pa, pb = a.get("plan") or {}, b.get("plan") or {}
    out = []
    for key, x, y in _changed(argv_options(pa.get("argv") or []), argv_options(pb.get("argv") or [])):
        impact = LOW if key in _ARGV_NOISE or key.startswith("(") else HIGH if key != "--served-model-name" else LOW
        out.append(Difference("argv/env", f"argv {key}", x, y, impact))
    for key, x, y in _changed(flatten(pa.get("env") or {}), flatten(pb.get("env") or {})):
        impact = MEDIUM if _ENV_HIGH.match(key) else LOW
        out.append(Difference("argv/env", f"env {key}", x, y, impact))
    ca, cb = redact_argv((a.get("command") or [])[1:]), redact_argv((b.get("command") or [])[1:])
    if ca != cb:
        out.append(Difference("argv/env", "runner command", " ".join(ca), " ".join(cb), LOW))
    return out


def _hardware_facts(m: Mapping[str, Any]) -> Dict[str, Any]:
    hw = m.get("hardware") or {}
    gpus = hw.get("gpus") or []
    placement = m.get("placement") or {}
    facts: Dict[str, Any] = {
        "gpu count": len(gpus),
        "gpu models": sorted({g.get("name") for g in gpus}) or None,
        "gpu memory GiB": sorted({round((g.get("memory_total_bytes") or 0) / 2**30, 1) for g in gpus}) or None,
        "compute capability": sorted({tuple(g.get("compute_capability") or ()) for g in gpus}) or None,
        "links": sorted(set((hw.get("links") or {}).values())) or None,
        "p2p": sorted(set((hw.get("p2p") or {}).values())) or None,
        "numa nodes": hw.get("numa_nodes"),
        "cpus allowed": hw.get("cpus_allowed"),
        "probe source": hw.get("source"),
        # another machine of the same kind: only the GPUs' serial identities say so
        "gpu uuids": sorted(str(g.get("uuid")) for g in gpus if g.get("uuid")) or None,
        "devices used": placement.get("devices"),
        "interconnect used": placement.get("interconnect"),
        "worst link used": placement.get("worst_link"),
    }
    if facts["compute capability"]:
        facts["compute capability"] = [".".join(map(str, c)) for c in facts["compute capability"]]
    return facts


_HARDWARE_IMPACT = {
    "gpu count": HIGH,
    "gpu models": HIGH,
    "gpu memory GiB": HIGH,
    "compute capability": HIGH,
    "links": HIGH,
    "interconnect used": HIGH,
    "worst link used": HIGH,
    "p2p": MEDIUM,
    "numa nodes": MEDIUM,
    "devices used": LOW,
    "cpus allowed": LOW,
    "probe source": LOW,
    "gpu uuids": LOW,
}


def diff_hardware(a: Mapping[str, Any], b: Mapping[str, Any]) -> List[Difference]:
    return [
        Difference("hardware", key, x, y, _HARDWARE_IMPACT.get(key, LOW))
        for key, x, y in _changed(_hardware_facts(a), _hardware_facts(b))
    ]


def _get(m: Mapping[str, Any], path: str) -> Any:
    node: Any = m
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _bench_by_concurrency(m: Mapping[str, Any]) -> Dict[Any, Mapping[str, Any]]:
    return {r.get("concurrency"): r for r in (_get(m, "bench.results") or [])}


def _better(x: Any, y: Any, higher_is_better: bool) -> Optional[bool]:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y)) or x == y:
        return None
    return (y > x) == higher_is_better


def diff_outcomes(a: Mapping[str, Any], b: Mapping[str, Any]) -> List[Difference]:
    out = []
    for path, label in (("status", "verdict"), ("failure.cause", "failure cause"), ("failure.stage", "failed at")):
        x, y = _get(a, path), _get(b, path)
        if x != y:
            out.append(Difference("outcomes", label, x, y, HIGH))
    x, y = _get(a, "verification.passed"), _get(b, "verification.passed")
    if x != y:
        out.append(Difference("outcomes", "verification passed", x, y, HIGH))
    for path, label, impact, up in _OUTCOME_NUMBERS:
        x, y = _get(a, path), _get(b, path)
        if x != y:
            out.append(Difference("outcomes", label, x, y, impact, _pct(x, y), _better(x, y, up)))
    ba, bb = _bench_by_concurrency(a), _bench_by_concurrency(b)
    for conc in sorted(set(ba) | set(bb), key=lambda c: (c is None, c)):
        for key, label, impact, up in _BENCH_NUMBERS:
            x, y = (ba.get(conc) or {}).get(key), (bb.get(conc) or {}).get(key)
            if x != y:
                out.append(Difference("outcomes", f"c={conc} {label}", x, y, impact, _pct(x, y), _better(x, y, up)))
    return out


def diff_manifests(a: Mapping[str, Any], b: Mapping[str, Any]) -> List[Difference]:
    found = diff_versions(a, b) + diff_config(a, b) + diff_launch(a, b) + diff_hardware(a, b) + diff_outcomes(a, b)
    return sorted(found, key=lambda d: (GROUPS.index(d.group), d.impact))


def grouped(differences: Sequence[Difference]) -> List[Tuple[str, List[Difference]]]:
    """Groups ranked by their highest-impact difference (the outcomes last: they are the effect),
    differences within a group by impact; ties keep GROUPS' order."""
    by_group: Dict[str, List[Difference]] = {}
    for d in differences:
        by_group.setdefault(d.group, []).append(d)
    causes = sorted(
        (g for g in by_group if g != "outcomes"), key=lambda g: (min(d.impact for d in by_group[g]), GROUPS.index(g))
    )
    order = causes + (["outcomes"] if "outcomes" in by_group else [])
    return [(g, sorted(by_group[g], key=lambda d: d.impact)) for g in order]


# --------------------------------------------------------------------------- comparing paths
def compare(path_a: Path, path_b: Path) -> Dict[str, Any]:
    """A JSON-ready comparison: of two manifests/run dirs, or of two sweep dirs point by point."""
    path_a, path_b = Path(path_a), Path(path_b)
    if is_sweep_dir(path_a) and is_sweep_dir(path_b):
        return _compare_sweeps(path_a, path_b)
    a, b = load_manifest(path_a), load_manifest(path_b)
    return _pair(str(path_a), str(path_b), a, b)


def _pair(name_a: str, name_b: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> Dict[str, Any]:
    return {
        "a": {"path": name_a, "status": a.get("status"), "started_at": a.get("started_at")},
        "b": {"path": name_b, "status": b.get("status"), "started_at": b.get("started_at")},
        "groups": [{"group": g, "differences": [d.to_dict() for d in ds]} for g, ds in grouped(diff_manifests(a, b))],
    }


def _points(sweep: Path) -> Dict[Tuple[str, ...], Path]:
    points = {}
    for file in sorted(sweep.glob("*/manifest.json")):
        manifest = load_manifest(file)
        points.setdefault(point_key(file.parent, manifest), file.parent)
    return points


def _compare_sweeps(sweep_a: Path, sweep_b: Path) -> Dict[str, Any]:
    pa, pb = _points(sweep_a), _points(sweep_b)
    matched = [k for k in pa if k in pb]
    return {
        "a": {"path": str(sweep_a), "points": len(pa)},
        "b": {"path": str(sweep_b), "points": len(pb)},
        "points": [
            {"point": list(k)} | _pair(str(pa[k]), str(pb[k]), load_manifest(pa[k]), load_manifest(pb[k]))
            for k in matched
        ],
        "only_in_a": [str(pa[k]) for k in pa if k not in pb],
        "only_in_b": [str(pb[k]) for k in pb if k not in pa],
    }


# --------------------------------------------------------------------------- text
_IMPACT_WORD = {HIGH: "high", MEDIUM: "med", LOW: "low"}


def _cell(value: Any, width: int = 44) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    text = "—" if value is None else value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_pair(result: Mapping[str, Any]) -> str:
    lines = [
        f"A: {result['a']['path']} ({result['a']['status']})",
        f"B: {result['b']['path']} ({result['b']['status']})",
    ]
    if not result["groups"]:
        return "\n".join(lines + ["no differences"])
    rows = []
    for group in result["groups"]:
        for d in group["differences"]:
            change = ""
            if d.get("change_pct") is not None:
                change = f"{d['change_pct']:+.1f}%"
            if d.get("better") is not None:
                change += " better" if d["better"] else " worse"
            rows.append((group["group"], _IMPACT_WORD[d["impact"]], d["key"], _cell(d["a"]), _cell(d["b"]), change))
    header = ("group", "impact", "what", "A", "B", "change")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines += ["", fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))]
    previous = None
    for row in rows:
        shown = row if row[0] != previous else ("",) + row[1:]
        previous = row[0]
        lines.append(fmt.format(*shown).rstrip())
    return "\n".join(lines)


def render(result: Mapping[str, Any]) -> str:
    if "points" not in result:
        return render_pair(result)
    parts = [f"sweep A: {result['a']['path']} ({result['a']['points']} points)"]
    parts.append(f"sweep B: {result['b']['path']} ({result['b']['points']} points)")
    for point in result["points"]:
        parts += ["", "=== " + (" ".join(point["point"]) or "(no overrides)"), render_pair(point)]
    for side in ("a", "b"):
        for path in result[f"only_in_{side}"]:
            parts.append(f"only in {side.upper()}: {path}")
    return "\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.diff",
        description="What differs between two runs (manifests or run dirs) or two sweeps (sweep dirs).",
    )
    parser.add_argument("a", type=Path, help="manifest.json, a run dir, or a sweep dir")
    parser.add_argument("b", type=Path, help="the same kind as A")
    parser.add_argument("--json", action="store_true", help="JSON instead of the table")
    args = parser.parse_args(argv)
    try:
        result = compare(args.a, args.b)
    except BadInput as e:
        print(f"error: {e}. Fix: give two manifest.json files, run dirs or sweep dirs", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
