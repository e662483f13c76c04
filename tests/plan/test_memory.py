"""The memory model against vLLM's own start-up reports (H100 80GB HBM3, vLLM 0.26.0).

tests/fixtures/memory_points.json is what `benchmarks/memory_table.py` read from the runs'
manifests and vLLM logs (docs/validation/2026-11-27-h100x4*/): each point's overrides, the
card, and vLLM's figures. The planner is asked again for each and must land within 5 % of
vLLM's KV-cache size — the goal the memory model was built to."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.plan import memory
from runner.plan.build import make_plan
from runner.plan.shape import ModelShape
from runner.probe.hardware import Gpu, HardwareProbe
from runner.record import vllm_log

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
POINTS = json.loads((FIXTURES / "memory_points.json").read_text())
LOG_70B_TP2 = Path(__file__).resolve().parents[2] / "docs/validation/2026-11-27-h100x2/llama70b-tp2.vllm.log"
GIB = 2**30


@pytest.fixture
def plan_for(compose):
    def _plan(overrides, probe):
        cfg = OmegaConf.to_object(compose(["cache_dir=/nonexistent", *overrides]))
        return make_plan(cfg, probe, dict(cfg.model.hf_config), "0.26.0", {})

    return _plan


def _probe(point) -> HardwareProbe:
    gpus = tuple(
        Gpu(
            index=i,
            name=point["gpu_name"],
            pci_bus_id=f"00000000:00:{6 + i:02x}.0",
            memory_total_bytes=point["gpu_total_bytes"],
            memory_free_bytes=point["gpu_total_bytes"] - 500 * 2**20,
            compute_capability=(9, 0),
        )
        for i in range(point["gpu_count"])
    )
    return HardwareProbe(gpus=gpus, cpus_allowed=tuple(range(16)), source="nvml")


def _plan(compose, point):
    cfg = OmegaConf.to_object(compose([*point["overrides"], "mode=check", "cache_dir=/nonexistent"]))
    return make_plan(cfg, _probe(point), dict(cfg.model.hf_config), point["vllm"], {})


def test_the_points_cover_what_the_issue_asks():
    models = {next(o for o in p["overrides"] if o.startswith("model=")) for p in POINTS}
    assert {"model=llama3-8b", "model=llama70b"} <= models
    tps = {next(o for o in p["overrides"] if o.startswith("serve.tensor_parallel_size")) for p in POINTS}
    assert {"serve.tensor_parallel_size=1", "serve.tensor_parallel_size=2", "serve.tensor_parallel_size=4"} <= tps
    utils = {o for p in POINTS for o in p["overrides"] if o.startswith("serve.gpu_memory_utilization")}
    assert len(utils) >= 3  # 0.7, 0.8, 0.92, 0.95 were run
    assert len(POINTS) >= 6


@pytest.mark.parametrize("point", POINTS, ids=[p["name"] for p in POINTS])
def test_predicted_kv_cache_within_5_percent_of_vllm(compose, point):
    plan = _plan(compose, point)
    fit = plan.estimate["fit"]
    measured = point["measured"]["kv_cache_tokens"]
    assert abs(fit["kv_cache_tokens"] - measured) / measured < 0.05, (fit["kv_cache_tokens"], measured)
    assert fit["kv_cache_tokens"] % memory.BLOCK_SIZE == 0
    if point["measured"].get("weights_gib"):
        assert fit["weights_gib_per_gpu"] == pytest.approx(point["measured"]["weights_gib"], abs=0.15)
    if "activation_peak_gib" in point["measured"]:
        assert fit["activation_peak_gib"] == pytest.approx(point["measured"]["activation_peak_gib"], abs=0.25)
    if "requested_gib" in point["measured"]:
        assert fit["requested_gib"] == pytest.approx(point["measured"]["requested_gib"], abs=0.02)


@pytest.mark.parametrize("point", POINTS, ids=[p["name"] for p in POINTS])
def test_verdict_matches_what_happened(compose, point):
    """Llama-3.1-70B at TP 2 with utilization 0.95 ran out of memory after start-up; the
    planner must refuse it (and say which utilization is safe); every other point ran."""
    plan = _plan(compose, point)
    if point["outcome"].startswith("failed"):
        [problem] = plan.problems
        assert problem.key == "serve.gpu_memory_utilization" and "out of memory" in problem.message
        safe = float(problem.fix.split("=")[1].split(",")[0])
        assert safe < 0.95
    else:
        assert plan.ok, [str(p) for p in plan.problems]


def test_kv_arithmetic_is_vllms():
    shape = ModelShape.from_hf_config(
        {
            "architectures": ["LlamaForCausalLM"],
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "num_hidden_layers": 80,
            "hidden_size": 8192,
            "intermediate_size": 28672,
            "vocab_size": 128256,
        }
    )
    # K and V, 4 of the 8 KV heads per rank, head_dim 128, bf16, 80 layers
    assert memory.kv_bytes_per_token(shape, 2) == 80 * 4 * 128 * 2 * 2
    # TP 16 > 8 KV heads: each rank keeps one replicated head
    assert memory.kv_bytes_per_token(shape, 16) == 80 * 1 * 128 * 2 * 2
    assert memory.kv_bytes_per_token(shape, 2, kv_dtype_bytes=1) * 2 == memory.kv_bytes_per_token(shape, 2)
    fit = memory.predict(
        shape, 4, shape.parameter_count() * 2, 85_520_809_984, max_model_len=8192, vllm_version="0.26.0"
    )
    blocks = fit.kv_cache_tokens // memory.BLOCK_SIZE
    assert fit.max_concurrency == pytest.approx(blocks / math.ceil(8192 / memory.BLOCK_SIZE), abs=0.01)
    # requested = ceil(util x cudaMemGetInfo's total), as vLLM computes it
    assert fit.requested_gib == pytest.approx(math.ceil(85_017_493_504 * 0.92) / GIB, abs=0.01)


def test_newer_vllm_sets_cuda_graphs_aside():
    shape = ModelShape.from_hf_config(
        {
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "num_hidden_layers": 32,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "vocab_size": 128256,
        }
    )
    old = memory.predict(shape, 2, shape.parameter_count() * 2, 85_520_809_984, vllm_version="0.26.0")
    new = memory.predict(shape, 2, shape.parameter_count() * 2, 85_520_809_984, vllm_version="0.32.0")
    assert not old.cuda_graphs_counted and new.cuda_graphs_counted
    assert old.kv_cache_gib - new.kv_cache_gib == pytest.approx(new.cuda_graph_gib, abs=0.01)
    eager = memory.predict(
        shape, 2, shape.parameter_count() * 2, 85_520_809_984, vllm_version="0.32.0", enforce_eager=True
    )
    assert eager.cuda_graph_gib == 0 and eager.kv_cache_gib > new.kv_cache_gib


def test_fixes_are_overrides_that_fit(compose, plan_for, probe_h100x4):
    # 128k context on two H100s: predicted ~39k tokens. Every suggested override must itself plan clean.
    base = [
        "hw=auto",
        "model=llama70b",
        "model.load_format=dummy",
        "mode=check",
        "serve.tensor_parallel_size=2",
        "serve.max_model_len=131072",
    ]
    plan = plan_for(base, probe_h100x4)
    [problem] = plan.problems
    assert problem.key == "serve.max_model_len"
    fixes = problem.fix.split(", or ")
    assert fixes[0] == "serve.tensor_parallel_size=4"
    assert any(f.startswith("serve.max_model_len=") for f in fixes)
    longest = int(next(f for f in fixes if f.startswith("serve.max_model_len=")).split("=")[1])
    assert longest % 256 == 0 and longest <= 0.95 * plan.estimate["fit"]["kv_cache_tokens"]
    for fix in fixes:
        key = fix.split("=")[0]
        assert plan_for([o for o in base if not o.startswith(key + "=")] + [fix], probe_h100x4).ok, fix


def test_fp8_kv_is_offered_when_it_is_what_fits(plan_for, probe_h100x4):
    # 70B at TP 2 with 64k tokens: bf16 KV holds ~39k, fp8 twice that.
    plan = plan_for(
        [
            "hw=auto",
            "model=llama70b",
            "model.load_format=dummy",
            "mode=check",
            "serve.tensor_parallel_size=2",
            "serve.max_model_len=65536",
        ],
        probe_h100x4,
    )
    [problem] = plan.problems
    assert "serve.kv_cache_dtype=fp8" in problem.fix.split(", or ")


def test_vllm_startup_report_is_read():
    figures = vllm_log.reported_figures(LOG_70B_TP2.read_text())
    assert figures["kv_cache_tokens"] == 38576 and figures["kv_cache_gib"] == 5.89
    profile = figures["memory_profile"]
    assert profile == {
        "free_gib": 77.64,
        "total_gib": 79.18,
        "gpu_memory_utilization": 0.92,
        "requested_gib": 72.84,
        "weights_gib": 65.74,
        "activation_peak_gib": 1.15,
        "non_torch_gib": 0.06,
        "cuda_graph_gib": 1.51,
    }


def test_cpu_kv_cache_is_the_space_per_rank(plan_for):
    cpu = HardwareProbe(cpus_allowed=(0, 1))
    plan = plan_for(["hw=cpu-2", "model=tiny-llama"], cpu)
    fit = plan.estimate["fit"]
    # vLLM-CPU reported 4,194,304 tokens for this model at TP 2 with 1 GiB (docs/validation.md)
    assert plan.ok and fit["kv_cache_tokens"] == 4_194_304 and fit["max_concurrency"] == 2048.0
    # Llama-3.1-70B's 8192 tokens x 160 KiB per rank need more than 1 GiB: the space, or a shorter length
    big = plan_for(["hw=cpu-2", "model=llama70b", "model.load_format=dummy"], cpu)
    [problem] = big.problems
    assert problem.key == "serve.max_model_len" and "6,544 tokens" in problem.message
    assert problem.fix == "hw.cpu_kvcache_space_gib=2, or serve.max_model_len=6144"


def test_weights_come_from_safetensors_headers_when_on_disk(compose, tmp_path):
    from runner.launch.generate import materialise
    from runner.probe import models

    cfg = OmegaConf.to_object(compose(["hw=nvlink-2gpu", "model=tiny-llama", "mode=plan", f"cache_dir={tmp_path}"]))
    path = materialise(cfg.model, cfg.cache_dir)
    on_disk = models.safetensors_weights(path)
    size = (Path(path) / "model.safetensors").stat().st_size
    # the tensors' bytes are the file minus its 8-byte length and JSON header
    assert 0 < size - on_disk["bytes"] < 4096 and on_disk["bytes_by_dtype"] == {"BF16": on_disk["bytes"]}
    assert on_disk["elements"] * 2 == on_disk["bytes"]
    probe = HardwareProbe()
    plan = make_plan(cfg, probe, dict(cfg.model.hf_config), "0.26.0", {}, weights_on_disk=on_disk)
    assert plan.estimate["weights_source"] == "safetensors headers"
    assert plan.estimate["fit"]["weights_gib_per_gpu"] == round(on_disk["bytes"] / 2 / GIB, 2)
    # serve.dtype=float32 doubles the floating-point tensors
    f32 = OmegaConf.to_object(
        compose(["hw=nvlink-2gpu", "model=tiny-llama", "mode=plan", f"cache_dir={tmp_path}", "serve.dtype=float32"])
    )
    plan32 = make_plan(f32, probe, dict(f32.model.hf_config), "0.26.0", {}, weights_on_disk=on_disk)
    assert plan32.estimate["weights_gib"] == round(2 * on_disk["bytes"] / GIB, 2)
    assert models.safetensors_weights(str(tmp_path)) is None


def test_a_quantized_model_without_files_is_sized_from_its_quantization_config(compose, probe_h100x4):
    # 4-bit weights are about a quarter of what the parameter count says: sized from quantization_config
    # (the published checkpoint's files are 41.6 GB = 38.7 GiB), not from the parameter count
    awq = {
        k: v
        for k, v in json.loads((FIXTURES / "hf_configs" / "qwen2.5-72b-instruct-awq.json").read_text()).items()
        if not k.startswith("_")
    }
    cfg = OmegaConf.to_object(
        compose(
            [
                "hw=auto",
                "model=qwen2.5-72b",
                "model.load_format=dummy",
                "mode=check",
                "serve.tensor_parallel_size=1",
                "cache_dir=/nonexistent",
            ]
        )
    )
    plan = make_plan(cfg, probe_h100x4, awq, "0.26.0", {})
    assert plan.ok, plan.problems
    assert plan.estimate["weights_source"] == "config.json quantization_config (awq)"
    assert abs(plan.estimate["fit"]["weights_gib_per_gpu"] - 38.7) < 0.1
    assert not any("memory not predicted" in n for n in plan.notes)
    # the same shape unquantized does not fit on one GPU
    plain = make_plan(cfg, probe_h100x4, {k: v for k, v in awq.items() if k != "quantization_config"}, "0.26.0", {})
    assert not plain.ok
    # a method the model does not size (bitsandbytes) is still not guessed
    bnb = dict(awq, quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    unknown = make_plan(cfg, probe_h100x4, bnb, "0.26.0", {})
    assert "fit" not in unknown.estimate and any("memory not predicted" in n for n in unknown.notes)
