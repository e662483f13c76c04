"""A local model directory whose tokenizer has no chat template: verified on completions, the
manifest says chat is refused and how to fix it, and vLLM does refuse it (400) as said."""

from __future__ import annotations

import json
import shutil
import signal

import openai
import pytest
from omegaconf import OmegaConf

from runner.launch import generate
from runner.verify.chat import NO_TEMPLATE_NOTE
from tests.conftest import compose_config
from tests.e2e.test_openai_client import serving
from tests.e2e_util import load_manifest, processes_mentioning

pytestmark = pytest.mark.e2e


def test_a_model_without_a_chat_template_is_verified_on_completions(tmp_path):
    model = OmegaConf.to_object(compose_config(["model=tiny-llama"])).model
    local = tmp_path / "no-template"
    shutil.copytree(generate.materialise(model, str(tmp_path / "cache")), local)
    tok_cfg = json.loads((local / "tokenizer_config.json").read_text())
    del tok_cfg["chat_template"]
    (local / "tokenizer_config.json").write_text(json.dumps(tok_cfg))

    overrides = ["hw=cpu-2", "model=local", f"model.path={local}", "model.name=plain", "serve.tensor_parallel_size=1"]
    with serving(overrides, tmp_path / "run") as served:
        manifest = load_manifest(served.run_dir)
        assert manifest["status"] == "verified"
        assert manifest["verification"]["chat"] == {"available": False, "note": NO_TEMPLATE_NOTE}
        assert NO_TEMPLATE_NOTE in manifest["notes"]
        client = openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=300)
        assert client.completions.create(model="plain", prompt="Hi", max_tokens=2).choices[0].text is not None
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert refused.value.status_code == 400 and "chat template" in str(refused.value)
        served.proc.send_signal(signal.SIGINT)
        assert served.proc.wait(timeout=120) == 0
    assert processes_mentioning(f"--port {served.port}") == []
