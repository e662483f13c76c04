"""Print a markdown table of runner manifests (for docs/validation.md and sweep notes).

python benchmarks/manifest_table.py docs/validation/*/*.manifest.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def row(path: Path) -> str:
    m = json.loads(path.read_text())
    plan, t = m["plan"], m["timings"]
    reported = m.get("vllm_reported") or {}
    completion = (m.get("verification") or {}).get("completion") or {}
    gpus = m["hardware"]["gpus"]
    card = f"{len(gpus)}x {gpus[0]['name']}" if gpus else f"CPU, {m['hardware']['cpus_allowed']} cores"
    model = m["config"]["model"]["name"] + (" (dummy)" if m["config"]["model"]["load_format"] == "dummy" else "")
    if m["status"] in ("rejected",):
        verdict = "rejected: " + "; ".join(p["message"] for p in m["problems"])
    elif m["status"] == "verified":
        verdict = f"verified: {completion.get('completion_tokens')} tokens, /v1/models {m['verification']['models']}"
    else:
        verdict = m["status"]
    cells = [
        path.name.replace(".manifest.json", ""),
        card,
        model,
        str(plan["tensor_parallel_size"]),
        plan["env"].get("CUDA_VISIBLE_DEVICES", plan["env"].get("VLLM_CPU_OMP_THREADS_BIND", "")),
        f"{t['ready_s']:.0f} s" if "ready_s" in t else "—",
        f"{reported['kv_cache_tokens']:,}" if "kv_cache_tokens" in reported else "—",
        f"{reported['max_concurrency']:.1f}x" if "max_concurrency" in reported else "—",
        verdict,
    ]
    return "| " + " | ".join(cells) + " |"


def main(paths) -> None:
    print("| run | card | model | TP | devices | time to ready | KV cache (tokens) | max concurrency | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in paths:
        print(row(Path(p)))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifests", nargs="+", help="manifest.json files")
    main(ap.parse_args().manifests)
