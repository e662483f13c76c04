"""runner/record/manifest.schema.json against the manifest's dataclasses (runner/record/manifest.py):
every field is in the schema and every schema property is a field, and what the schema requires is
what the dataclass cannot leave out, so the two cannot drift apart."""

from __future__ import annotations

import dataclasses
import json

import jsonschema
import pytest

from runner.record.manifest import SCHEMA_PATH, Failure, Manifest, RunFailed, Timings, build_manifest

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def _required(cls) -> set:
    missing = (dataclasses.MISSING,)
    return {f.name for f in dataclasses.fields(cls) if f.default in missing and f.default_factory in missing}


@pytest.mark.parametrize(
    "cls, node",
    [
        (Manifest, SCHEMA),
        (Failure, SCHEMA["properties"]["failure"]),
        (Timings, SCHEMA["properties"]["timings"]),
    ],
    ids=["manifest", "failure", "timings"],
)
def test_schema_and_dataclass_name_the_same_fields(cls, node):
    fields = {f.name for f in dataclasses.fields(cls)}
    assert fields == set(node["properties"]), {
        "only in the dataclass": sorted(fields - set(node["properties"])),
        "only in the schema": sorted(set(node["properties"]) - fields),
    }
    assert _required(cls) == set(node.get("required", []))


def _full_manifest() -> Manifest:
    return build_manifest(
        status="failed",
        exit_code=1,
        mode="check",
        run_dir="/tmp/run",
        started_at="2026-12-02T00:00:00+00:00",
        command=["python", "-m", "runner"],
        versions={"python": "3.11", "runner": "0"},
        problems=[],
        notes=["a note"],
        config={"hw": {}, "model": {}, "serve": {}, "mode": "check"},
        plan={
            "device": "cpu",
            "tensor_parallel_size": 1,
            "pipeline_parallel_size": 1,
            "devices": [0],
            "argv": ["python"],
            "env": {},
            "url": "http://127.0.0.1:8000",
        },
        hardware={"source": "cpu", "gpus": [], "cpus_allowed": 2},
        model={"name": "tiny-llama", "source": "generated"},
        placement={"devices": [0]},
        fit=None,
        timings=Timings(overhead_before_spawn_s=0.4, total_s=3.0),
        failure=Failure(stage="start-up", reason="r", cause="vllm_exited", fix="f", summary="s", log_tail=""),
        teardown={"signal": "SIGTERM", "survivors": []},
    )


def test_a_built_manifest_is_valid_and_leaves_out_what_did_not_run():
    record = _full_manifest().to_dict()
    jsonschema.validate(record, SCHEMA)
    # a planned run's sections are written even when null; stages that did not run are absent
    assert record["fit"] is None and record["placement"] == {"devices": [0]}
    assert "verification" not in record and "bench" not in record
    assert record["timings"] == {"overhead_before_spawn_s": 0.4, "total_s": 3.0}
    assert record["failure"]["evidence"] is None and record["failure"]["stage"] == "start-up"


def test_a_rejected_before_compose_manifest_has_no_planned_sections():
    record = dataclasses.replace(
        _full_manifest(), status="rejected", exit_code=2, plan=None, config=None, placement=None
    ).to_dict()
    assert "fit" not in record and "placement" not in record and "plan" not in record


def test_run_failed_carries_the_sections_its_stage_still_produced():
    failed = RunFailed("bench", "1 of 2 benchmark(s) failed", "bench_failed", "read bench.log")
    assert str(failed) == "bench: 1 of 2 benchmark(s) failed" and failed.sections == {}
