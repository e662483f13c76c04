#!/usr/bin/env bash
# The product as a user installs it: build the wheel from this tree, install it into a fresh
# virtual environment (no editable install; the light dependencies only: planning needs no
# vLLM), then from another directory plan a team's recipe on the team's own hardware profile
# with the console script. Fails on any step. From anywhere:
#   bash tools/check_wheel.sh            # PYTHON=python3.11 picks the interpreter
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
quiet() { "$@" 2> >(grep -v '^WARNING: Location' >&2); }

# Exactly what a clone holds (tracked and untracked-but-not-ignored files): no build/ or
# egg-info left in the tree, no stray outputs carried into the wheel.
mkdir "$work/src"
git -C "$repo" ls-files -co --exclude-standard -z | (cd "$repo" && xargs -0 tar -cf - --no-recursion) |
  tar -xf - -C "$work/src"
quiet "$py" -m pip wheel -q --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/vllm_tp_runner-*.whl)

"$py" -m venv "$work/venv"
# the light dependencies first, then the wheel without its heavy ones (matplotlib: the sweep
# report's plots), so pip's resolver has no missing requirement to warn about
quiet "$work/venv/bin/python" -m pip install -q "hydra-core>=1.3.2,<1.4" "omegaconf>=2.3,<2.4" "structlog>=24.1" \
  "nvidia-ml-py>=12.535" "psutil>=5.9" "numpy>=1.24" "huggingface_hub>=0.34"
quiet "$work/venv/bin/python" -m pip install -q --no-deps "$wheel"

mkdir -p "$work/elsewhere"
cp -r "$repo/tests/fixtures/team_conf" "$work/elsewhere/team-conf"
cd "$work/elsewhere"
# the installed package, not this checkout
"$work/venv/bin/python" - "$work/venv" <<'PY'
import sys, runner
from pathlib import Path
where = Path(runner.__file__).resolve()
assert str(where).startswith(str(Path(sys.argv[1]).resolve())), f"runner imported from {where}"
for name in ("config.yaml", "hw/cpu-2.yaml", "model/tiny-llama.yaml", "recipe/tiny-llama-cpu-2.yaml",
             "hydra/launcher/slurm.yaml", "serve/default.yaml", "bench/default.yaml"):
    assert (where.parent / "conf" / name).is_file(), f"the wheel lacks conf/{name}"
PY

run() {
  local dir=$1
  shift
  env -u CUDA_VISIBLE_DEVICES CUDA_VISIBLE_DEVICES= "$work/venv/bin/vllm-tp-runner" "$@" "hydra.run.dir=$dir" >"$dir.out" 2>&1 ||
    { cat "$dir.out" >&2; echo "check_wheel: vllm-tp-runner $* failed" >&2; exit 1; }
}
run team -cd team-conf +recipe=theirs mode=plan
run shipped-hw -cd team-conf hw=pcie-4gpu model=team-13b mode=plan
run shipped-all hw=pcie-2gpu model=llama3-8b mode=plan

"$work/venv/bin/python" - <<'PY'
import json
def manifest(d):
    return json.load(open(f"{d}/manifest.json"))
team = manifest("team")
assert team["status"] == "planned", team["problems"]
assert team["config"]["hw"]["name"] == "team-a10-4" and team["config"]["model"]["name"] == "team-13b", team["config"]
assert team["plan"]["tensor_parallel_size"] == 4 and team["config"]["serve"]["max_num_seqs"] == 64
assert "NVIDIA A10" in open("team.out").read() or "team-a10-4" in open("team.out").read()
mixed = manifest("shipped-hw")
assert mixed["status"] == "planned" and mixed["config"]["hw"]["name"] == "pcie-4gpu"
assert manifest("shipped-all")["status"] == "planned"
print("check_wheel: the installed wheel planned the team recipe on the team profile")
PY
