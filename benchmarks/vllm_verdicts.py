"""Ask vLLM itself whether it accepts a published model shape at a TP size, by starting it.

    python3 benchmarks/vllm_verdicts.py OUT_DIR FIXTURE:TP[@FIRST_GPU] […]

FIXTURE is a config.json under tests/fixtures/hf_configs/ (name without .json). Each case
gets a model directory (that config, a generated tokenizer; weights are vLLM's dummy ones),
then `vllm serve` with that TP size, eager mode, started straight — not through the runner,
whose planner would refuse the bad ones first. A case ends when vLLM is ready (accepted) or
exits (refused); the verdict, the planner's own answer and vLLM's last error line are
printed as one JSON line per case, and vLLM's log is kept in OUT_DIR.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's runner, installed or not

from runner.config.schema import ModelConfig, ModelSource  # noqa: E402
from runner.launch.generate import materialise  # noqa: E402
from runner.plan.rules import tp_violation  # noqa: E402
from runner.plan.shape import ModelShape  # noqa: E402

ERROR = re.compile(
    r"[^\n]{0,160}(ValueError|AssertionError|must be divisible|not divisible|is not supported)[^\n]{0,120}"
)


def start(out: Path, name: str, tp: int, port: int, first_gpu: int):
    cfg = {
        k: v
        for k, v in json.loads((ROOT / "tests/fixtures/hf_configs" / f"{name}.json").read_text()).items()
        if not k.startswith("_")
    }
    model = ModelConfig(name=name, source=ModelSource.shape, load_format="dummy", hf_config=cfg)
    path = materialise(model, str(out / "cache"))
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        path,
        "--load-format",
        "dummy",
        "--tensor-parallel-size",
        str(tp),
        "--max-model-len",
        "2048",
        "--enforce-eager",
        "--port",
        str(port),
        "--gpu-memory-utilization",
        "0.8",
        "--compilation-config",
        '{"pass_config":{"fuse_allreduce_rms":false}}',
    ]
    env = {
        **os.environ,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": ",".join(str(first_gpu + i) for i in range(tp)),
    }
    log = open(out / f"{name}-tp{tp}.vllm.log", "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    planner = tp_violation(ModelShape.from_hf_config(cfg), tp, cfg)
    return {
        "case": f"{name}:{tp}",
        "proc": proc,
        "port": port,
        "log": out / f"{name}-tp{tp}.vllm.log",
        "planner": planner or "accepts",
    }


def stop(proc: subprocess.Popen) -> None:
    """The whole session: vLLM's engine and workers too."""
    for sig in (15, 9):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            continue


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, spec in enumerate(sys.argv[2:]):
        name, rest = spec.rsplit(":", 1)
        tp, _, first = rest.partition("@")
        cases.append(start(out, name, int(tp), 8300 + i, int(first or 0)))
    deadline = time.time() + 420
    while cases and time.time() < deadline:
        for case in list(cases):
            verdict = None
            if ready(case["port"]):
                verdict = "accepted (ready)"
            elif case["proc"].poll() is not None:
                verdict = f"refused (exit {case['proc'].returncode})"
            if verdict:
                text = case["log"].read_text(errors="replace")
                errors = [m.group(0) for m in ERROR.finditer(text)]
                print(
                    json.dumps(
                        {
                            "case": case["case"],
                            "vllm": verdict,
                            "planner": case["planner"],
                            "vllm_error": (errors[-1][:300] if errors and not verdict.startswith("accepted") else None),
                        }
                    ),
                    flush=True,
                )
                stop(case["proc"])
                cases.remove(case)
        time.sleep(1)
    for case in cases:
        print(json.dumps({"case": case["case"], "vllm": "no answer in time", "planner": case["planner"]}))
        stop(case["proc"])


if __name__ == "__main__":
    main()
