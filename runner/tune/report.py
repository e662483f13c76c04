"""What mode=tune leaves in its run dir: ``tune.md`` (the answer in one sentence, then every candidate),
``pareto.png`` (tokens/s per user against tokens/s per GPU, every probe) and ``winner-recipe.yaml`` (the
winner as a recipe, ready for ``recipes/``). ``tune.json`` is written by run.py; everything here renders
from it, so a report can be redrawn from the JSON alone.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from omegaconf import OmegaConf

from runner import logs

RECIPE_NAME = "winner-recipe.yaml"
# Overrides about the run, not about what is served: left out of the recipe.
NOT_IN_RECIPE = ("mode", "hydra", "tune", "resume", "bench", "cache_dir", "serve.port", "launch.python", "recipe")
RECIPE_GROUPS = ("hw", "model", "serve")  # config groups whose choice the recipe's defaults name
log = logs.get("runner")


def _num(value: Optional[float], digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _winner(result: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    return next((c for c in result["candidates"] if c["id"] == result.get("winner")), None)


def _load_text(result: Mapping[str, Any], measured: Mapping[str, Any]) -> str:
    if result.get("load") == "rate":
        return f"{measured['load']:g} requests/s"
    return f"concurrency {measured.get('concurrency')}"


def answer(result: Mapping[str, Any]) -> str:
    """The one sentence: which configuration, and what it measured under the SLO."""
    win = _winner(result)
    if win is None:
        return f"No candidate met the SLO ({result['slo_text']})."
    m = win["measured"]
    return (
        f"Serve {win['label']}: {_num(m['tokens_per_s_per_gpu'])} tok/s per GPU at {_load_text(result, m)}, "
        f"p99 TTFT {_num(m['p99_ttft_ms'])} ms, p99 TPOT {_num(m['p99_tpot_ms'], 2)} ms (SLO: {result['slo_text']})."
    )


def _predicted_cell(c: Mapping[str, Any]) -> str:
    f = c.get("forecast") or {}
    if not f.get("predicted"):
        return "—"
    if not f.get("best_concurrency"):
        return "misses SLO"
    return f"{_num(f['best_tokens_per_s_per_gpu'])} (c={f['best_concurrency']})"


def _measured_cell(c: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    m = c.get("measured")
    if not m:
        return "—"
    where = f"{m['load']:g}/s" if result.get("load") == "rate" else f"c={m.get('concurrency')}"
    return f"{_num(m['tokens_per_s_per_gpu'])} ({where})"


def _at_measured(c: Mapping[str, Any]) -> str:
    p = c.get("predicted_at_measured")
    m = c.get("measured")
    if not p or not m or not m.get("tokens_per_s_per_gpu"):
        return "—"
    error = 100.0 * (p["output_tokens_per_s_per_gpu"] - m["tokens_per_s_per_gpu"]) / m["tokens_per_s_per_gpu"]
    return f"{_num(p['output_tokens_per_s_per_gpu'])} ({error:+.0f} %)"


def _probes(c: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    probes = (c.get("search") or {}).get("probes") or []
    unit = "/s" if result.get("load") == "rate" else ""
    prefix = "" if result.get("load") == "rate" else "c="
    return ", ".join(f"{prefix}{p['load']:g}{unit} {'✓' if p['meets'] else '✗'}" for p in probes)


def render_md(result: Mapping[str, Any]) -> str:
    choices = result.get("choices") or {}
    title = f"# Tune: {choices.get('model', 'the model')} on {choices.get('hw', 'this machine')}"
    w = result["workload"]
    lines = [title, "", f"**{answer(result)}**", ""]
    tied = [c for c in result["candidates"] if c["id"] in (result.get("tied_with_winner") or [])]
    if tied:
        band = float(result.get("tie_band") or 0.0)
        reasons = result.get("tie_reasons") or {}
        others = "; ".join(
            f"`{c['label']}` ({_num(c['measured']['tokens_per_s_per_gpu'])} at {c['measured']['load']:g}: "
            f"{reasons.get(c['id']) or f'within {band:.0%}'})"
            for c in tied
        )
        lines += [
            f"Tied with it: {others}. The one launched first (the better predicted, or the earlier in the space) "
            "is named.",
            "",
        ]
    if result.get("winner"):
        lines += [
            f"Recipe: `{RECIPE_NAME}` — copy it to `recipes/{recipe_name(result)}.yaml` and run "
            f"`python -m runner +recipe={recipe_name(result)}`.",
            "",
        ]
    lines += [
        f"- Workload: {w['input_len']} tokens in / {w['output_len']} out, random prompts, "
        f"`vllm bench serve` per probe; load searched: {result['load']} (bisection under the SLO).",
        f"- Base overrides: `{' '.join(result['base_overrides']) or '(none)'}`.",
        f"- GPU time (launch + bench seconds, from the candidates' manifests and bench runs), every candidate "
        f"launched in this dir: {_num(result['gpu_s'])} s; {result['launches']} launch(es) in this run"
        + (f", {result['resumed']} candidate(s) reused from an earlier run" if result["resumed"] else "")
        + f"; this run's wall time {_num(result['elapsed_s'])} s.",
    ]
    if any(c.get("warmup") for c in result["candidates"]):
        lines.append(
            "- Each server's first benchmark, at the search's first load, is a warm-up: recorded, counted in its "
            "bench seconds, not judged against the SLO (`tune.warmup`)."
        )
    if result.get("predicting") and result.get("prune") is False:
        lines.append(
            "- Pruning off (`tune.prune=false`): every candidate that planned was measured, best predicted first."
        )
    elif result.get("predicting"):
        cal = result["calibration"]
        lines.append(
            f"- Predictions: the performance model ({cal.get('path') or 'no calibration file'}); a candidate is "
            f"pruned when its predicted best ≤ the best measured × (1 − {cal['error']:.2f}) ({cal['source']})."
        )
    else:
        lines.append(
            f"- No predictions ({result.get('no_prediction_reason') or 'no candidate was planned'}): candidates "
            "were measured in the space's order and none was pruned."
        )
    lines += [
        "",
        "| # | candidate | state | TP×PP | predicted best tok/s/GPU | measured best tok/s/GPU | p99 TTFT ms "
        "| p99 TPOT ms | predicted at measured load | launch s | bench s | probes / note |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for i, c in enumerate(result["candidates"], 1):
        m = c.get("measured") or {}
        tp = c.get("tensor_parallel_size")
        layout = f"{tp}×{c.get('pipeline_parallel_size') or 1}" if tp else "—"
        state = c["state"] + (" (resumed)" if c.get("resumed") else "")
        if c["id"] == result.get("winner"):
            state = f"**winner** {state}"
        note = "; ".join(x for x in (_probes(c, result), c.get("reason") or "") if x)
        lines.append(
            f"| {i} | `{c['label']}` | {state} | {layout} | {_predicted_cell(c)} | {_measured_cell(c, result)} "
            f"| {_num(m.get('p99_ttft_ms'))} | {_num(m.get('p99_tpot_ms'), 2)} | {_at_measured(c)} "
            f"| {_num(c.get('launch_s'))} | {_num(c.get('bench_s'))} | {note.replace('|', '/')} |"
        )
    lines += ["", "Every candidate's plan, serve run, bench results and record: `candidates/<id>/`.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the recipe
def recipe_name(result: Mapping[str, Any]) -> str:
    choices = result.get("choices") or {}
    return f"tuned-{choices.get('model') or 'model'}-{choices.get('hw') or 'hw'}".replace("/", "-")


def _excluded(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NOT_IN_RECIPE)


def recipe_values(result: Mapping[str, Any], winner: Mapping[str, Any]) -> Dict[str, Any]:
    """The overlay's values: the run's value overrides and the winner's, nested (group choices go to
    the defaults list instead)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    flat: Dict[str, Any] = {}
    for text in result["base_overrides"]:
        o = parser.parse_override(text)
        key = o.key_or_group
        if o.is_delete() or _excluded(key) or "." not in key or "/" in key:
            continue
        flat[key] = o.value()
    flat.update(winner.get("values") or {})
    nested: Dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def recipe_text(result: Mapping[str, Any]) -> Optional[str]:
    """The winner as a ``# @package _global_`` recipe, its measured figures in the header comment."""
    win = _winner(result)
    if win is None:
        return None
    name = recipe_name(result)
    m = win["measured"]
    w = result["workload"]
    choices = result.get("choices") or {}
    date = _dt.date.today().isoformat()
    header = [
        "# @package _global_",
        f"#   python -m runner +recipe={name}",
        f"# Chosen by mode=tune on {date}: {win['label']}",
        f"# measured {_num(m['tokens_per_s_per_gpu'])} output tok/s per GPU at {_load_text(result, m)},",
        f"# p99 TTFT {_num(m['p99_ttft_ms'])} ms, p99 TPOT {_num(m['p99_tpot_ms'], 2)} ms",
        f"# (SLO: {result['slo_text']}), workload {w['input_len']} in / {w['output_len']} out"
        + (f" (bench={choices['bench']})" if choices.get("bench") else "")
        + ".",
        f"# {len(result['candidates'])} candidate(s); the table: {Path(result['run_dir']) / 'tune.md'}",
    ]
    # the serve group's default is what the config's own defaults list picks: naming it adds nothing
    defaults = [
        f"  - override /{g}: {choices[g]}"
        for g in RECIPE_GROUPS
        if choices.get(g) and (g, choices[g]) != ("serve", "default")
    ]
    body: Dict[str, Any] = {"mode": "serve", **recipe_values(result, win)}
    text = "\n".join(header) + "\n"
    if defaults:
        text += "defaults:\n" + "\n".join(defaults) + "\n"
    text += "\n" + OmegaConf.to_yaml(OmegaConf.create(body))
    return text


# --------------------------------------------------------------------------- the plot
def pareto_points(result: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Every probe of every measured candidate: tokens/s per user (1000 / median TPOT) and per GPU."""
    out = []
    for c in result["candidates"]:
        gpus = c.get("gpus") or 1
        for p in (c.get("search") or {}).get("probes") or []:
            f = p["figures"]
            tpot = f.get("median_tpot_ms")
            if not tpot or f.get("output_throughput") is None:
                continue
            out.append(
                {
                    "candidate": c["label"],
                    "id": c["id"],
                    "load": p["load"],
                    "meets": p["meets"],
                    "per_user": 1000.0 / tpot,
                    "per_gpu": f["output_throughput"] / gpus,
                }
            )
    return out


def pareto_front(points: Sequence[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
    """The points no other point beats on both axes, by tokens/s per user."""
    front, best_gpu = [], float("-inf")
    for p in sorted(points, key=lambda q: (-q["per_user"], -q["per_gpu"])):
        if p["per_gpu"] > best_gpu:
            front.append(p)
            best_gpu = p["per_gpu"]
    return front


def write_pareto(result: Mapping[str, Any], path: Path) -> bool:
    points = pareto_points(result)
    if not points:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label in dict.fromkeys(p["candidate"] for p in points):
        mine = [p for p in points if p["candidate"] == label]
        color = ax.scatter([], []).get_facecolor()
        for meets, marker in ((True, "o"), (False, "x")):
            sel = [p for p in mine if p["meets"] is meets]
            if sel:
                ax.scatter(
                    [p["per_user"] for p in sel],
                    [p["per_gpu"] for p in sel],
                    marker=marker,
                    color=color,
                    label=f"{label}{'' if meets else ' (misses SLO)'}",
                )
    front = pareto_front([p for p in points if p["meets"]])
    if len(front) > 1:
        ax.plot(
            [p["per_user"] for p in front], [p["per_gpu"] for p in front], "k--", lw=1, label="Pareto front (SLO met)"
        )
    win = _winner(result)
    if win and win.get("measured"):
        best = [p for p in points if p["id"] == win["id"] and p["meets"] and p["load"] == win["measured"]["load"]]
        if best:
            ax.scatter(
                [best[0]["per_user"]], [best[0]["per_gpu"]], marker="*", s=250, color="gold", edgecolor="k", zorder=5
            )
    ax.set_xlabel("output tokens/s per user (1000 / median TPOT ms)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.set_title(f"mode=tune: every probe (SLO: {result['slo_text']})", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def write_all(run_dir: Path, result: Mapping[str, Any]) -> None:
    (run_dir / "tune.md").write_text(render_md(result))
    recipe = recipe_text(result)
    target = run_dir / RECIPE_NAME
    if recipe is not None:
        target.write_text(recipe)
    elif target.exists():
        target.unlink()
    try:
        write_pareto(result, run_dir / "pareto.png")
    except Exception as e:  # noqa: BLE001 - the plot is a convenience: never lose the tune's answer to it
        log.warning("tune", stage="pareto plot not drawn", error=str(e))
