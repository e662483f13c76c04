"""Manifests written atomically: a reader sees the old file or the new one, never half."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.record.manifest import write_json_atomic


def test_write_json_atomic(tmp_path):
    target = tmp_path / "manifest.json"
    write_json_atomic(target, {"status": "planned", "path": Path("/x"), "n": 1})
    assert json.loads(target.read_text()) == {"status": "planned", "path": "/x", "n": 1}
    write_json_atomic(target, {"status": "verified"})
    assert json.loads(target.read_text()) == {"status": "verified"}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_write_json_atomic_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "manifest.json"
    write_json_atomic(target, {"status": "planned"})
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(ValueError):
        write_json_atomic(target, loop)
    assert json.loads(target.read_text()) == {"status": "planned"}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
