"""runner/launch/spec.py: a preflight finding gives a new LaunchSpec; the plan stays as planned."""

from __future__ import annotations

from runner.launch.spec import LaunchSpec
from runner.plan.build import Plan


def _plan() -> Plan:
    return Plan(
        mode="check",
        device="cuda",
        tensor_parallel_size=2,
        pipeline_parallel_size=1,
        devices=(0, 1),
        devices_available=2,
        model_name="m",
        model_path=None,
        argv=("python", "-m", "vllm"),
        env={"CUDA_VISIBLE_DEVICES": "0,1"},
        url="http://x",
    )


def test_with_env_returns_a_new_spec_and_leaves_plan_and_spec_alone():
    plan = _plan()
    spec = LaunchSpec.from_plan(plan)
    after = spec.with_env({"NCCL_P2P_DISABLE": "1"}, "why")
    assert after.env == {"CUDA_VISIBLE_DEVICES": "0,1", "NCCL_P2P_DISABLE": "1"} and after.notes == ("why",)
    assert spec.env == {"CUDA_VISIBLE_DEVICES": "0,1"} and spec.notes == ()
    assert plan.env == {"CUDA_VISIBLE_DEVICES": "0,1"} and after.python == "python"
