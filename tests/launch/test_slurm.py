"""A multi-node SLURM job's roles (runner/launch/slurm.py), from SLURM's environment; and the run's
branch for a worker node, with the process seam replaced (no SLURM or Ray here)."""

from __future__ import annotations

import pytest

from runner import pipeline as run_module
from runner.launch import slurm
from runner.preflight import ray as ray_cluster


@pytest.mark.parametrize(
    "text, hosts",
    [
        ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
        ("node7", ["node7"]),
        ("a[1-2],login1,b[09-10]", ["a1", "a2", "login1", "b09", "b10"]),
    ],
)
def test_nodelist_expands_like_scontrol(text, hosts):
    assert slurm.expand_nodelist(text) == hosts


def test_roles_and_ray_commands():
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "h100-[017-018]", "SLURM_NODEID": "0"}
    head = slurm.role(env)
    assert head.is_head and head.head == "h100-017" and head.address == "h100-017:6379"
    assert slurm.ray_argv(head, 8) == ["ray", "start", "--head", "--port=6379", "--num-gpus=8", "--disable-usage-stats"]
    worker = slurm.role({**env, "SLURM_NODEID": "1"})
    assert not worker.is_head
    assert slurm.ray_argv(worker, 8) == [
        "ray",
        "start",
        "--address=h100-017:6379",
        "--num-gpus=8",
        "--disable-usage-stats",
        "--block",
    ]
    # one node, or no SLURM: the ordinary single-machine path
    assert slurm.role({**env, "SLURM_JOB_NUM_NODES": "1"}) is None and slurm.role({}) is None


def test_a_worker_node_joins_ray_and_does_not_run_the_point(compose, tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(slurm, "run", lambda argv, env: started.append(list(argv)) or 0)
    for key, value in {"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[1-2]", "SLURM_NODEID": "1"}.items():
        monkeypatch.setenv(key, value)
    node = compose(
        ["hw=multinode-2x8", "model=llama70b", "model.load_format=dummy", "mode=check", f"cache_dir={tmp_path}"]
    )
    code = run_module.execute(node, tmp_path / "run", 0.0)
    assert code == 0 and started == [
        ["ray", "start", "--address=gpu1:6379", "--num-gpus=8", "--disable-usage-stats", "--block"]
    ]
    assert not (tmp_path / "run" / "manifest.json").exists()  # the head node writes the point's manifest


def test_the_head_node_starts_ray_waits_for_the_workers_runs_the_point_and_stops_ray(compose, tmp_path, monkeypatch):
    started, seen = [], {}
    monkeypatch.setattr(slurm, "run", lambda argv, env: started.append(list(argv)) or 0)
    answers = iter([{"alive_nodes": 1}, {"alive_nodes": 2}])
    monkeypatch.setattr(ray_cluster, "check_ray_cluster", lambda *a, **k: (next(answers), []))
    monkeypatch.setattr(run_module.time, "sleep", lambda s: None)
    monkeypatch.setattr(
        run_module,
        "_execute_here",
        lambda node, *a, **k: seen.update(address=node.hw.ray_address, ips=list(node.hw.node_ips)) or 0,
    )
    for key, value in {"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[1-2]", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    node = compose(
        ["hw=multinode-2x8", "model=llama70b", "model.load_format=dummy", "mode=check", f"cache_dir={tmp_path}"]
    )
    assert run_module.execute(node, tmp_path / "run", 0.0) == 0
    assert started[0][:3] == ["ray", "start", "--head"] and started[-1] == ["ray", "stop"]
    assert seen == {"address": "gpu1:6379", "ips": ["gpu1", "gpu2"]}
