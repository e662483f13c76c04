"""Predicted serving performance: TTFT, TPOT and tokens/s of a vLLM server under a closed-loop benchmark.

Pure: no I/O. The inputs are the model's dimensions, the parallel layout, what the memory model predicted
(weights per GPU, KV bytes per token, KV-cache tokens), the card's facts (:mod:`runner.plan.cards`), the
workload (input / output tokens per request, the concurrencies) and a :class:`Calibration` (read by the
caller from the file ``python -m runner.measure.calibrate`` writes). ``docs/tune.md`` derives the model and
reports how well it predicts points it was not fitted on.

The model, per GPU:

- a **decode step** over ``b`` running sequences at mean context ``m`` reads the weights (for MoE: the
  experts the step's tokens touch) and ``b × m`` tokens of KV cache, at ``decode_efficiency`` of the HBM
  bandwidth, unless its matmuls take longer at ``prefill_efficiency`` of the tensor-core peak; with TP ≥ 2
  it adds two all-reduces per layer (after attention and after the MLP) of ``b × hidden`` activations,
  each ``latency + 2 (tp−1)/tp × bytes / link bandwidth``; plus fixed costs: ``layer_overhead_us`` per
  layer (small kernels and launch gaps that CUDA graphs do not hide) and ``sequence_overhead_us`` per
  running sequence (scheduling, sampling, output processing).
- a **prefill chunk** of ``p ≤ max_num_batched_tokens`` prompt tokens costs ``2 × active parameters × p``
  FLOPs plus causal attention at ``prefill_efficiency`` of the peak (fp8 peak under fp8 weights on a card
  with fp8 tensor cores), its all-reduces of ``p × hidden``, and the same per-layer fixed cost.
- a **closed loop** of ``c`` clients, each sending ``input_len`` tokens and waiting for ``output_len``
  (``vllm bench serve --max-concurrency c --request-rate inf``): the clients start together, so every
  cycle the server prefills the ``c`` prompts in chunks and then runs ``output_len − 1`` decode steps of
  ``c`` sequences. One cycle is every request's end-to-end latency, so by Little's law
  ``output tok/s = c × output_len / E2E`` with ``E2E = request_overhead + prefill chunks + (output_len − 1)
  × decode step``. The median request's TTFT is the chunks up to its prompt; TPOT is the rest of its
  E2E over ``output_len − 1`` tokens (it includes the other prompts' chunks that run while it decodes).
- **capped concurrency**: vLLM runs at most ``max_num_seqs`` sequences, and only as many as the KV cache
  holds at ``input_len + output_len`` tokens each; clients beyond that wait in the queue, which adds to
  their TTFT and leaves tokens/s at the capped value.
- **MoE**: FLOPs count the ``experts_per_token`` routed experts; bytes count the experts a step touches
  in expectation, ``E × (1 − (1 − k/E)^tokens)`` per layer (uniform routing), so at high concurrency every
  expert's bytes are read once per step.

Fitted constants (per card, few on purpose): ``prefill_efficiency``, ``decode_efficiency``,
``layer_overhead_us``, ``sequence_overhead_us``, ``request_overhead_ms`` (:attr:`Calibration.FITTED`). The
all-reduce latency is a stated property of the interconnect, not fitted from a TP=1 calibration (it cannot
be); a calibration that includes TP ≥ 2 points fits it too.

Not modelled: PP > 1 (pipeline bubbles and micro-batching; the prediction says so), speculative decoding,
prefix caching (the benchmark's random prompts share no prefix), sliding-window attention (counted as full).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from runner.plan.cards import CardFacts, NoCardFacts

GB = 1e9
ACTIVATION_BYTES = 2  # bf16 activations cross the all-reduce, fp8 weights or not
ALLREDUCES_PER_LAYER = 2  # row-parallel o_proj and down_proj each end in one (vLLM's RowParallelLinear)
# All-reduce latency per call (µs), by the link TP crosses: not fitted from a TP=1 calibration. NVLink:
# vLLM's custom one-shot all-reduce on fully connected NVLink, a few µs for decode-sized messages, plus the
# barrier; PCIe: NCCL's ring over the host bridge.
ALLREDUCE_LATENCY_US = {"nvlink": 8.0, "pcie": 25.0}
# Fraction of the link's one-direction bandwidth an all-reduce's large messages reach: the runner's own
# collective check measured 187-309 GB/s bus bandwidth for 64-256 MiB on the H100 x4's NVLink (450 GB/s
# each way; docs/topology.md), NVLink multicast off.
ALLREDUCE_BUS_EFFICIENCY = 0.5
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192  # vLLM's default on >= 70 GiB cards that are not A100s
FP8_QUANTIZATIONS = {"fp8", "fbgemm_fp8", "modelopt", "compressed-tensors-fp8"}


@dataclass(frozen=True)
class ModelDims:
    """The model's dimensions the cost model needs (a subset of ModelShape's)."""

    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_experts: int = 1
    experts_per_token: int = 2
    moe_intermediate_size: Optional[int] = None
    mlp_matrices: int = 3  # gated MLP (gate, up, down); Falcon's is 2

    @classmethod
    def from_shape(cls, shape: Any) -> "ModelDims":
        """From runner.plan.shape.ModelShape (or anything with its attribute names)."""
        falcon = getattr(shape, "architecture", "") in ("FalconForCausalLM", "RWForCausalLM")
        return cls(
            num_hidden_layers=shape.num_hidden_layers,
            hidden_size=shape.hidden_size,
            num_attention_heads=shape.num_attention_heads,
            num_key_value_heads=shape.num_key_value_heads,
            head_dim=shape.head_dim,
            intermediate_size=shape.intermediate_size,
            vocab_size=shape.vocab_size,
            num_experts=max(1, int(getattr(shape, "num_experts", 1) or 1)),
            experts_per_token=int(getattr(shape, "experts_per_token", 2) or 2),
            moe_intermediate_size=getattr(shape, "moe_intermediate_size", None),
            mlp_matrices=2 if falcon else 3,
        )

    @property
    def moe(self) -> bool:
        return self.num_experts > 1

    @property
    def attention_params(self) -> int:
        h, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return 2 * h * q + 2 * h * kv

    @property
    def expert_params(self) -> int:
        inter = self.moe_intermediate_size or self.intermediate_size
        return self.mlp_matrices * self.hidden_size * inter

    @property
    def routed_experts(self) -> int:
        return min(self.experts_per_token, self.num_experts) if self.moe else 1

    @property
    def active_layer_params(self) -> int:
        """Matmul parameters one token passes through in the decoder layers."""
        return self.num_hidden_layers * (self.attention_params + self.routed_experts * self.expert_params)

    @property
    def layer_params(self) -> int:
        return self.num_hidden_layers * (self.attention_params + self.num_experts * self.expert_params)

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def expert_fraction(self) -> float:
        """The share of the weights that are experts (0 for a dense model)."""
        if not self.moe:
            return 0.0
        total = self.layer_params + 2 * self.lm_head_params
        return self.num_hidden_layers * self.num_experts * self.expert_params / total

    def experts_touched(self, tokens: float) -> float:
        """Expected experts a step's tokens touch per layer, with uniform routing of k of E each."""
        if not self.moe:
            return 1.0
        e, k = self.num_experts, self.routed_experts
        return e * (1.0 - (1.0 - k / e) ** max(tokens, 0.0))


@dataclass(frozen=True)
class Calibration:
    """The fitted constants for one card; the defaults are what an uncalibrated card uses."""

    prefill_efficiency: float = 0.6  # of the dense tensor-core peak
    decode_efficiency: float = 0.8  # of the HBM bandwidth
    # Fixed cost of every decoder layer in every step: the small kernels (norms, rotary, cache writes,
    # activation) and the gaps between launches that take microseconds whatever their size.
    layer_overhead_us: float = 30.0
    step_overhead_ms: float = 0.0  # once per step; held at 0 by the default fit (see docs/tune.md)
    sequence_overhead_us: float = 10.0  # per running sequence per step: scheduling, sampling, output
    request_overhead_ms: float = 5.0  # HTTP, tokenization, detokenization: once per request
    allreduce_latency_us: Optional[float] = None  # None: ALLREDUCE_LATENCY_US by interconnect
    calibrated: bool = False
    source: str = "stated defaults"
    vllm: Optional[str] = None
    error: Dict[str, Any] = field(default_factory=dict)  # the fit's own error, as the file records it

    FITTED = (
        "prefill_efficiency",
        "decode_efficiency",
        "layer_overhead_us",
        "sequence_overhead_us",
        "request_overhead_ms",
    )
    CONSTANTS = (*FITTED, "step_overhead_ms", "allreduce_latency_us")

    @classmethod
    def from_file_data(
        cls, data: Optional[Mapping[str, Any]], card: Union[CardFacts, NoCardFacts, None]
    ) -> "Calibration":
        """The entry for ``card`` in a calibration file's parsed JSON, or the defaults (which say so)."""
        key = card.key if isinstance(card, CardFacts) else None
        entry = ((data or {}).get("cards") or {}).get(key) if key else None
        if not entry:
            where = f"no calibration for {key}" if key else "no card"
            return cls(source=f"{where}: stated defaults")
        constants = entry.get("constants") or {}
        known = {k: float(constants[k]) for k in cls.CONSTANTS if constants.get(k) is not None}
        points = entry.get("points") or []
        return cls(
            **known,
            calibrated=True,
            source=f"calibrated on {len(points)} point(s) ({entry.get('date', 'undated')})",
            vllm=entry.get("vllm"),
            error=dict(entry.get("error") or {}),
        )

    def with_constants(self, **values: float) -> "Calibration":
        merged = {**asdict(self), **values}
        return Calibration(**merged)


@dataclass(frozen=True)
class Workload:
    input_len: int
    output_len: int
    concurrencies: Sequence[int]


@dataclass(frozen=True)
class Layout:
    """What the plan and the memory model decided for one candidate."""

    tensor_parallel_size: int
    weights_bytes_per_gpu: float
    kv_bytes_per_token: float  # per GPU, in the KV-cache dtype
    kv_cache_tokens: Optional[int]  # per server; None: not predicted (no cap from memory)
    pipeline_parallel_size: int = 1
    max_num_seqs: Optional[int] = None  # None: no cap from the scheduler
    max_num_batched_tokens: Optional[int] = None
    quantization: Optional[str] = None
    interconnect: Optional[str] = None  # nvlink | pcie | None (the card's best)


@dataclass(frozen=True)
class PerfPoint:
    concurrency: int
    running: int  # sequences the server runs at once: min(concurrency, the caps)
    limited_by: Optional[str]  # "kv_cache" | "max_num_seqs" | None
    ttft_ms: float  # median request
    ttft_p99_ms: float
    tpot_ms: float  # median request
    tpot_p99_ms: float
    e2e_ms: float
    decode_step_ms: float
    output_tokens_per_s: float
    output_tokens_per_s_per_gpu: float
    requests_per_s: float


@dataclass(frozen=True)
class Prediction:
    predicted: bool
    reason: Optional[str]  # why not, when not predicted
    card: Optional[str]
    calibration: str
    calibrated: bool
    max_running: Optional[int]  # the most sequences the KV cache and max_num_seqs allow
    kv_cache_concurrency: Optional[int]
    points: List[PerfPoint]
    notes: List[str]
    constants: Dict[str, Any]

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["points"] = [{k: _round(v) for k, v in asdict(p).items()} for p in self.points]
        return out

    def point(self, concurrency: int) -> Optional[PerfPoint]:
        return next((p for p in self.points if p.concurrency == concurrency), None)


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


class CostModel:
    """Step costs of one candidate on one card, in seconds."""

    def __init__(self, dims: ModelDims, layout: Layout, card: CardFacts, cal: Calibration):
        self.dims, self.layout, self.card, self.cal = dims, layout, card, cal
        tp = layout.tensor_parallel_size
        self.tp = tp
        fp8 = (layout.quantization or "").lower() in FP8_QUANTIZATIONS
        self.flops_per_s = card.peak_tflops(fp8) * 1e12 * cal.prefill_efficiency
        self.bytes_per_s = card.memory_bandwidth_gbps * GB * cal.decode_efficiency
        link = card.link_gbps(layout.interconnect)
        self.link_bytes_per_s = link / 2 * GB * ALLREDUCE_BUS_EFFICIENCY  # one direction of a ring
        kind = "nvlink" if link == card.nvlink_gbps and card.nvlink_gbps else "pcie"
        latency = cal.allreduce_latency_us if cal.allreduce_latency_us is not None else ALLREDUCE_LATENCY_US[kind]
        self.allreduce_latency_s = latency * 1e-6
        self.overhead_s = cal.step_overhead_ms * 1e-3 + dims.num_hidden_layers * cal.layer_overhead_us * 1e-6

    def allreduce_s(self, tokens: float) -> float:
        if self.tp < 2:
            return 0.0
        message = tokens * self.dims.hidden_size * ACTIVATION_BYTES
        one = self.allreduce_latency_s + 2 * (self.tp - 1) / self.tp * message / self.link_bytes_per_s
        return ALLREDUCES_PER_LAYER * self.dims.num_hidden_layers * one

    def weight_bytes_read(self, tokens: float) -> float:
        weights = self.layout.weights_bytes_per_gpu
        share = self.dims.expert_fraction()
        if not share:
            return weights
        touched = self.dims.experts_touched(tokens) / self.dims.num_experts
        return weights * ((1 - share) + share * touched)

    def attention_flops(self, tokens: float, context: float) -> float:
        d = self.dims
        # QK^T and PV: 2 matmuls × 2 FLOPs per multiply-add, per head, per token of context
        return 4 * d.num_hidden_layers * d.num_attention_heads * d.head_dim * tokens * context / self.tp

    def decode_step_s(self, running: float, context: float) -> float:
        d = self.dims
        bytes_read = self.weight_bytes_read(running) + running * context * self.layout.kv_bytes_per_token
        flops = 2 * running * (d.active_layer_params + d.lm_head_params) / self.tp
        flops += self.attention_flops(running, context)
        busy = max(bytes_read / self.bytes_per_s, flops / self.flops_per_s)
        sequences = running * self.cal.sequence_overhead_us * 1e-6
        return self.overhead_s + sequences + busy + self.allreduce_s(running)

    def prefill_chunk_s(self, tokens: float, mean_context: float, prompts: float) -> float:
        d = self.dims
        flops = 2 * tokens * d.active_layer_params / self.tp + 2 * prompts * d.lm_head_params / self.tp
        flops += self.attention_flops(tokens, mean_context)
        busy = max(self.weight_bytes_read(tokens) / self.bytes_per_s, flops / self.flops_per_s)
        return self.overhead_s + busy + self.allreduce_s(tokens)


def max_running(layout: Layout, input_len: int, output_len: int) -> tuple:
    """(the most sequences vLLM runs at once, what limits it, the KV cache's own limit)."""
    kv_limit = None
    if layout.kv_cache_tokens is not None:
        kv_limit = max(0, int(layout.kv_cache_tokens // max(1, input_len + output_len)))
    limits = [(kv_limit, "kv_cache"), (layout.max_num_seqs, "max_num_seqs")]
    limits = [(v, k) for v, k in limits if v is not None]
    if not limits:
        return None, None, kv_limit
    value, why = min(limits, key=lambda vk: vk[0])
    return value, why, kv_limit


def predict(
    dims: ModelDims,
    layout: Layout,
    card: Union[CardFacts, NoCardFacts],
    workload: Workload,
    calibration: Optional[Calibration] = None,
    vllm_version: Optional[str] = None,
) -> Prediction:
    """TTFT, TPOT and tokens/s at each of the workload's concurrencies (see the module's docstring)."""
    cal = calibration or Calibration()
    constants = {k: getattr(cal, k) for k in Calibration.CONSTANTS}
    cap, cap_why, kv_limit = max_running(layout, workload.input_len, workload.output_len)
    notes: List[str] = []

    def refused(reason: str) -> Prediction:
        return Prediction(False, reason, None, cal.source, cal.calibrated, cap, kv_limit, [], notes, constants)

    if not isinstance(card, CardFacts):
        return refused(card.reason)
    if layout.pipeline_parallel_size > 1:
        return refused("PP > 1 is not modelled (pipeline bubbles and micro-batches): no prediction")
    if workload.input_len < 1 or workload.output_len < 1:
        return refused("the workload needs input_len >= 1 and output_len >= 1")
    if cap == 0:
        return refused(
            f"the KV cache ({layout.kv_cache_tokens:,} tokens) holds no request of "
            f"{workload.input_len + workload.output_len} tokens"
        )
    if not cal.calibrated:
        notes.append(f"{card.key} is not calibrated: {cal.source} ({_describe(constants)})")
    elif vllm_version and cal.vllm and vllm_version != cal.vllm:
        notes.append(f"calibrated with vLLM {cal.vllm}, predicting for {vllm_version}")
    if (layout.quantization or "").lower() in FP8_QUANTIZATIONS and not card.fp8:
        notes.append(f"{card.key} has no fp8 tensor cores: prefill at the bf16 peak")
    if dims.moe:
        notes.append("MoE: expert bytes read per step assume uniform routing (expected experts touched)")

    model = CostModel(dims, layout, card, cal)
    chunk = layout.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS
    inp, out = workload.input_len, workload.output_len
    gpus = layout.tensor_parallel_size * layout.pipeline_parallel_size
    points = []
    for c in workload.concurrencies:
        running = c if cap is None else max(1, min(c, cap))
        limited = cap_why if cap is not None and c > cap else None
        point = _closed_loop(model, c, running, limited, inp, out, chunk, gpus)
        points.append(point)
    return Prediction(True, None, card.key, cal.source, cal.calibrated, cap, kv_limit, points, notes, constants)


def _describe(constants: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in constants.items() if v is not None)


def _closed_loop(
    model: CostModel, clients: int, running: int, limited: Optional[str], inp: int, out: int, chunk: int, gpus: int
) -> PerfPoint:
    cal = model.cal
    # The wave's prompts, prefilled in chunks of `chunk` tokens; a prompt's first token comes with the
    # chunk its last token is in.
    total = running * inp
    sizes = [chunk] * (total // chunk) + ([total % chunk] if total % chunk else [])
    ends, clock = [], 0.0
    for size in sizes:
        clock += model.prefill_chunk_s(size, inp / 2, size / inp)
        ends.append(clock)
    first_token = [ends[min(len(ends) - 1, math.ceil((k + 1) * inp / chunk) - 1)] for k in range(running)]
    request = cal.request_overhead_ms * 1e-3
    step = model.decode_step_s(running, inp + out / 2)
    e2e = request + ends[-1] + (out - 1) * step
    ttft = request + _median(first_token)
    ttft_p99 = request + ends[-1]
    decode_tokens = max(out - 1, 1)
    tpot = (e2e - ttft) / decode_tokens if out > 1 else 0.0
    tpot_p99 = (e2e - request - first_token[0]) / decode_tokens if out > 1 else 0.0
    rate = running / e2e  # requests/s (Little's law over the running sequences)
    if clients > running:
        # Waiting clients: each one's latency grows by the queue ahead of it; the rate stays.
        wait = clients / rate - e2e
        ttft, ttft_p99, e2e = ttft + wait, ttft_p99 + wait, e2e + wait
    tokens = rate * out
    return PerfPoint(
        concurrency=clients,
        running=running,
        limited_by=limited,
        ttft_ms=ttft * 1e3,
        ttft_p99_ms=ttft_p99 * 1e3,
        tpot_ms=tpot * 1e3,
        tpot_p99_ms=tpot_p99 * 1e3,
        e2e_ms=e2e * 1e3,
        decode_step_ms=step * 1e3,
        output_tokens_per_s=tokens,
        output_tokens_per_s_per_gpu=tokens / gpus,
        requests_per_s=rate,
    )


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def weights_bytes_estimate(dims: ModelDims, tp: int, *, pp: int = 1, quantization: Optional[str] = None) -> float:
    """Weights per GPU from the dimensions, for when the memory model has none (a quantized model without
    its files): fp8 (online, vLLM's Fp8LinearMethod) stores the decoder's linear layers in 1 byte and keeps
    the embeddings and the LM head in bf16."""
    linear_bytes = 1 if (quantization or "").lower() in FP8_QUANTIZATIONS else 2
    return (dims.layer_params * linear_bytes + 2 * dims.lm_head_params * 2) / (tp * pp)


def kv_bytes_per_token(dims: ModelDims, tp: int, kv_cache_dtype: Optional[str] = None) -> float:
    """K and V of every layer one GPU holds, per token (runner.plan.memory's rule, for rows without it)."""
    kv_bytes = 1 if (kv_cache_dtype or "").lower().startswith("fp8") else 2
    heads = max(1, dims.num_key_value_heads // tp)
    return dims.num_hidden_layers * heads * dims.head_dim * 2 * kv_bytes


def predict_from_fit(
    shape: Any,
    fit: Mapping[str, Any],
    card: Union[CardFacts, NoCardFacts],
    workload: Workload,
    *,
    serve: Optional[Mapping[str, Any]] = None,
    calibration: Optional[Calibration] = None,
    interconnect: Optional[str] = None,
    vllm_version: Optional[str] = None,
) -> Prediction:
    """The planner's entry point: one candidate of the fit table to a prediction.

    ``shape``: a ModelShape (or a ModelDims); ``fit``: a MemoryFit.to_dict() or a fit-table row (its
    ``tensor_parallel_size``, ``weights_gib_per_gpu``, ``kv_cache_tokens`` and, when present,
    ``kv_bytes_per_token``); ``serve``: the serve section as a dict (``pipeline_parallel_size``,
    ``max_num_seqs``, ``max_num_batched_tokens``, ``quantization``, ``kv_cache_dtype``), with vLLM's
    defaults already filled in where the user left them unset."""
    serve = serve or {}
    dims = shape if isinstance(shape, ModelDims) else ModelDims.from_shape(shape)
    tp = int(fit.get("tensor_parallel_size") or serve.get("tensor_parallel_size") or 1)
    pp = int(serve.get("pipeline_parallel_size") or 1)
    weights = fit.get("weights_gib_per_gpu")
    weights_bytes = (
        float(weights) * 2**30
        if weights
        else weights_bytes_estimate(dims, tp, pp=pp, quantization=serve.get("quantization"))
    )
    layout = Layout(
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        weights_bytes_per_gpu=weights_bytes,
        kv_bytes_per_token=float(
            fit.get("kv_bytes_per_token") or kv_bytes_per_token(dims, tp, serve.get("kv_cache_dtype"))
        ),
        kv_cache_tokens=fit.get("kv_cache_tokens"),
        max_num_seqs=serve.get("max_num_seqs"),
        max_num_batched_tokens=serve.get("max_num_batched_tokens"),
        quantization=serve.get("quantization"),
        interconnect=interconnect,
    )
    return predict(dims, layout, card, workload, calibration, vllm_version)
