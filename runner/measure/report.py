"""The report of a TP sweep: which TP size, how fast.

Reads every ``*/manifest.json`` under a sweep directory and writes, into it:

- ``report.csv``: one row per (point, concurrency) with :data:`COLUMNS`;
- ``report.md``: the same as a markdown table, the best TP per workload, and the plots;
- ``throughput_vs_tp.png`` (output tok/s vs TP, one line per concurrency),
  ``latency_vs_tp.png`` (median TTFT and median TPOT vs TP) and ``tokens_per_gpu.png``
  (output tok/s per GPU vs TP), drawn with matplotlib's Agg backend. Without matplotlib the
  CSV and markdown are still written and report.md says the plots were skipped.

Rejected and failed points are rows too, with their reason and no figures.

What it reads of a manifest: ``status``, ``problems[].text`` (rejected), ``failure.cause`` and
``failure.summary`` (failed), ``plan.tensor_parallel_size`` / ``plan.pipeline_parallel_size``,
``config.model.name``, ``config.hw.name``, ``config.hw.memory_bandwidth_gbps`` (GB/s per GPU,
optional), ``fit.weights_gib_per_gpu``, ``timings.ready_s``, ``vllm_reported.kv_cache_tokens``,
and ``bench.results``: a list of :func:`runner.measure.bench.run_bench` dicts, each with
``concurrency`` (an entry with ``error`` instead of figures is shown with that reason).
The workload shown comes from ``config.bench`` or ``bench.config``, when present.

Use it as a Hydra callback (the sweep goes on whatever happens here)::

    hydra:
      callbacks:
        report:
          _target_: runner.measure.report.SweepReport

or from the command line: ``python -m runner.measure.report SWEEP_DIR``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from hydra.experimental.callback import Callback

# SweepReport is built by Hydra before every run, a single mode=plan included, and only a
# sweep's end writes a report: runner.measure.bench (and vLLM's process handling under it) is
# imported when a report is written, not with this module (benchmarks/startup.py).


def finite_number(value: Any) -> Optional[float]:
    from runner.measure.bench import finite_number as bench_finite_number

    return bench_finite_number(value)


def roofline_fraction(*args: Any) -> Optional[float]:
    from runner.measure.bench import roofline_fraction as bench_roofline_fraction

    return bench_roofline_fraction(*args)


COLUMNS = [
    "point",
    "variant",
    "model",
    "hw",
    "gpu",
    "tp",
    "pp",
    "status",
    "reason",
    "ready_s",
    "kv_cache_tokens",
    "concurrency",
    "num_prompts",
    "completed",
    "failed",
    "duration_s",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "output_throughput_per_gpu",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "predicted_output_throughput",
    "predicted_median_ttft_ms",
    "predicted_median_tpot_ms",
    "roofline_fraction",
    "run_dir",
]
# the performance model's figures a bench manifest carries (bench.predicted.rows, runner/plan/forecast.py):
# report column → (its key there, the measured column it is compared with)
PREDICTED = {
    "predicted_output_throughput": ("predicted_output_tokens_per_s", "output_throughput"),
    "predicted_median_ttft_ms": ("predicted_ttft_ms", "median_ttft_ms"),
    "predicted_median_tpot_ms": ("predicted_tpot_ms", "median_tpot_ms"),
}
BENCH_FIGURES = [
    "num_prompts",
    "completed",
    "failed",
    "duration_s",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "median_itl_ms",
    "p99_itl_ms",
]
PLOTS = {
    "throughput_vs_tp": "throughput_vs_tp.png",
    "latency_vs_tp": "latency_vs_tp.png",
    "tokens_per_gpu": "tokens_per_gpu.png",
}
# Overrides that say where or how a point ran, not what it measured (as runner/conf/config.yaml's
# hydra.job.config.override_dirname.exclude_keys), and TP itself: the rest names a variant.
_NOT_VARIANT = {
    "serve.tensor_parallel_size",
    "model",
    "hw",
    "mode",
    "cache_dir",
    "serve.port",
    "launch.python",
    "verify.ready_timeout_s",
    "hydra.run.dir",
    "hydra.sweep.dir",
    "resume",
}


def _log():
    try:
        from runner import logs

        return logs.get("report")
    except Exception:  # logging must not be why a report fails
        import logging

        return logging.getLogger("runner.measure.report")


def _get(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(key)
    return tree


def _int(value: Any) -> Optional[int]:
    f = finite_number(value)
    return int(f) if f is not None else None


def _point_sort_key(name: str) -> Tuple:
    head = name.split("_", 1)[0]
    return (0, int(head), name) if head.isdigit() else (1, 0, name)


def _reason(manifest: Mapping) -> str:
    status = manifest.get("status")
    if status == "rejected":
        texts = [
            str(p.get("text") or p.get("message") or "")
            for p in manifest.get("problems") or []
            if isinstance(p, Mapping)
        ]
        return "; ".join(t for t in texts if t) or "rejected"
    if status == "failed":
        failure = manifest.get("failure") or {}
        cause, summary = failure.get("cause"), failure.get("summary") or failure.get("reason")
        return ": ".join(str(x) for x in (cause, summary) if x) or "failed"
    return ""


def _overrides(point_dir: Path) -> List[str]:
    """The point's Hydra overrides (``.hydra/overrides.yaml``), [] when unreadable."""
    path = point_dir / ".hydra" / "overrides.yaml"
    try:
        from omegaconf import OmegaConf

        return [str(o) for o in OmegaConf.to_container(OmegaConf.load(path))]
    except Exception:
        return []


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _variants(point_dirs: Sequence[Path]) -> Dict[Path, str]:
    """Per point, the overrides other than TP (and run-wide ones) that differ between points."""
    per_point = {
        d: [
            o
            for o in _overrides(d)
            if _override_key(o) not in _NOT_VARIANT and not _override_key(o).startswith("hydra.")
        ]
        for d in point_dirs
    }
    common = set.intersection(*(set(v) for v in per_point.values())) if per_point else set()
    return {d: " ".join(o for o in v if o not in common) for d, v in per_point.items()}


def _gpu_name(manifest: Mapping) -> str:
    plan = manifest.get("plan") or {}
    if plan.get("device") == "cpu":
        return "cpu"
    gpus = {g.get("index"): g.get("name") for g in _get(manifest, "hardware", "gpus") or [] if isinstance(g, Mapping)}
    names = [gpus.get(i) for i in plan.get("devices") or [] if gpus.get(i)]
    if not names:
        names = [n for n in gpus.values() if n]
    return names[0] if names else ""


def point_rows(manifest: Mapping, point: str, variant: str = "") -> List[Dict[str, Any]]:
    """The report rows of one manifest: one per benchmarked concurrency; one row with no
    figures when the point was not benchmarked (rejected, failed, or no bench section)."""
    plan = manifest.get("plan") or {}
    config = manifest.get("config") or {}
    tp = _int(plan.get("tensor_parallel_size")) or _int(_get(config, "serve", "tensor_parallel_size"))
    pp = _int(plan.get("pipeline_parallel_size")) or _int(_get(config, "serve", "pipeline_parallel_size")) or 1
    base = {
        "point": point,
        "variant": variant,
        "model": _get(config, "model", "name") or plan.get("model_name") or _get(manifest, "model", "name") or "",
        "hw": _get(config, "hw", "name") or "",
        "gpu": _gpu_name(manifest),
        "tp": tp,
        "pp": pp,
        "status": manifest.get("status") or "unknown",
        "reason": _reason(manifest),
        "ready_s": finite_number(_get(manifest, "timings", "ready_s")),
        "kv_cache_tokens": _int(_get(manifest, "vllm_reported", "kv_cache_tokens")),
        "run_dir": manifest.get("run_dir") or "",
    }
    results = _get(manifest, "bench", "results") if base["status"] == "verified" else None
    bench_error = _get(manifest, "bench", "error")
    if not results:
        row = dict.fromkeys(COLUMNS) | base
        if base["status"] == "verified" and bench_error:
            row["reason"] = f"bench: {bench_error}"
        return [row]
    weights_gib = finite_number(_get(manifest, "fit", "weights_gib_per_gpu"))
    bandwidth = finite_number(_get(config, "hw", "memory_bandwidth_gbps")) or finite_number(
        _get(manifest, "plan", "estimate", "memory_bandwidth_gbps")
    )
    gpus = (tp or 0) * pp
    predicted = {r.get("concurrency"): r for r in (_get(manifest, "bench", "predicted", "rows") or [])}
    rows = []
    for result in results:
        if not isinstance(result, Mapping):
            continue
        row = dict.fromkeys(COLUMNS) | base
        row["concurrency"] = _int(result.get("concurrency"))
        if result.get("error"):
            row["reason"] = f"bench: {result['error']}"
            rows.append(row)
            continue
        for key in BENCH_FIGURES:
            value = result.get(key)
            row[key] = _int(value) if key in ("num_prompts", "completed", "failed") else finite_number(value)
        for column, (key, _) in PREDICTED.items():
            row[column] = finite_number((predicted.get(row["concurrency"]) or {}).get(key))
        out = row["output_throughput"]
        if out is not None and gpus:
            row["output_throughput_per_gpu"] = out / gpus
        # Weights-only decode roofline (see runner.measure.bench.roofline_fraction). Sequences in
        # flight: the concurrency limit, or fewer when there were fewer prompts. Not given
        # for PP > 1, where the ranks that read one step's weights depend on pipeline fill.
        in_flight = row["concurrency"]
        if in_flight and row["num_prompts"]:
            in_flight = min(in_flight, row["num_prompts"])
        if out is not None and weights_gib and tp and pp == 1 and bandwidth and in_flight:
            row["roofline_fraction"] = roofline_fraction(out, weights_gib * tp * 2**30, tp, bandwidth, in_flight)
        rows.append(row)
    return rows or [dict.fromkeys(COLUMNS) | base]


def _bare_row(point_dir: Path, variant: str, status: str, reason: str) -> Dict[str, Any]:
    """A point without a readable manifest: what its overrides say (model, hw, TP, PP)."""
    said = dict(o.lstrip("+").split("=", 1) for o in _overrides(point_dir) if "=" in o)
    return dict.fromkeys(COLUMNS) | {
        "point": point_dir.name,
        "variant": variant,
        "status": status,
        "reason": reason,
        "run_dir": str(point_dir),
        "model": said.get("model", ""),
        "hw": said.get("hw", ""),
        "tp": _int(said.get("serve.tensor_parallel_size")),
        "pp": _int(said.get("serve.pipeline_parallel_size")) or 1,
    }


def collect_rows(sweep_dir: Path) -> List[Dict[str, Any]]:
    """Every row of a sweep directory, sorted by model, hw, variant, TP, PP, concurrency.

    A point directory (one with ``.hydra/``) without a manifest is a row with status
    ``missing``; a manifest that isn't JSON is a row with status ``unreadable``."""
    sweep_dir = Path(sweep_dir)
    point_dirs = {p.parent for p in sweep_dir.glob("*/manifest.json")}
    point_dirs |= {p.parent for p in sweep_dir.glob("*/.hydra") if p.is_dir()}
    ordered = sorted(point_dirs, key=lambda d: _point_sort_key(d.name))
    variants = _variants(ordered)
    rows: List[Dict[str, Any]] = []
    for d in ordered:
        path = d / "manifest.json"
        if not path.exists():
            rows.append(_bare_row(d, variants[d], "missing", "no manifest.json: the point did not finish"))
            continue
        try:
            manifest = json.loads(path.read_text())
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            rows.append(_bare_row(d, variants[d], "unreadable", f"manifest.json: {e}"))
            continue
        rows.extend(point_rows(manifest, d.name, variants[d]))

    def key(row):
        return (
            str(row["model"] or ""),
            str(row["hw"] or ""),
            str(row["variant"] or ""),
            row["tp"] if row["tp"] is not None else 10**9,
            row["pp"] or 0,
            row["concurrency"] if row["concurrency"] is not None else -1,
            _point_sort_key(row["point"]),
        )

    return sorted(rows, key=key)


# --------------------------------------------------------------------------- writing
_DECIMALS = {
    "ready_s": 2,
    "duration_s": 3,
    "request_throughput": 3,
    "output_throughput": 2,
    "total_token_throughput": 2,
    "output_throughput_per_gpu": 2,
    "roofline_fraction": 4,
}


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{_DECIMALS.get(key, 3)}f}"
    return str(value)


def write_csv(rows: Iterable[Mapping[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(k, row.get(k)) for k in COLUMNS})
    _write_text(path, buf.getvalue())


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


_MD_COLUMNS = [
    ("point", "point"),
    ("variant", "variant"),
    ("model", "model"),
    ("hw", "hw"),
    ("tp", "TP"),
    ("pp", "PP"),
    ("status", "status"),
    ("concurrency", "conc."),
    ("output_throughput", "out tok/s"),
    ("output_throughput_per_gpu", "tok/s/GPU"),
    ("request_throughput", "req/s"),
    ("median_ttft_ms", "TTFT med ms"),
    ("p99_ttft_ms", "TTFT p99 ms"),
    ("median_tpot_ms", "TPOT med ms"),
    ("p99_tpot_ms", "TPOT p99 ms"),
    ("predicted_output_throughput", "pred tok/s"),
    ("predicted_median_ttft_ms", "pred TTFT med"),
    ("predicted_median_tpot_ms", "pred TPOT med"),
    ("median_itl_ms", "ITL med ms"),
    ("completed", "done"),
    ("failed", "failed"),
    ("roofline_fraction", "roofline"),
    ("kv_cache_tokens", "KV tokens"),
    ("ready_s", "ready s"),
    ("reason", "reason"),
]


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "roofline_fraction":
        return f"{value * 100:.1f} %"
    if key == "kv_cache_tokens" and isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{min(_DECIMALS.get(key, 2), 2)}f}"
    return _md_escape(str(value))


def _best(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """Per (model, hw, variant, concurrency): the TP with the most output tok/s, and per GPU."""
    groups: Dict[Tuple, List[Mapping[str, Any]]] = {}
    for row in rows:
        if row["output_throughput"] is not None and row["tp"]:
            groups.setdefault((row["model"], row["hw"], row["variant"], row["concurrency"]), []).append(row)
    lines = []
    for (model, hw, variant, conc), group in groups.items():
        fastest = max(group, key=lambda r: r["output_throughput"])
        thriftiest = max(group, key=lambda r: r["output_throughput_per_gpu"] or 0)
        what = " ".join(x for x in (str(model), str(hw), str(variant)) if x)
        lines.append(
            f"- {_md_escape(what)}, concurrency {conc}: most output tok/s at TP={fastest['tp']} "
            f"({fastest['output_throughput']:.1f} tok/s, "
            f"TTFT median {_md_cell('median_ttft_ms', fastest['median_ttft_ms']) or '?'} ms); "
            f"most per GPU at TP={thriftiest['tp']} "
            f"({_md_cell('output_throughput_per_gpu', thriftiest['output_throughput_per_gpu'])} tok/s/GPU)"
        )
    return lines


def _prediction_error(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """The performance model against the measurement: MAPE per figure over the rows with both."""
    parts = []
    for column, (_, measured) in PREDICTED.items():
        pairs = [(r[column], r[measured]) for r in rows if r.get(column) is not None and r.get(measured)]
        if pairs:
            mape = 100.0 * sum(abs(p - m) / m for p, m in pairs) / len(pairs)
            parts.append(f"{measured} {mape:.1f} % over {len(pairs)}")
    if not parts:
        return []
    return [
        "## Predicted against measured",
        "",
        "Mean absolute percentage error of the performance model (runner/plan/forecast.py; the calibration "
        "each manifest names in bench.predicted): " + "; ".join(parts) + ".",
        "",
    ]


def _workload(sweep_dir: Path) -> Optional[Dict[str, Any]]:
    for path in sorted(Path(sweep_dir).glob("*/manifest.json"), key=lambda p: _point_sort_key(p.parent.name)):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found = _get(manifest, "config", "bench") or _get(manifest, "bench", "config")
        if isinstance(found, Mapping) and found:
            return dict(found)
    return None


def render_markdown(
    rows: Sequence[Mapping[str, Any]],
    sweep_dir: Path,
    plots: Mapping[str, Path],
    plots_skipped: Optional[str],
    workload: Optional[Mapping[str, Any]] = None,
) -> str:
    counts: Dict[str, int] = {}
    for point in {(r["point"], r["status"]) for r in rows}:
        counts[point[1]] = counts.get(point[1], 0) + 1
    out = [f"# TP sweep report: {_md_escape(str(sweep_dir))}", ""]
    out.append("Points: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none") + ".")
    cards: Dict[str, set] = {}
    for r in rows:
        if r.get("gpu"):
            cards.setdefault(r["gpu"], set()).add(str(r.get("hw") or ""))
    if cards:
        out.append(
            "Card: "
            + "; ".join(
                f"{card} (hw={', '.join(sorted(h for h in hws if h)) or '?'})" for card, hws in sorted(cards.items())
            )
            + "."
        )
    if workload:
        out.append("Workload: " + ", ".join(f"{k}={v}" for k, v in workload.items()) + ".")
    out.append("")
    best = _best(rows)
    if best:
        out += ["## Which TP", "", *best, ""]
    out += ["## Results", ""]
    columns = [(k, t) for k, t in _MD_COLUMNS if k != "variant" or any(r.get("variant") for r in rows)]
    out.append("| " + " | ".join(title for _, title in columns) + " |")
    out.append(
        "|"
        + "|".join(
            "---:" if key not in ("point", "variant", "model", "hw", "status", "reason") else "---"
            for key, _ in columns
        )
        + "|"
    )
    for row in rows:
        out.append("| " + " | ".join(_md_cell(key, row.get(key)) for key, _ in columns) + " |")
    out += [
        "",
        "tok/s/GPU: output tok/s ÷ (TP × PP). roofline: decode steps/s (output tok/s ÷ concurrency) × weight "
        "bytes ÷ (TP × memory bandwidth per GPU): the share of the weight-streaming bound reached; empty without "
        "hw.memory_bandwidth_gbps or with PP > 1 (runner/measure/bench.py: roofline_fraction).",
        "",
    ]
    out += _prediction_error(rows)
    if plots:
        out += ["## Plots", ""] + [f"![{name}]({path.name})" for name, path in plots.items()] + [""]
    if plots_skipped:
        out += [f"Plots skipped: {plots_skipped}.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- plots
def _series(rows: Sequence[Mapping[str, Any]], y_key: str) -> Dict[str, List[Tuple[int, float]]]:
    """label → [(TP, y)] of the verified rows that have y; one line per (model, hw, variant, PP, concurrency)."""
    groups = {(r["model"], r["hw"], r["variant"], r["pp"]) for r in rows if r.get(y_key) is not None}
    many = len(groups) > 1
    series: Dict[str, List[Tuple[int, float]]] = {}
    for row in rows:
        if row.get(y_key) is None or not row["tp"]:
            continue
        name = f"c={row['concurrency']}"
        if many:
            extra = " ".join(str(x) for x in (row["model"], row["hw"], row["variant"]) if x)
            name = f"{extra} PP={row['pp']} {name}" if (row["pp"] or 1) > 1 else f"{extra} {name}"
        series.setdefault(name, []).append((row["tp"], row[y_key]))
    return {k: sorted(v) for k, v in series.items()}


def _draw(ax, rows, y_key: str, ylabel: str, title: str) -> None:
    series = _series(rows, y_key)
    tps = sorted({tp for points in series.values() for tp, _ in points})
    for name, points in series.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    if tps:
        ax.set_xticks(tps)
    else:
        ax.text(0.5, 0.5, "no benchmark figures", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("tensor parallel size")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize="small")


def write_plots(rows: Sequence[Mapping[str, Any]], sweep_dir: Path) -> Dict[str, Path]:
    """The three PNGs (ImportError without matplotlib). Uses Figure + the Agg canvas directly:
    no pyplot state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written: Dict[str, Path] = {}
    plotted = [r for r in rows if r.get("output_throughput") is not None]
    groups = {(r["model"], r["hw"]) for r in plotted}
    suffix = ""
    if len(groups) == 1:
        model, hw = groups.pop()
        cards = {r.get("gpu") for r in plotted if r.get("gpu")}
        if len(cards) == 1:  # name the card: "hw=auto" alone says nothing
            hw = f"{hw}, {cards.pop()}" if hw else cards.pop()
        suffix = " (" + " on ".join(str(x) for x in (model, hw) if x) + ")" if (model or hw) else ""

    def save(fig, name: str) -> None:
        path = Path(sweep_dir) / PLOTS[name]
        FigureCanvasAgg(fig)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=110)
        written[name] = path

    fig = Figure(figsize=(7, 4.5))
    _draw(fig.add_subplot(1, 1, 1), rows, "output_throughput", "output tokens/s", "Output throughput vs TP" + suffix)
    save(fig, "throughput_vs_tp")

    fig = Figure(figsize=(11, 4.5))
    _draw(fig.add_subplot(1, 2, 1), rows, "median_ttft_ms", "median TTFT (ms)", "Time to first token vs TP")
    _draw(fig.add_subplot(1, 2, 2), rows, "median_tpot_ms", "median TPOT (ms)", "Time per output token vs TP")
    if suffix:
        fig.suptitle(suffix.strip(" ()"))
    save(fig, "latency_vs_tp")

    fig = Figure(figsize=(7, 4.5))
    _draw(
        fig.add_subplot(1, 1, 1),
        rows,
        "output_throughput_per_gpu",
        "output tokens/s per GPU",
        "Throughput per GPU vs TP" + suffix,
    )
    save(fig, "tokens_per_gpu")
    return written


# --------------------------------------------------------------------------- entry points
def write_report(sweep_dir: Path) -> Dict[str, Path]:
    """Write report.csv, report.md and the PNG plots into ``sweep_dir``; return what was
    written: {"csv": ..., "md": ..., and "throughput_vs_tp", "latency_vs_tp", "tokens_per_gpu"
    unless the plots were skipped}. Raises FileNotFoundError if sweep_dir is not a directory;
    a plotting error (matplotlib missing included) only skips the plots."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep directory")
    rows = collect_rows(sweep_dir)
    written: Dict[str, Path] = {"csv": sweep_dir / "report.csv", "md": sweep_dir / "report.md"}
    write_csv(rows, written["csv"])
    plots: Dict[str, Path] = {}
    skipped: Optional[str] = None
    try:
        plots = write_plots(rows, sweep_dir)
    except ImportError as e:
        skipped = f"matplotlib is not installed ({e})"
    except Exception as e:  # a plot is never worth losing the table for
        skipped = f"plotting failed: {e!r}"
    if skipped:
        _log().warning(f"report plots skipped: {skipped}")
    _write_text(written["md"], render_markdown(rows, sweep_dir, plots, skipped, _workload(sweep_dir)))
    written.update(plots)
    return written


class SweepReport(Callback):
    """Hydra callback: after a multirun, :func:`write_report` on ``hydra.sweep.dir``.

    Never raises: a report that can't be written is logged and the sweep's own result stands
    (KeyboardInterrupt still goes through). When the sweep dir resolves to a directory holding
    no point (``${now:...}`` evaluated again, a launcher elsewhere), the parent of the jobs'
    output directories seen in ``on_job_end`` is used instead."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._job_dirs: List[Path] = []

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        try:
            out = _get(job_return.hydra_cfg, "hydra", "runtime", "output_dir") if job_return is not None else None
            if out:
                self._job_dirs.append(Path(str(out)))
        except Exception:
            pass

    def _sweep_dir(self, config: Any) -> Optional[Path]:
        candidates: List[Path] = []
        try:
            candidates.append(Path(str(config.hydra.sweep.dir)))
        except Exception as e:
            _log().warning(f"report: no hydra.sweep.dir in the config ({e!r})")
        parents = {d.parent for d in self._job_dirs}
        if len(parents) == 1:
            candidates.append(parents.pop())
        for c in candidates:
            if c.is_dir() and (any(c.glob("*/manifest.json")) or any(c.glob("*/.hydra"))):
                return c
        return candidates[0] if candidates else None

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if not self.enabled:
            return
        try:
            sweep_dir = self._sweep_dir(config)
            if sweep_dir is None:
                return
            written = write_report(sweep_dir)
            print(f"sweep report: {written['md']} ({len(written) - 2} plot(s)); table: {written['csv']}", flush=True)
        except Exception as e:
            try:
                _log().error(f"sweep report failed: {e!r}")
            except Exception:
                print(f"sweep report failed: {e!r}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m runner.measure.report SWEEP_DIR", file=sys.stderr)
        return 2
    try:
        written = write_report(Path(args[0]))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    if len(written) == 2:
        print("plots skipped (see report.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
