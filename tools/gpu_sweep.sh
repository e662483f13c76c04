#!/usr/bin/env bash
# The TP-sweep measurement on a GPU machine (docs/sweeps.md), run in the background so that it
# can outlast one device call: start it with
#   setsid nohup bash tools/gpu_sweep.sh /tmp/m </dev/null >/tmp/m.out 2>&1 &
# and follow it with `bash tools/gpu_poll.sh /tmp/m SECONDS` (which also packs the results).
#  1. the runner's sweep of llama70b (dummy weights) at TP 1,2,4 (TP 1 must come out rejected);
#     it goes first, so the machine's first, slowest vLLM start is not part of the comparison;
#  2. tools/bench_sweep.py on llama3-8b TP 1,2,4: a plain serve + bench loop, then the runner's
#     sweep, each from its own empty vLLM compile cache.
set -uo pipefail
m=${1:-/tmp/m}
mkdir -p "$m"
export PYTHONUNBUFFERED=1
note() { echo "$(date +%T) $*" >>"$m/progress.txt"; }
note "start"
t0=$(date +%s)
python3 -m runner -m mode=bench bench=h100-quick hw=auto model=llama70b model.load_format=dummy \
  serve.tensor_parallel_size=1,2,4 hydra.sweep.dir="$m/sweep-70b" >"$m/sweep-70b.log" 2>&1
note "llama70b sweep rc=$? in $(($(date +%s) - t0)) s"
python3 tools/bench_sweep.py --no-warm --separate-caches --work "$m/cmp-8b" --tp 1,2,4 \
  bench=h100-quick hw=auto model=llama3-8b model.load_format=dummy >"$m/cmp-8b.log" 2>&1
note "llama3-8b comparison rc=$?"
note "done"
