"""Every fix a memory refusal offers is one that plans clean: each published shape in
tests/fixtures/hf_configs, at every TP size its rules allow, on cards with and without fp8, at the
default and a low utilization, is planned; every override a refusal names is applied alone and
planned again, and must leave no problem. A fix never repeats the value already set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.plan.build import make_plan
from runner.plan.rules import tp_violation
from runner.plan.shape import ModelShape
from runner.probe.hardware import Gpu, HardwareProbe

SEEN: dict = {}  # fix key -> the (model, card) pairs whose refusal offered it
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf_configs"
MIB = 2**20
CARDS = {
    "h100x8": ("NVIDIA H100 80GB HBM3", 81559 * MIB, (9, 0), 8),
    "a100x4": ("NVIDIA A100-SXM4-80GB", 81920 * MIB, (8, 0), 4),
    "h200x1": ("NVIDIA H200", 143771 * MIB, (9, 0), 1),
}


def _probe(name, total, cc, count) -> HardwareProbe:
    gpus = tuple(Gpu(i, name, f"00000000:00:{6 + i:02x}.0", total, total - 500 * MIB, cc) for i in range(count))
    return HardwareProbe(gpus=gpus, cpus_allowed=tuple(range(64)), source="nvml")


def _published(name: str) -> dict:
    return {k: v for k, v in json.loads((FIXTURES / f"{name}.json").read_text()).items() if not k.startswith("_")}


@pytest.mark.parametrize("card", sorted(CARDS))
@pytest.mark.parametrize("model", sorted(p.stem for p in FIXTURES.glob("*.json")))
def test_every_offered_fix_plans_clean(compose, model, card):
    hf = _published(model)
    shape = ModelShape.from_hf_config(hf)
    probe = _probe(*CARDS[card])
    base = ["hw=auto", "model=llama3-8b", "model.load_format=dummy", "mode=check", "cache_dir=/nonexistent"]

    def plan(overrides):
        cfg = OmegaConf.to_object(compose([*base, *overrides]))
        return make_plan(cfg, probe, hf, "0.26.0", {})

    for tp in (1, 2, 4, 8):
        if tp > CARDS[card][3] or tp_violation(shape, tp, hf):
            continue
        for extra in ([], ["serve.gpu_memory_utilization=0.5"], ["serve.max_model_len=32768"]):
            overrides = [f"serve.tensor_parallel_size={tp}", *extra]
            found = plan(overrides)
            for problem in found.problems:
                if problem.fix.startswith("more or larger GPUs"):
                    continue
                for fix in problem.fix.split(", or "):
                    key, value = fix.split("=", 1)
                    SEEN.setdefault(key, set()).add((model, card))
                    assert f"{key}={value}" not in overrides, (model, overrides, problem)
                    again = [o for o in overrides if not o.startswith(key + "=")] + [fix]
                    fixed = plan(again)
                    assert not fixed.problems, (model, card, overrides, fix, fixed.problems)


def test_the_walk_saw_every_kind_of_fix():
    # runs after the walk above (definition order): it must have re-planned each kind of fix
    assert {
        "serve.tensor_parallel_size",
        "serve.max_model_len",
        "serve.gpu_memory_utilization",
        "serve.quantization",
        "serve.kv_cache_dtype",
    } <= set(SEEN), SEEN.keys()
    assert sum(len(v) for v in SEEN.values()) >= 40


def test_a_low_utilization_is_told_to_raise_it_not_to_buy_gpus(compose):
    # seen on an H200: mixtral-8x7b at utilization 0.5 was told "more or larger GPUs"
    cfg = OmegaConf.to_object(
        compose(
            [
                "hw=auto",
                "model=mixtral-8x7b",
                "model.load_format=dummy",
                "mode=check",
                "cache_dir=/nonexistent",
                "serve.gpu_memory_utilization=0.5",
            ]
        )
    )
    plan = make_plan(cfg, _probe(*CARDS["h200x1"]), dict(cfg.model.hf_config), "0.26.0", {})
    [problem] = plan.problems
    assert problem.fix == "serve.gpu_memory_utilization=0.92, or serve.quantization=fp8"
