"""runner/plan/perf.py and runner/plan/cards.py: the physics of the performance model, and card matching."""

from __future__ import annotations

import dataclasses

import pytest

from runner.plan import cards, perf
from runner.plan.cards import CardFacts, NoCardFacts, card_facts, match_card
from runner.plan.perf import Calibration, Layout, ModelDims, Workload, predict

try:
    from runner.plan.shape import ModelShape
except ImportError:  # before the shape moved out of the probe
    from runner.probe.models import ModelShape

GIB = 2**30
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
}
MIXTRAL = {
    **LLAMA3_8B,
    "architectures": ["MixtralForCausalLM"],
    "model_type": "mixtral",
    "vocab_size": 32000,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
}
DIMS = ModelDims.from_shape(ModelShape.from_hf_config(LLAMA3_8B))
H100 = card_facts("NVIDIA H100 80GB HBM3")
CONCURRENCIES = [1, 2, 4, 8, 16, 32, 64, 128]


def layout(tp=1, **kw) -> Layout:
    base = dict(
        tensor_parallel_size=tp,
        weights_bytes_per_gpu=14.96 * GIB / tp,
        kv_bytes_per_token=131072 / tp,
        kv_cache_tokens=460_000 * tp,
        max_num_seqs=1024,
        max_num_batched_tokens=8192,
    )
    return Layout(**{**base, **kw})


def run(lay=None, card=H100, concurrencies=CONCURRENCIES, inp=512, out=128, cal=None, dims=DIMS):
    result = predict(dims, lay or layout(), card, Workload(inp, out, concurrencies), cal)
    assert result.predicted, result.reason
    return result


def test_throughput_rises_and_latency_grows_with_concurrency():
    points = run().points
    tokens = [p.output_tokens_per_s for p in points]
    assert tokens == sorted(tokens) and tokens[-1] > 20 * tokens[0]
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms", "decode_step_ms"):
        values = [getattr(p, metric) for p in points]
        assert values == sorted(values), metric
    assert all(p.limited_by is None and p.running == p.concurrency for p in points)


def test_decode_step_is_weights_over_bandwidth_at_concurrency_one():
    cal = Calibration(decode_efficiency=1.0, layer_overhead_us=0, sequence_overhead_us=0, step_overhead_ms=0)
    step = run(concurrencies=[1], cal=cal).points[0].decode_step_ms
    weights_ms = 14.96 * GIB / (3350e9) * 1e3
    kv_ms = (512 + 64) * 131072 / 3350e9 * 1e3
    assert step == pytest.approx(weights_ms + kv_ms, rel=1e-6)


def test_tensor_parallel_adds_allreduce_time_to_each_step():
    cal = Calibration()
    one = perf.CostModel(DIMS, layout(1), H100, cal)
    two = perf.CostModel(DIMS, layout(2), H100, cal)
    assert one.allreduce_s(32) == 0
    # 2 all-reduces per layer, each at least the stated NVLink latency
    assert two.allreduce_s(32) >= 2 * 32 * perf.ALLREDUCE_LATENCY_US["nvlink"] * 1e-6
    # the same bytes per GPU with and without the all-reduce: the difference is exactly it
    no_comm = perf.CostModel(DIMS, dataclasses.replace(layout(2), tensor_parallel_size=1), H100, cal)
    extra = two.decode_step_s(8, 600) - no_comm.decode_step_s(8, 600)
    assert extra == pytest.approx(two.allreduce_s(8)) and extra > 0
    # PCIe is slower than NVLink for the same all-reduce
    pcie = perf.CostModel(DIMS, layout(2, interconnect="pcie"), H100, cal)
    assert pcie.allreduce_s(8192) > two.allreduce_s(8192)


def test_more_bandwidth_means_lower_tpot_and_more_tokens():
    h200 = card_facts("NVIDIA H200")
    slow, fast = run(card=H100).points, run(card=h200).points
    for a, b in zip(slow, fast, strict=True):
        assert b.tpot_ms < a.tpot_ms and b.output_tokens_per_s > a.output_tokens_per_s


def test_higher_tp_lowers_latency_but_costs_per_gpu():
    tp1, tp4 = run(layout(1), concurrencies=[1, 32]).points, run(layout(4), concurrencies=[1, 32]).points
    assert tp4[0].tpot_ms < tp1[0].tpot_ms
    assert tp4[1].output_tokens_per_s > tp1[1].output_tokens_per_s
    assert tp4[1].output_tokens_per_s_per_gpu < tp1[1].output_tokens_per_s_per_gpu


def test_concurrency_is_capped_by_the_kv_cache_and_by_max_num_seqs():
    # 10,240 tokens of KV cache hold 16 requests of 512 + 128 tokens
    kv = run(layout(kv_cache_tokens=16 * 640), concurrencies=[8, 16, 64])
    assert kv.max_running == 16 and kv.kv_cache_concurrency == 16
    at16, at64 = kv.point(16), kv.point(64)
    assert at64.running == 16 and at64.limited_by == "kv_cache"
    assert at64.output_tokens_per_s == pytest.approx(at16.output_tokens_per_s)
    assert at64.ttft_ms > 3 * at16.ttft_ms  # the other 48 clients wait in the queue
    seqs = run(layout(max_num_seqs=4), concurrencies=[4, 32])
    assert seqs.max_running == 4 and seqs.point(32).limited_by == "max_num_seqs"
    assert seqs.point(32).output_tokens_per_s == pytest.approx(seqs.point(4).output_tokens_per_s)


def test_a_kv_cache_without_room_for_one_request_is_not_predicted():
    result = predict(DIMS, layout(kv_cache_tokens=600), H100, Workload(512, 128, [1]))
    assert not result.predicted and "holds no request" in result.reason


def test_longer_prompts_cost_more_time_to_first_token():
    short, long = run(inp=256, concurrencies=[8]).points[0], run(inp=4096, concurrencies=[8]).points[0]
    assert long.ttft_ms > 8 * short.ttft_ms


def test_fp8_weights_halve_the_bytes_and_use_the_fp8_peak():
    bf16 = perf.weights_bytes_estimate(DIMS, 1)
    fp8 = perf.weights_bytes_estimate(DIMS, 1, quantization="fp8")
    assert 0.5 * bf16 < fp8 < 0.6 * bf16  # embeddings and LM head stay bf16
    assert bf16 == pytest.approx(14.96 * GIB, rel=0.01)
    model_bf16 = perf.CostModel(DIMS, layout(), H100, Calibration())
    model_fp8 = perf.CostModel(DIMS, layout(quantization="fp8"), H100, Calibration())
    assert model_fp8.flops_per_s == pytest.approx(2 * model_bf16.flops_per_s, rel=0.01)
    a100 = card_facts("NVIDIA A100-SXM4-80GB")
    note = predict(DIMS, layout(quantization="fp8"), a100, Workload(512, 128, [1])).notes
    assert any("no fp8 tensor cores" in n for n in note)


def test_moe_reads_more_experts_as_the_batch_grows():
    dims = ModelDims.from_shape(ModelShape.from_hf_config(MIXTRAL))
    assert dims.moe and dims.experts_touched(1) == pytest.approx(2)
    assert dims.experts_touched(4) > 4 and dims.experts_touched(64) == pytest.approx(8, rel=1e-3)
    model = perf.CostModel(dims, layout(weights_bytes_per_gpu=87 * GIB), H100, Calibration())
    assert model.weight_bytes_read(1) < 0.4 * 87 * GIB
    assert model.weight_bytes_read(256) == pytest.approx(87 * GIB, rel=1e-3)
    # FLOPs count the two routed experts, not all eight
    assert dims.active_layer_params < 0.35 * dims.layer_params


def test_no_card_facts_is_a_clear_refusal_and_overrides_make_a_card():
    cpu = card_facts(None, device="cpu")
    assert isinstance(cpu, NoCardFacts) and not cpu and "hw.memory_bandwidth_gbps" in cpu.reason
    result = predict(DIMS, layout(), cpu, Workload(32, 16, [1]))
    assert not result.predicted and result.points == [] and "no card facts" in result.reason
    made = card_facts("Some Future GPU", {"memory_bandwidth_gbps": 1000, "peak_bf16_tflops": 200})
    assert isinstance(made, CardFacts) and made.overridden == ("bf16_tflops", "memory_bandwidth_gbps")
    assert run(card=made, concurrencies=[1]).points[0].tpot_ms > run(concurrencies=[1]).points[0].tpot_ms


def test_uncalibrated_cards_say_so_and_calibrated_ones_do_not():
    result = run(concurrencies=[1])
    assert not result.calibrated and any("not calibrated" in n for n in result.notes)
    data = {"cards": {"H100 80GB HBM3": {"constants": {"decode_efficiency": 0.9}, "points": [{}], "vllm": "0.26.0"}}}
    cal = Calibration.from_file_data(data, H100)
    assert (
        cal.calibrated and cal.decode_efficiency == 0.9 and cal.prefill_efficiency == Calibration().prefill_efficiency
    )
    calibrated = predict(DIMS, layout(), H100, Workload(512, 128, [1]), cal, vllm_version="0.27.0")
    assert calibrated.calibrated and any("calibrated with vLLM 0.26.0" in n for n in calibrated.notes)
    other = Calibration.from_file_data(data, card_facts("NVIDIA L4"))
    assert not other.calibrated and "no calibration for L4" in other.source


def test_pipeline_parallel_is_not_guessed():
    result = predict(DIMS, layout(pipeline_parallel_size=2), H100, Workload(512, 128, [1]))
    assert not result.predicted and "PP > 1" in result.reason


def test_prediction_serialises():
    out = run(concurrencies=[1, 8]).to_dict()
    assert out["card"] == "H100 80GB HBM3" and [p["concurrency"] for p in out["points"]] == [1, 8]
    assert set(out["constants"]) == set(Calibration.CONSTANTS)


@pytest.mark.parametrize(
    "nvml, key",
    [
        ("NVIDIA H100 80GB HBM3", "H100 80GB HBM3"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
        ("NVIDIA A100-PCIE-40GB", "A100-PCIE-40GB"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA B200", "B200"),
        ("h100 80gb hbm3", "H100 80GB HBM3"),
    ],
)
def test_nvml_names_match_their_card(nvml, key):
    assert match_card(nvml).key == key


@pytest.mark.parametrize("name", ["NVIDIA L40", "NVIDIA A40", "NVIDIA H100", "Tesla T4", "", None])
def test_names_not_in_the_table_match_nothing(name):
    assert match_card(name) is None
    assert isinstance(card_facts(name), NoCardFacts)


def test_card_table_facts_are_sane():
    for card in cards.CARDS:
        assert 100 <= card.memory_bandwidth_gbps <= 10000, card.key
        assert card.fp8 == (card.compute_capability >= (8, 9)), card.key
        if card.fp8:
            assert card.fp8_tflops == pytest.approx(2 * card.bf16_tflops, rel=0.03), card.key
    assert match_card("NVIDIA H200").memory_bandwidth_gbps > match_card("NVIDIA H100 80GB HBM3").memory_bandwidth_gbps
    overridden = card_facts("NVIDIA H100 80GB HBM3", {"memory_bandwidth_gbps": 3000, "peak_fp8_tflops": None})
    assert overridden.memory_bandwidth_gbps == 3000 and overridden.overridden == ("memory_bandwidth_gbps",)


def test_a_fit_table_row_predicts_like_the_explicit_layout():
    row = {"tensor_parallel_size": 2, "weights_gib_per_gpu": 7.48, "kv_cache_tokens": 1_059_360, "fits": True}
    serve = {"max_num_seqs": 1024, "max_num_batched_tokens": 8192}
    shape = ModelShape.from_hf_config(LLAMA3_8B)
    from_row = perf.predict_from_fit(shape, row, H100, Workload(512, 128, [1, 32]), serve=serve)
    explicit = run(
        layout(2, weights_bytes_per_gpu=7.48 * GIB, kv_cache_tokens=1_059_360, kv_bytes_per_token=65536),
        concurrencies=[1, 32],
    )
    assert from_row.points == explicit.points
    assert perf.kv_bytes_per_token(DIMS, 1) == 131072 and perf.kv_bytes_per_token(DIMS, 1, "fp8_e4m3") == 65536
    # no weights in the row (a quantized model without its files): estimated from the dimensions
    fp8 = perf.predict_from_fit(
        shape, {"tensor_parallel_size": 1}, H100, Workload(512, 128, [1]), serve={"quantization": "fp8"}
    )
    assert fp8.predicted and fp8.points[0].tpot_ms < run(concurrencies=[1]).points[0].tpot_ms
