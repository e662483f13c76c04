"""A model's shape: the config.json fields the parallel rules and the memory estimate need,
read into one frozen record. Pure: the dictionary comes from the probe (a model directory's
config.json) or from the model entry's own numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

# Bytes per element of vLLM's --dtype names ("auto" is taken as the 16-bit default).
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "auto": 2}


@dataclass(frozen=True)
class ModelShape:
    """The config.json fields the parallel rules and the memory estimate need."""

    architecture: str
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    hidden_size: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: Optional[int]
    tie_word_embeddings: bool
    num_experts: int
    torch_dtype: Optional[str]
    moe_intermediate_size: Optional[int] = None
    experts_per_token: int = 2  # num_experts_per_tok: the experts each token is routed to
    # The longest max_model_len vLLM accepts (vllm/config/model.py, _get_and_verify_max_len):
    # max_position_embeddings, times the RoPE factor for scalings that don't pre-scale it.
    context_length: Optional[int] = None
    # Attention window per layer, as vLLM builds each layer's Attention (per_layer_sliding_window,
    # else the model-level hf sliding_window): "sliding_attention" or "full_attention" for each
    # layer; empty when every layer is full attention.
    layer_types: Tuple[str, ...] = ()
    sliding_window: Optional[int] = None
    # MLA (DeepSeek-V2/V3): one compressed latent of kv_lora_rank + qk_rope_head_dim per token and
    # layer, shared by every head (vllm/model_executor/layers/attention/mla_attention.py).
    kv_lora_rank: Optional[int] = None
    q_lora_rank: Optional[int] = None
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # MoE beyond Mixtral: the shared experts' total width (DeepSeek n_shared_experts x
    # moe_intermediate_size, Qwen2-MoE shared_expert_intermediate_size), the leading dense layers
    # (DeepSeek first_k_dense_replace), and Qwen3's per-head q/k RMSNorms.
    shared_expert_intermediate_size: int = 0
    dense_layers: int = 0
    qk_norm: bool = False
    # A multimodal model's vision encoder (config.json's vision_config): its heads and MLP width,
    # which vLLM splits over TP like the text model's, and its parameters.
    vision_heads: int = 0
    vision_intermediate_size: int = 0
    vision_parameters: int = 0
    # ... and what sizes its activations: its width, the values one patch carries in (channels x
    # temporal patch x patch²), the patch side, how many patches merge into one LM token, and
    # the largest image its processor cuts (max_pixels; Qwen2-VL's published default).
    vision_hidden_size: int = 0
    vision_patch_inputs: int = 0
    vision_patch_size: int = 0
    vision_merge: int = 1
    vision_max_pixels: int = 0
    # Layers that keep a recurrent state instead of (or beside) a per-token KV cache: Mamba /
    # Mamba-2, linear attention (Qwen3-Next's gated DeltaNet), short convolutions (LFM2). vLLM sizes
    # their state per request (MambaSpec) and aligns the attention layers' block size to it; the
    # memory model does not cover them yet, so the plan says so instead of counting them as attention.
    recurrent_layers: int = 0
    recurrent_kind: str = ""

    @classmethod
    def from_hf_config(cls, cfg: Dict[str, Any]) -> "ModelShape":
        text = cfg.get("text_config") or cfg  # multimodal wrappers keep the LM inside
        architecture = (cfg.get("architectures") or ["unknown"])[0]
        model_type = str(text.get("model_type") or cfg.get("model_type") or "").lower()
        falcon = model_type in ("falcon", "refinedweb", "refinedwebmodel") or architecture in (
            "FalconForCausalLM",
            "RWForCausalLM",
        )
        gemma = model_type in ("gemma", "gemma2") or architecture in ("GemmaForCausalLM", "Gemma2ForCausalLM")
        # Falcon's original (RefinedWeb) configs say n_head / n_layer / n_embed / n_head_kv.
        heads = int(text.get("num_attention_heads") or text["n_head"])
        layers = int(text.get("num_hidden_layers") or text["n_layer"])
        hidden = int(text.get("hidden_size") or text["n_embed"])
        if falcon:
            # vllm/model_executor/models/falcon.py, FalconAttention (and FalconModelArchConfigConvertor in
            # vllm/transformers_utils/model_arch_config_convertor.py): new_decoder_architecture -> num_kv_heads
            # (multi_query is then ignored); else multi_query -> 1 KV head; else one per query head.
            # transformers' FalconConfig defaults multi_query to True; the old RefinedWeb (40B) format is the
            # new decoder architecture with its group count in n_head_kv.
            new_decoder = text.get("new_decoder_architecture", model_type == "refinedweb")
            if new_decoder:
                kv_heads = int(text.get("num_kv_heads") or text.get("n_head_kv") or heads)
            elif text.get("multi_query", True):
                kv_heads = 1
            else:
                kv_heads = heads
            head_dim = hidden // heads  # falcon.py: hidden_size // num_attention_heads, no head_dim key
            inter = 4 * hidden  # falcon.py, FalconMLP: dense_h_to_4h is 4 * hidden_size, whatever the config says
        else:
            kv_heads = int(text.get("num_key_value_heads") or heads)
            # Gemma's head_dim (256 for Gemma-2-9B) is not hidden_size // heads; transformers defaults it to 256.
            head_dim = int(text.get("head_dim") or (256 if gemma else hidden // heads))
            inter = int(text.get("intermediate_size") or 4 * hidden)
        # Falcon (vllm falcon.py: "previous Falcon model doesn't have tie_word_embeddings config") and Gemma
        # (gemma2.py computes logits from embed_tokens) tie the LM head when the config is silent.
        tied_default = falcon or gemma
        tied = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", tied_default))
        return cls(
            architecture=architecture,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            num_hidden_layers=layers,
            hidden_size=hidden,
            head_dim=head_dim,
            intermediate_size=inter,
            vocab_size=int(text["vocab_size"]),
            max_position_embeddings=text.get("max_position_embeddings"),
            tie_word_embeddings=bool(tied_default if tied is None else tied),
            num_experts=int(
                text.get("num_local_experts") or text.get("num_experts") or text.get("n_routed_experts") or 1
            ),
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
            context_length=_derived_context(text),
            moe_intermediate_size=text.get("moe_intermediate_size"),
            experts_per_token=int(text.get("num_experts_per_tok") or 2),
            **_attention_windows(text, model_type, layers),
            **_mla_and_moe(text, model_type),
            **_vision(cfg.get("vision_config"), hidden),
            **_recurrent(text, layers),
        )

    def served_dtype_bytes(self, dtype: Optional[str] = "auto") -> int:
        """Bytes per weight (and per activation / KV element) vLLM serves with for --dtype: "auto"
        is the checkpoint's dtype, except that a float32 checkpoint (Gemma-2's published
        configs) is served in 16 bits (vllm/config/model.py, _get_and_verify_dtype)."""
        if dtype not in (None, "auto"):
            return DTYPE_BYTES.get(str(dtype), 2)
        return min(DTYPE_BYTES.get(str(self.torch_dtype or "bfloat16"), 2), 2)

    def parameter_count(self) -> int:
        """Weights of a decoder-only transformer, by family: :meth:`linear_layers` plus what is
        not a linear layer.

        Llama / Mistral / Mixtral / Phi-3 / Qwen2: gated MLP (3 matrices), RMSNorm weights (2 a layer);
        Qwen2 adds q/k/v biases. Gemma-2: gated MLP, 4 RMSNorms a layer (pre/post attention and
        feed-forward), tied embeddings. Falcon: fused QKV without bias, a non-gated 4h MLP (2 matrices),
        LayerNorm weight + bias, tied embeddings. Qwen3: q/k RMSNorms of head_dim. DeepSeek-V2/V3:
        MLA's kv_a (and q_a) RMSNorms; MoE: the router (hidden x experts) and Qwen2-MoE's shared-expert
        gate. The Llama count is exactly the tensors the runner writes for its generated model."""
        layer_extra, router, final_norm = self._non_linear_parameters()
        layers = self.num_hidden_layers
        moe_layers = layers - self.dense_layers if self.num_experts > 1 else 0
        embeddings = self.embedding_parameters() * (1 if self.tie_word_embeddings else 2)
        decoder = self.linear_parameter_count() + layers * layer_extra + moe_layers * router + final_norm
        return embeddings + decoder + self.vision_parameters

    def embedding_parameters(self) -> int:
        """One vocabulary x hidden matrix (the token embedding, or an untied LM head), the
        vocabulary padded to 64 as vllm/model_executor/layers/vocab_parallel_embedding.py pads it."""
        vocab = -(-self.vocab_size // 64) * 64
        return vocab * self.hidden_size

    def final_norm_parameters(self) -> int:
        """The norm after the last decoder layer (the last pipeline stage holds it)."""
        return self._non_linear_parameters()[2]

    def layer_parameter_counts(self) -> Tuple[int, ...]:
        """Each decoder layer's weights: its linear layers, norms, biases and MoE router. With the
        embeddings, the LM head, the final norm and the vision encoder they sum to
        :meth:`parameter_count`; a pipeline stage holds the layers get_pp_indices gives it."""
        layer_extra, router, _ = self._non_linear_parameters()
        moe = self.num_experts > 1
        counts = [
            layer_extra + (router if moe and i >= self.dense_layers else 0) for i in range(self.num_hidden_layers)
        ]
        for name, k, n, copies in self.linear_layers():
            counts[int(name.split(".")[2])] += k * n * copies
        return tuple(counts)

    def _non_linear_parameters(self) -> Tuple[int, int, int]:
        """(per decoder layer outside its linear layers, the MoE router of an MoE layer, the final norm)."""
        h, head_dim = self.hidden_size, self.head_dim
        arch = self.architecture
        falcon = arch in ("FalconForCausalLM", "RWForCausalLM")
        extra = 0  # per layer, outside the linear layers
        if arch.startswith("Qwen2") and not self.kv_lora_rank:
            q_out = self.num_attention_heads * head_dim
            extra += q_out + 2 * self.num_key_value_heads * head_dim  # qkv_proj bias
        if self.qk_norm:
            extra += 2 * head_dim
        if self.kv_lora_rank:
            extra += self.kv_lora_rank + (self.q_lora_rank or 0)
        if falcon:
            # LayerNorm weight + bias: input_layernorm, or ln_attn + ln_mlp for the new decoder
            # architecture (grouped KV heads); ln_f at the end.
            grouped = 1 < self.num_key_value_heads < self.num_attention_heads
            norms, final_norm = (4 if grouped else 2) * h, 2 * h
        elif arch.startswith("Gemma2"):
            norms, final_norm = 4 * h, h
        else:
            norms, final_norm = 2 * h, h
        router = h * self.num_experts + (h if self.shared_expert_intermediate_size and arch.startswith("Qwen2") else 0)
        return extra + norms, router, final_norm

    def linear_layers(self) -> List[Tuple[str, int, int, int]]:
        """The decoder's linear layers as vLLM names them (its module prefix, the checkpoint's
        unfused shard names): (name, in_features, out_features, copies) — copies is the expert
        count of an MoE layer. These are the weights a quantization method for LinearBase /
        FusedMoE stores in fewer bytes; embeddings, the LM head, the norms, biases and the MoE
        router (a ReplicatedLinear built without a quant_config in vLLM's MoE models) are not here."""
        h, head_dim = self.hidden_size, self.head_dim
        heads = self.num_attention_heads
        q_out = heads * head_dim
        kv_out = self.num_key_value_heads * head_dim
        falcon = self.architecture in ("FalconForCausalLM", "RWForCausalLM")
        inter = self.intermediate_size
        expert = self.moe_intermediate_size or inter
        layers: List[Tuple[str, int, int, int]] = []
        for i in range(self.num_hidden_layers):
            at = f"model.layers.{i}.self_attn"
            if self.kv_lora_rank:
                # deepseek_v2.py, DeepseekV2MLAAttention: q (or q_a -> q_b), kv_a_proj_with_mqa -> kv_b, o
                qk = self.qk_nope_head_dim + self.qk_rope_head_dim
                if self.q_lora_rank:
                    layers += [(f"{at}.q_a_proj", h, self.q_lora_rank, 1)]
                    layers += [(f"{at}.q_b_proj", self.q_lora_rank, heads * qk, 1)]
                else:
                    layers.append((f"{at}.q_proj", h, heads * qk, 1))
                layers.append((f"{at}.kv_a_proj_with_mqa", h, self.kv_lora_rank + self.qk_rope_head_dim, 1))
                kv_b_out = heads * (self.qk_nope_head_dim + self.v_head_dim)
                layers.append((f"{at}.kv_b_proj", self.kv_lora_rank, kv_b_out, 1))
                layers.append((f"{at}.o_proj", heads * self.v_head_dim, h, 1))
            else:
                layers += [(f"{at}.q_proj", h, q_out, 1), (f"{at}.k_proj", h, kv_out, 1)]
                layers += [(f"{at}.v_proj", h, kv_out, 1), (f"{at}.o_proj", q_out, h, 1)]
            mlp = f"model.layers.{i}.mlp"
            if falcon:
                layers += [(f"{mlp}.dense_h_to_4h", h, inter, 1), (f"{mlp}.dense_4h_to_h", inter, h, 1)]
            elif self.num_experts > 1 and i >= self.dense_layers:
                # FusedMoE: w13 (gate and up) and w2 (down) of every expert, one module
                layers += [(f"{mlp}.experts.w13", h, 2 * expert, self.num_experts)]
                layers += [(f"{mlp}.experts.w2", expert, h, self.num_experts)]
                shared = self.shared_expert_intermediate_size
                if shared:
                    layers += [(f"{mlp}.shared_experts.gate_proj", h, shared, 1)]
                    layers += [(f"{mlp}.shared_experts.up_proj", h, shared, 1)]
                    layers += [(f"{mlp}.shared_experts.down_proj", shared, h, 1)]
            else:
                layers += [(f"{mlp}.gate_proj", h, inter, 1), (f"{mlp}.up_proj", h, inter, 1)]
                layers.append((f"{mlp}.down_proj", inter, h, 1))
        return layers

    def kv_bytes_per_token_per_layer(self, tp: int, kv_dtype_bytes: int) -> int:
        """One layer's KV cache per token on one GPU: K and V of its share of the KV heads
        (QKVParallelLinear: max(1, kv_heads // tp)), or MLA's one latent, which every rank holds
        whole (MLAAttentionSpec: one "head" of kv_lora_rank + qk_rope_head_dim, no separate V)."""
        if self.kv_lora_rank:
            return (self.kv_lora_rank + self.qk_rope_head_dim) * kv_dtype_bytes
        return max(1, self.num_key_value_heads // tp) * self.head_dim * 2 * kv_dtype_bytes

    def linear_parameter_count(self) -> int:
        """The weights of :meth:`linear_layers` (no biases): what online fp8 stores in one byte."""
        return sum(k * n * copies for _, k, n, copies in self.linear_layers())


def _attention_windows(text: Dict[str, Any], model_type: str, layers: int) -> Dict[str, Any]:
    """layer_types and sliding_window as vLLM reads them.

    An explicit ``layer_types`` list (transformers writes it for Gemma-2/3, gpt-oss, Qwen3, …) is
    what vLLM's models index (gemma2.py, llama.py: ``config.layer_types[layer_idx] ==
    "sliding_attention"``); older Gemma configs without it get transformers' own rule (Gemma-2:
    every even layer slides; Gemma-3: all but every ``sliding_window_pattern``-th). Otherwise a
    model-level ``sliding_window`` (Mistral-7B-v0.1, Phi-3) applies to every layer
    (vllm/model_executor/layers/attention/attention.py falls back to cache_config.sliding_window),
    unless ``use_sliding_window`` is false (Qwen2: transformers then sets sliding_window None)."""
    window = text.get("sliding_window")
    if not window or text.get("use_sliding_window") is False:
        return {}
    window = int(window)
    given = text.get("layer_types")
    if isinstance(given, list) and len(given) == layers:
        kinds = tuple("sliding_attention" if "sliding" in str(t) else "full_attention" for t in given)
    elif model_type == "gemma2":
        kinds = tuple("sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers))
    elif model_type in ("gemma3", "gemma3_text"):
        pattern = int(text.get("sliding_window_pattern") or 6)
        kinds = tuple("sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers))
    else:
        kinds = ("sliding_attention",) * layers
    if "sliding_attention" not in kinds:
        return {}
    return {"layer_types": kinds, "sliding_window": window}


def _vision(vision: Any, text_hidden: int) -> Dict[str, Any]:
    """A ViT encoder's shape and parameters from vision_config.

    Qwen2.5-VL (vllm/model_executor/models/qwen2_5_vl.py): ``depth`` blocks of two RMSNorms, a
    fused qkv and proj with biases, a gated MLP (gate/up/down, biases), a Conv3d patch embedding
    (in_chans x temporal_patch_size x patch_size² x width, no bias) and the merger (RMSNorm,
    (width x merge²)² and width x merge² -> out_hidden_size, with biases). Other encoders (CLIP,
    SigLIP, Qwen2-VL's, Mllama's) are counted as a plain ViT: two LayerNorms with biases, q/k/v/o
    and a 2-matrix MLP with biases, the patch embedding, and a projector to the text width."""
    if not isinstance(vision, Mapping):
        return {}
    width = int(vision.get("hidden_size") or vision.get("embed_dim") or 0)
    layers = int(vision.get("depth") or vision.get("num_hidden_layers") or 0)
    heads = int(vision.get("num_heads") or vision.get("num_attention_heads") or 0)
    if not (width and layers and heads):
        return {}
    gated = str(vision.get("model_type") or "") == "qwen2_5_vl" or "fullatt_block_indexes" in vision
    inter = int(vision.get("intermediate_size") or width * float(vision.get("mlp_ratio") or 4))
    patch = int(vision.get("patch_size") or 14)
    chans = int(vision.get("in_chans") or vision.get("in_channels") or vision.get("num_channels") or 3)
    temporal = int(vision.get("temporal_patch_size") or 1)
    merge = int(vision.get("spatial_merge_size") or 1)
    out = int(vision.get("out_hidden_size") or text_hidden)
    attention = width * 3 * width + 3 * width + width * width + width
    if gated:
        mlp, norms = 2 * (width * inter + inter) + inter * width + width, 2 * width
    else:
        mlp, norms = width * inter + inter + inter * width + width, 4 * width
    wide = width * merge * merge
    merger = width + wide * wide + wide + wide * out + out
    return {
        "vision_heads": heads,
        "vision_intermediate_size": inter,
        "vision_parameters": layers * (attention + mlp + norms) + chans * temporal * patch * patch * width + merger,
        "vision_hidden_size": width,
        "vision_patch_inputs": chans * temporal * patch * patch,
        "vision_patch_size": patch,
        "vision_merge": merge * merge,
        # transformers' Qwen2VLImageProcessor default (28 x 28 x 16384), which Qwen2.5-VL publishes
        "vision_max_pixels": int(vision.get("max_pixels") or 12845056),
    }


# What layer_types calls a layer with a recurrent state (substrings): Qwen3-Next "linear_attention",
# Granite-4.0-H "mamba", LFM2 "conv"; attention layers are "full_attention" / "sliding_attention" /
# "attention" / "chunked_attention".
_RECURRENT_KINDS = ("linear", "mamba", "conv", "ssm", "recurren", "delta", "rwkv")


def _recurrent(text: Dict[str, Any], layers: int) -> Dict[str, Any]:
    """How many layers carry a recurrent state, as each family's config.json says it:

    - ``layer_types`` naming them (Qwen3-Next, Granite-4.0-H, LFM2);
    - ``hybrid_override_pattern``, one character a layer, ``M`` for Mamba-2 (Nemotron-H);
    - ``attn_layer_period`` / ``attn_layer_offset``: attention every period-th layer, Mamba
      elsewhere (Jamba);
    - ``full_attention_interval``: every interval-th layer full attention, linear attention
      elsewhere (Qwen3-Next without layer_types);
    - ``mamba_d_ssm`` / ``mamba_n_heads``: a Mamba-2 mixer beside attention in every layer (Falcon-H1)."""
    kinds = text.get("layer_types")
    if isinstance(kinds, list) and kinds:
        found = [str(k) for k in kinds if any(r in str(k).lower() for r in _RECURRENT_KINDS)]
        if found:
            return {"recurrent_layers": len(found), "recurrent_kind": found[0]}
        return {}
    pattern = text.get("hybrid_override_pattern")
    if isinstance(pattern, str) and "M" in pattern:
        return {"recurrent_layers": pattern.count("M"), "recurrent_kind": "mamba2"}
    period, offset = text.get("attn_layer_period"), text.get("attn_layer_offset")
    if isinstance(period, int) and isinstance(offset, int) and period > 0 and not isinstance(period, bool):
        attention = sum(1 for i in range(layers) if i % period == offset)
        return {"recurrent_layers": layers - attention, "recurrent_kind": "mamba"}
    interval = text.get("full_attention_interval")
    if isinstance(interval, int) and not isinstance(interval, bool) and interval > 1:
        return {"recurrent_layers": layers - layers // interval, "recurrent_kind": "linear_attention"}
    if text.get("mamba_d_ssm") or text.get("mamba_n_heads"):
        return {"recurrent_layers": layers, "recurrent_kind": "mamba2 (beside attention)"}
    return {}


def _mla_and_moe(text: Dict[str, Any], model_type: str) -> Dict[str, Any]:
    """The MLA and larger-MoE fields, as vLLM's deepseek_v2.py / qwen2_moe.py / qwen3_moe.py read them."""
    found: Dict[str, Any] = {}
    if text.get("kv_lora_rank"):
        found.update(
            kv_lora_rank=int(text["kv_lora_rank"]),
            q_lora_rank=int(text["q_lora_rank"]) if text.get("q_lora_rank") else None,
            qk_nope_head_dim=int(text.get("qk_nope_head_dim") or 0),
            qk_rope_head_dim=int(text.get("qk_rope_head_dim") or 0),
            v_head_dim=int(text.get("v_head_dim") or 0),
        )
    if text.get("n_shared_experts") and text.get("moe_intermediate_size"):
        found["shared_expert_intermediate_size"] = int(text["n_shared_experts"]) * int(text["moe_intermediate_size"])
    elif text.get("shared_expert_intermediate_size"):
        found["shared_expert_intermediate_size"] = int(text["shared_expert_intermediate_size"])
    if text.get("n_routed_experts") or text.get("num_experts"):
        found["dense_layers"] = int(text.get("first_k_dense_replace") or 0)
    if model_type.startswith("qwen3"):
        found["qk_norm"] = True
    return found


_PRESCALED_ROPE = {"su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling"}


def _derived_context(cfg: Dict[str, Any]) -> Optional[int]:
    length = cfg.get("max_position_embeddings")
    if not length:
        return None
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    kind = rope.get("rope_type") or rope.get("type") if isinstance(rope, dict) else None
    if kind and kind not in _PRESCALED_ROPE and rope.get("factor"):
        length = length * float(rope["factor"])
    return int(length)
