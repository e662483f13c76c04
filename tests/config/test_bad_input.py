"""Bad input, through the real command line: every case exits 2 before anything starts,
prints one line naming the cause and the fix, and leaves a manifest with status rejected."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "runner" / "record" / "manifest.schema.json").read_text())
TINY = ["hw=cpu-2", "model=tiny-llama", "mode=check"]


def _model_dir(tmp: Path, config, tokenizer: str | None = '{"model": {}}') -> Path:
    d = tmp / "model"
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if tokenizer is not None:
        (d / "tokenizer.json").write_text(tokenizer)
    return d


LLAMA_CFG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 1000,
    "max_position_embeddings": 4096,
}

# (id, overrides, extra env, model-dir builder or None, text the one line must hold)
CASES = [
    ("unknown hw option", ["hw=nvlink-3gpu", "model=tiny-llama"], {}, None, "hw=nvlink-3gpu"),
    ("unknown model option", ["hw=cpu-2", "model=llama99b"], {}, None, "model=llama99b"),
    ("unknown recipe", [*TINY, "+recipe=no-such-recipe"], {}, None, "recipe=no-such-recipe"),
    ("misspelled serve key", [*TINY, "serve.tensor_parallel_siz=2"], {}, None, "serve.tensor_parallel_size"),
    ("misspelled top key", ["hw=cpu-2", "moed=check"], {}, None, "mode"),
    ("bad mode", ["hw=cpu-2", "mode=chek"], {}, None, "check"),
    ("port not an int", [*TINY, "serve.port=abc"], {}, None, "serve.port"),
    ("port out of range", [*TINY, "serve.port=70000"], {}, None, "serve.port"),
    ("tp zero", [*TINY, "serve.tensor_parallel_size=0"], {}, None, "serve.tensor_parallel_size"),
    ("tp negative", [*TINY, "serve.tensor_parallel_size=-2"], {}, None, "serve.tensor_parallel_size"),
    ("pp zero", [*TINY, "serve.pipeline_parallel_size=0"], {}, None, "serve.pipeline_parallel_size"),
    (
        "pp beyond layers",
        [*TINY, "serve.tensor_parallel_size=1", "serve.pipeline_parallel_size=3"],
        {},
        None,
        "num_hidden_layers",
    ),
    ("utilization above 1", [*TINY, "serve.gpu_memory_utilization=1.5"], {}, None, "serve.gpu_memory_utilization"),
    ("utilization zero", [*TINY, "serve.gpu_memory_utilization=0"], {}, None, "serve.gpu_memory_utilization"),
    ("tp larger than devices", [*TINY, "serve.tensor_parallel_size=4"], {}, None, "serve.tensor_parallel_size"),
    ("tp not dividing heads", [*TINY, "serve.tensor_parallel_size=3"], {}, None, "num_attention_heads"),
    ("declared gpus absent", ["hw=nvlink-4gpu", "model=tiny-llama", "mode=check"], {}, None, "hw=auto"),
    ("local model without path", ["hw=cpu-2", "model=local", "mode=check"], {}, None, "model.path"),
    (
        "local model path missing",
        ["hw=cpu-2", "model=local", "mode=check", "model.path=/nonexistent/model"],
        {},
        None,
        "model.path",
    ),
    ("shape model without weights", ["hw=cpu-2", "model=llama3-8b", "mode=check"], {}, None, "model.load_format=dummy"),
    (
        "model dir without config.json",
        ["hw=cpu-2", "model=local", "mode=check"],
        {},
        lambda t: _model_dir(t, None),
        "config.json",
    ),
    (
        "corrupt config.json",
        ["hw=cpu-2", "model=local", "mode=check"],
        {},
        lambda t: _model_dir(t, "{not json"),
        "config.json",
    ),
    (
        "config.json without heads",
        ["hw=cpu-2", "model=local", "mode=check"],
        {},
        lambda t: _model_dir(t, {k: v for k, v in LLAMA_CFG.items() if k != "num_attention_heads"}),
        "num_attention_heads",
    ),
    (
        "unreadable tokenizer",
        ["hw=cpu-2", "model=local", "mode=check"],
        {},
        lambda t: _model_dir(t, LLAMA_CFG, "garbage{"),
        "tokenizer",
    ),
    (
        "no tokenizer at all",
        ["hw=cpu-2", "model=local", "mode=check"],
        {},
        lambda t: _model_dir(t, LLAMA_CFG, None),
        "tokenizer",
    ),
    (
        "no weights at all",
        ["hw=cpu-2", "model=local", "mode=check"],
        {},
        lambda t: _model_dir(t, LLAMA_CFG),
        "no weights",
    ),
    # found by tests/config/test_config_json_property.py: each crashed the planner before
    (
        "MLA rank not a number",
        ["hw=cpu-2", "model=local", "mode=plan"],
        {},
        lambda t: _model_dir(t, {**LLAMA_CFG, "kv_lora_rank": 512, "q_lora_rank": ":"}),
        "config.json: q_lora_rank=':' is not an integer",
    ),
    (
        "layer count absurd",
        ["hw=cpu-2", "model=local", "mode=plan"],
        {},
        lambda t: _model_dir(t, {**LLAMA_CFG, "num_hidden_layers": 10**12}),
        "num_hidden_layers=1000000000000 is absurdly large",
    ),
    (
        "vision_config not an object",
        ["hw=cpu-2", "model=local", "mode=plan"],
        {},
        lambda t: _model_dir(t, {**LLAMA_CFG, "vision_config": [1, 2]}),
        "vision_config=[1, 2] is not an object",
    ),
    (
        "quantization ignore list not names",
        ["hw=cpu-2", "model=local", "mode=plan"],
        {},
        lambda t: _model_dir(t, {**LLAMA_CFG, "quantization_config": {"quant_method": "awq", "ignore": 0.5}}),
        "quantization_config.ignore=0.5 is not a list of module names",
    ),
    (
        "rope type not a name",
        ["hw=cpu-2", "model=local", "mode=plan"],
        {},
        lambda t: _model_dir(t, {**LLAMA_CFG, "rope_scaling": {"rope_type": [1, 2], "factor": 2.0}}),
        "rope_scaling.rope_type=[1, 2] is not a name",
    ),
    (
        "quantization groups no TP size splits",
        ["hw=cpu-2", "model=local", "mode=plan"],
        {},
        lambda t: _model_dir(
            t, {**LLAMA_CFG, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 3}}
        ),
        "splits this checkpoint's layout",
    ),
    (
        "generated weights for a full-size shape",
        ["hw=cpu-2", "model=llama3-8b", "model.source=generated", "mode=plan"],
        {},
        None,
        "model.source=shape model.load_format=dummy",
    ),
    ("max_model_len zero", [*TINY, "serve.max_model_len=0"], {}, None, "serve.max_model_len"),
    ("max_model_len beyond context", [*TINY, "serve.max_model_len=100000"], {}, None, "serve.max_model_len"),
    ("max_num_seqs zero", [*TINY, "serve.max_num_seqs=0"], {}, None, "serve.max_num_seqs"),
    ("bad dtype", [*TINY, "serve.dtype=float8"], {}, None, "serve.dtype"),
    ("verify max_tokens zero", [*TINY, "verify.max_tokens=0"], {}, None, "verify.max_tokens"),
    ("ready timeout not positive", [*TINY, "verify.ready_timeout_s=0"], {}, None, "verify.ready_timeout_s"),
    ("launch python missing", [*TINY, "launch.python=/nonexistent/python3"], {}, None, "launch.python"),
    ("cpu cores zero", [*TINY, "hw.cpu_cores=0"], {}, None, "hw.cpu_cores"),
    ("api key in argv", [*TINY, "+serve.extra_args.api_key=sk-secret-123"], {}, None, "VLLM_API_KEY"),
    (
        "extra_args shadows a modelled key",
        [*TINY, "+serve.extra_args.tensor_parallel_size=2"],
        {},
        None,
        "serve.tensor_parallel_size",
    ),
    (
        "malformed CUDA_VISIBLE_DEVICES",
        ["hw=nvlink-4gpu", "model=tiny-llama", "mode=plan"],
        {"CUDA_VISIBLE_DEVICES": "0,,x"},
        None,
        "CUDA_VISIBLE_DEVICES",
    ),
    (
        "duplicate CUDA device ids",
        ["hw=nvlink-4gpu", "model=tiny-llama", "mode=plan"],
        {"CUDA_VISIBLE_DEVICES": "1,1"},
        None,
        "CUDA_VISIBLE_DEVICES",
    ),
    ("cache dir not creatable", [*TINY, "cache_dir=/dev/null/cache"], {}, None, "cache_dir"),
]


@pytest.mark.parametrize("case_id, overrides, env_extra, build, expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_launch(tmp_path, case_id, overrides, env_extra, build, expect):
    overrides = list(overrides)
    if build is not None:
        overrides.append(f"model.path={build(tmp_path)}")
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "VLLM_TP_RUNNER_CACHE")}
    env.update(env_extra)
    if "cache_dir=" not in " ".join(overrides):
        overrides.append(f"cache_dir={tmp_path / 'cache'}")
    out = subprocess.run(
        [sys.executable, "-m", "runner", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert errors, out.stderr[-2000:]
    assert all("Fix: " in line for line in errors), errors
    if expect:
        assert any(expect in line for line in errors), errors
    manifest = json.loads((run_dir / "manifest.json").read_text())
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["status"] == "rejected" and manifest["exit_code"] == 2
    assert manifest["problems"] and all(p["fix"] for p in manifest["problems"])
    assert not (run_dir / "vllm.log").exists()
    assert "sk-secret-123" not in (run_dir / "manifest.json").read_text()


def test_busy_port_is_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        run_dir = tmp_path / "run"
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "runner",
                *TINY,
                f"serve.port={port}",
                f"hydra.run.dir={run_dir}",
                f"cache_dir={tmp_path}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 2
    assert any(
        line.startswith("error: serve.port=") and f"serve.port={port + 1}" in line for line in out.stderr.splitlines()
    )
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "rejected"


# --------------------------------------------------------------------------- the corpus (bad_input_cases.py)
# Every case through the real command line (runner.app.main, forked from one warm process:
# tests/config/cli_batch.py), in mode=plan or mode=doctor: nothing launches.
from tests.config import cli_batch  # noqa: E402
from tests.config.bad_input_cases import BASES, DROP  # noqa: E402
from tests.config.bad_input_cases import CASES as CORPUS  # noqa: E402
from tests.config.bad_input_cases import LLAMA_CFG as CORPUS_CFG  # noqa: E402

# doctor cases ask a Python without vLLM: the doctor's vLLM import (~30 s) is not what they test
NO_VLLM_PYTHON = "/usr/bin/python3"


def _corpus_model_dir(root: Path, cfg) -> Path:
    d = root
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(cfg, str):
        text = cfg
    else:
        changed = {**CORPUS_CFG, **cfg}
        text = json.dumps({k: v for k, v in changed.items() if v is not DROP})
    (d / "config.json").write_text(text)
    (d / "tokenizer.json").write_text('{"model": {}}')
    return d


def _corpus_job(case, root: Path, i: int):
    where = root / f"case{i:03d}"
    overrides = list(BASES[case.base])
    if not any(o.startswith("mode=") for o in case.overrides):
        overrides.append(f"mode={case.mode}")
    if case.base == "local":
        overrides.append(f"model.path={_corpus_model_dir(where / 'model', case.cfg or {})}")
    run_dir = where / "run"
    for o in case.overrides:
        if o.startswith("RUNDIR="):
            run_dir = Path(o.split("=", 1)[1]) / f"case{i:03d}"
        else:
            overrides.append(o)
    if not any(o.startswith("cache_dir=") for o in overrides):
        overrides.append(f"cache_dir={root / 'cache'}")
    if case.mode == "doctor" and not any(o.startswith("launch.python=") for o in overrides):
        overrides.append(f"launch.python={NO_VLLM_PYTHON}")
    return overrides, cli_batch.clean_env(case.env), run_dir


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return dict(
        zip(
            (c.id for c in CORPUS),
            cli_batch.run_many([_corpus_job(c, root, i) for i, c in enumerate(CORPUS)]),
            strict=True,
        )
    )


def _fix_repeats_value(problem) -> bool:
    import re

    said = f"{problem['key']}={problem['value']}"
    return said in re.split(r"[\s,;()]+", problem["fix"])


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_corpus(corpus, case):
    out = corpus[case.id]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    if case.key is None:
        assert out.code == 0, (out.code, out.stderr[-2000:])
        return
    assert out.code == 2, (out.code, out.stderr[-2000:])
    errors = out.errors
    if case.mode == "doctor":  # the doctor's table says its failing rows on stdout
        errors += [line for line in out.stdout.splitlines() if line.startswith("FAIL")]
    assert errors, out.stderr[-2000:]
    assert any(case.key in line for line in errors), errors
    if case.value is not None:
        assert any(case.key in line and case.value in line for line in errors), errors
    if not case.manifest:
        return
    manifest = json.loads((out.run_dir / "manifest.json").read_text())
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["status"] == "rejected" and manifest["exit_code"] == 2
    assert manifest["problems"] and all(p["fix"] for p in manifest["problems"])
    assert not [p for p in manifest["problems"] if _fix_repeats_value(p)], manifest["problems"]
    assert not (out.run_dir / "vllm.log").exists()
