"""runner.preflight.ray: a dead Ray address is a problem naming hw.ray_address, found by a knock on
the port before any attach
(tests/e2e/test_multinode_ray.py attaches to a live cluster)."""

from __future__ import annotations

import socket

import pytest

from runner.preflight import ray as ray_preflight
from runner.preflight.ray import check_ray_cluster


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("form", ["{port}", "ray://127.0.0.1:{port}"])
def test_absent_ray_address_is_a_problem_without_attaching(form, monkeypatch):
    port = _closed_port()
    address = form.format(port=port) if form.startswith("ray") else f"127.0.0.1:{port}"

    def no_attach(*args, **kwargs):  # the closed port answers first: Ray's long attach never starts
        raise AssertionError(f"attached although nothing listens: {args}")

    monkeypatch.setattr(ray_preflight.subprocess, "run", no_attach)
    summary, problems = check_ray_cluster(address, need_gpus=2, device="cpu")
    assert [p.key for p in problems] == ["hw.ray_address"]
    assert problems[0].value == address
    assert f"nothing answers at 127.0.0.1:{port}" in problems[0].message
    assert "ray start --head" in problems[0].fix
    assert summary["reachable"] is False and summary["alive_nodes"] == 0
