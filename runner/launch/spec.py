"""What is launched: the plan's argv and environment, plus what preflight learned since.

The plan stays as planned; a preflight finding that changes the launch (the all-reduce that
passes only with NCCL_P2P_DISABLE=1) returns a new LaunchSpec with the extra variable and a
note saying why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Tuple

from runner.plan.build import Plan


@dataclass(frozen=True)
class LaunchSpec:
    argv: Tuple[str, ...]
    env: Dict[str, str]
    url: str
    model_name: str
    notes: Tuple[str, ...] = field(default=())  # added after planning, with the reason

    @classmethod
    def from_plan(cls, plan: Plan) -> "LaunchSpec":
        return cls(argv=tuple(plan.argv), env=dict(plan.env), url=plan.url, model_name=plan.model_name)

    @property
    def python(self) -> str:
        return self.argv[0]

    def with_env(self, extra: Mapping[str, str], note: str) -> "LaunchSpec":
        return LaunchSpec(self.argv, {**self.env, **extra}, self.url, self.model_name, self.notes + (note,))
