"""The profile run's activation peak for fused-MoE models (runner/plan/memory.py), against sizes
worked out here by hand from vLLM 0.26.0's source:

- TritonExperts.workspace_shapes (vllm/model_executor/layers/fused_moe/experts/triton_moe.py), taken
  by FusedMoEKernelModularImpl._allocate_buffers (modular_kernel.py) from the WorkspaceManager
  (vllm/v1/worker/workspace.py): M x top-k x max(N/2, K) and M x top-k x max(N, K) in the activation
  dtype, each rounded up to 256 B, N = 2 x moe_intermediate / TP, K = hidden, one buffer kept for all
  layers;
- the V1 GPUModelRunner's _dummy_sampler_run (vllm/v1/worker/gpu_model_runner.py), which MoE
  architectures outside DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES (vllm/config/vllm.py) run on: per logit
  the bf16 logits and three float32 tensors, plus the Triton top-k/top-p buffer of min(next pow2(min(132,
  rows)), 132) vocabulary rows in float32, with the dummy run's hidden states alive.

The measured figures are vLLM's own "… GiB for peak activation" (docs/validation/2026-12-04-h200-memory/,
docs/validation/2026-11-27-h100x4-memory/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.plan import memory
from runner.plan.shape import ModelShape

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf_configs"
GIB = 2**30


def _shape(name: str) -> ModelShape:
    return ModelShape.from_hf_config(json.loads((FIXTURES / f"{name}.json").read_text()))


def test_which_models_vllm_0_26_runs_on_the_v1_model_runner():
    # the logs: Mixtral and Qwen3-MoE have no "Using V2 Model Runner"; DeepSeek-V2-Lite and the dense ones do
    assert memory.uses_v1_model_runner(_shape("qwen3-30b-a3b"))
    assert memory.uses_v1_model_runner(_shape("mixtral-8x7b-v0.1"))
    assert not memory.uses_v1_model_runner(_shape("deepseek-v2-lite"))
    assert not memory.uses_v1_model_runner(_shape("llama-3.1-8b"))


def test_qwen3_workspace_is_two_m_topk_hidden_buffers():
    # N = 2 x 768 = 1536, N/2 = 768: both maxima are K = 2048
    # workspace13 = 8192 x 8 x 2048 = 134,217,728 elements (output 8192 x 2048 is smaller)
    # workspace2  = 8192 x 8 x max(1536, 2048) = 134,217,728 elements
    # 2 x 134,217,728 x 2 B = 536,870,912 B = 0.5 GiB
    assert memory.fused_moe_workspace_bytes(_shape("qwen3-30b-a3b"), 1, 8192) == 536_870_912


def test_mixtral_workspace_at_tp_1_and_2():
    shape = _shape("mixtral-8x7b-v0.1")
    # TP 1: N = 28672; workspace13 = 8192 x 2 x max(14336, 4096) = 234,881,024 el = 469,762,048 B;
    #       workspace2 = 8192 x 2 x max(28672, 4096) = 469,762,048 el = 939,524,096 B; 1.3125 GiB
    assert memory.fused_moe_workspace_bytes(shape, 1, 8192) == 469_762_048 + 939_524_096
    # TP 2: N = 14336; 8192 x 2 x 7168 x 2 B + 8192 x 2 x 14336 x 2 B = 234,881,024 + 469,762,048
    assert memory.fused_moe_workspace_bytes(shape, 2, 8192) == 234_881_024 + 469_762_048


def test_workspace_rounds_each_tensor_to_256_bytes_and_is_zero_without_experts():
    toy = ModelShape.from_hf_config(
        {
            "architectures": ["MixtralForCausalLM"],
            "hidden_size": 100,
            "intermediate_size": 30,
            "num_local_experts": 4,
            "num_experts_per_tok": 3,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "vocab_size": 64,
        }
    )
    # one token: N = 60; workspace13 = 3 x max(30, 100) = 300 el = 600 B -> 768; workspace2 = 3 x 100 -> 768
    assert memory.fused_moe_workspace_bytes(toy, 1, 1) == 768 + 768
    assert memory.fused_moe_workspace_bytes(_shape("llama-3.1-8b"), 1, 8192) == 0


def test_v1_sampler_peak_qwen3():
    # rows = min(8192, 1024) = 1024; 1024 x 151,936 x (2 + 4 + 4 + 4) B = 2,178,154,496
    # Triton buffer: 132 x 151,936 x 4 B = 80,222,208
    # hidden states: (8192 + 2 x 1024) x 2048 x 2 B = 41,943,040
    expected = 2_178_154_496 + 80_222_208 + 41_943_040
    assert memory.v1_sampler_peak_bytes(_shape("qwen3-30b-a3b"), 8192, 1024) == expected


def test_v1_sampler_triton_buffer_follows_the_programs():
    shape = _shape("qwen3-30b-a3b")
    vocab, hidden = 151_936, 2048
    # 100 rows: 100 programs, buffer of next_power_of_2(100) = 128 rows
    assert memory.v1_sampler_peak_bytes(shape, 8192, 100) == (
        100 * vocab * 14 + 128 * vocab * 4 + (8192 + 200) * hidden * 2
    )
    # 64 rows: 64 programs, 64 rows; and tokens below max_num_seqs caps the rows
    assert memory.v1_sampler_peak_bytes(shape, 64, 1024) == 64 * vocab * 14 + 64 * vocab * 4 + (64 + 128) * hidden * 2


def test_qwen3_peak_is_workspace_plus_v1_sampler_as_vllm_logged():
    shape = _shape("qwen3-30b-a3b")
    peak = memory.activation_peak_bytes(shape, 1, 8192, 1024)
    # forward with no dense MLP: 0.5 GiB + 8192 x 2.2 x 2048 x 2 B + 0.18 GiB = 0.75 GiB < sampler phase
    assert peak == 536_870_912 + 2_300_319_744  # 2.642 GiB
    assert abs(peak / GIB - 2.68) < 0.05  # vLLM: "2.68 GiB for peak activation"
    # a pipeline stage before the last runs no sampler: the workspace and the forward term only
    no_sampler = memory.activation_peak_bytes(shape, 1, 8192, 1024, sampler_run=False)
    assert no_sampler == pytest.approx(536_870_912 + 8192 * 2.2 * 2048 * 2 + 0.18 * GIB, abs=1)


def test_mixtral_peaks_tp1_fp8_and_tp2():
    shape = _shape("mixtral-8x7b-v0.1")
    # TP 1 (the H200 point, online fp8: the workspace stays bf16):
    #   sampler 1024 x 32,000 x 14 = 458,752,000, buffer 132 x 32,000 x 4 = 16,896,000,
    #   states (8192 + 2048) x 4096 x 2 = 83,886,080; + workspace 1,409,286,144 = 1,968,820,224 (1.83 GiB)
    peak1 = memory.activation_peak_bytes(shape, 1, 8192, 1024)
    assert peak1 == 1_409_286_144 + 458_752_000 + 16_896_000 + 83_886_080
    assert abs(peak1 / GIB - 1.87) < 0.05  # vLLM on the H200
    # TP 2 (the H100 point): same sampler (all-gathered logits), workspace 704,643,072 (1.18 GiB)
    peak2 = memory.activation_peak_bytes(shape, 2, 8192, 1024)
    assert peak2 == 704_643_072 + 458_752_000 + 16_896_000 + 83_886_080
    assert abs(peak2 / GIB - 1.21) < 0.05  # vLLM on the H100s


def test_deepseek_v2_lite_v2_runner_peak():
    shape = _shape("deepseek-v2-lite")
    # workspace: N = 2816, N/2 = 1408 < 2048: 8192 x 6 x 2048 x 2 + 8192 x 6 x 2816 x 2 = 478,150,656
    workspace = 201_326_592 + 276_824_064
    assert memory.fused_moe_workspace_bytes(shape, 1, 8192) == workspace
    # the three candidates (V2 runner: the fitted sampler term):
    dense = 8192 * (3 * 10944 + 2.2 * 2048) * 2 + 0.18 * GIB  # layer 0, before any MoE layer: 0.75 GiB
    moe = workspace + 8192 * (3 * 2816 + 2.2 * 2048) * 2 + 0.18 * GIB  # shared experts' MLP: 0.82 GiB
    sampler = workspace + 1024 * 102_400 * 3 + 0.28 * GIB  # 1.02 GiB
    assert sampler > moe > dense
    peak = memory.activation_peak_bytes(shape, 1, 8192, 1024)
    assert peak == pytest.approx(sampler, abs=1)
    assert abs(peak / GIB - 1.13) < 0.15  # vLLM on the H200: 1.13


def test_dense_models_keep_the_fitted_terms():
    # Llama-3.1-8B: forward 8192 x (3 x 14336 + 2.2 x 4096) x 2 + 0.18 GiB beats the sampler
    # 1024 x 128,256 x 3 + 0.28 GiB; no workspace
    peak = memory.activation_peak_bytes(_shape("llama-3.1-8b"), 1, 8192, 1024)
    assert peak == pytest.approx(8192 * (3 * 14336 + 2.2 * 4096) * 2 + 0.18 * GIB, abs=1)
