#!/usr/bin/env bash
# Stage vLLM 0.26.0 *and the runner's own dependencies* for the offline GPU machine.
# The shared kit (../shared/gpu/stage.sh) carries vLLM; the device image lacks hydra-core,
# omegaconf (+ antlr4 runtime) and structlog, so they ride along in the last chunk.
# From the repository root:  bash tools/gpu_kit.sh [path/to/shared/gpu]
# Then on the device, one call per chunk k=1..5 with carry [".gpukit/ck"]:
#   mkdir -p /tmp/gpukit && cp -r .gpukit/ck/* /tmp/gpukit/
# and in the last call also:
#   bash /tmp/gpukit/install_on_device.sh && python3 -m pip install -q --no-index --no-deps --target /tmp/site2 /tmp/gpukit/rdeps/*.whl
# Every later command: export PYTHONPATH=/tmp/site:/tmp/site2 HF_HUB_OFFLINE=1
set -euo pipefail
kit=${1:-../shared/gpu}
bash "$kit/stage.sh"
last=$(ls -d .gpukit/c* | sort -V | tail -n 1)
mkdir -p "$last/rdeps"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform any \
  -d "$last/rdeps" hydra-core==1.3.2 omegaconf==2.3.0 structlog==25.4.0 2> >(grep -v '^WARNING: Location' >&2)
# antlr4's runtime is published as an sdist only; the device has no network to build it.
python3 -m pip wheel -q --no-deps -w "$last/rdeps" antlr4-python3-runtime==4.9.3 2> >(grep -v '^WARNING: Location' >&2)
ls -la "$last/rdeps"
du -sh .gpukit/c*
