#!/usr/bin/env bash
# The TP-sweep wall-time comparison on a GPU machine (docs/sweeps.md), run in the background
# so that it can outlast one device call (10 minutes): start it with
#   setsid nohup bash tools/gpu_sweep.sh /tmp/m llama3-8b 1,2,4 </dev/null >/tmp/m.out 2>&1 &
# and follow it with `bash tools/gpu_poll.sh /tmp/m SECONDS` (which also packs the results).
#  1. one untimed tiny-llama launch takes the machine's first-start costs (a fresh machine's
#     first vLLM start was 288 s against 166 s for the next, larger one), so that neither side
#     of the comparison pays them alone;
#  2. tools/bench_sweep.py: a plain `vllm serve` + `vllm bench serve` loop over the points,
#     then the runner's `-m mode=bench` sweep of the same points, each from its own empty
#     vLLM compile cache. Per-point and total times land in DIR/cmp/summary.json.
# Budget: about 200 s a llama3-8b point and side on an H100 (start 120-140 s, bench 65-75 s).
set -uo pipefail
m=${1:-/tmp/m}
model=${2:-llama3-8b}
tps=${3:-1,2,4}
mkdir -p "$m"
export PYTHONUNBUFFERED=1
note() { echo "$(date +%T) $*" >>"$m/progress.txt"; }
note "start"
python3 -m runner mode=check hw=auto model=tiny-llama hydra.run.dir="$m/warm-up" >"$m/warm-up.log" 2>&1
note "warm-up rc=$?"
python3 tools/bench_sweep.py --no-warm --separate-caches --work "$m/cmp" --tp "$tps" \
  bench=h100-quick hw=auto model="$model" model.load_format=dummy >"$m/cmp.log" 2>&1
note "comparison rc=$?"
note "done"
