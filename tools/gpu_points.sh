#!/usr/bin/env bash
# Launch several runner points at once on one GPU machine, each on its own GPUs, and pack
# their run directories (manifest, plan, vLLM's log) into $OUT/TAG.tgz.
#   bash tools/gpu_points.sh TAG "NAME|MASK|overrides…" ["NAME|MASK|overrides…" …]
# MASK is the CUDA_VISIBLE_DEVICES the point starts under ("-": none, the whole machine).
# Each point gets its own port; vLLM logs its memory profile at start-up (weights,
# activation peak, non-torch and CUDA-graph memory). Points start 20 s apart so that an
# unmasked hw=auto point has placed itself before the others take memory.
set -uo pipefail
tag=$1; shift
runs=/tmp/runs/$tag
mkdir -p "$runs"
port=8100
pids=()
for spec in "$@"; do
  IFS='|' read -r name mask overrides <<<"$spec"
  port=$((port + 1))
  (
    if [ "$mask" != "-" ]; then export CUDA_VISIBLE_DEVICES=$mask; fi
    # shellcheck disable=SC2086
    python3 -m runner mode=check model.load_format=dummy serve.port=$port \
      hydra.run.dir="$runs/$name" $overrides >"$runs/$name.out" 2>&1
    echo "$name rc=$?" >>"$runs/rc.txt"
  ) &
  pids+=($!)
  sleep 20
done
wait "${pids[@]}"
cat "$runs/rc.txt"
for f in "$runs"/*/manifest.json; do
  python3 -c "import json,sys; m=json.load(open(sys.argv[1])); v=m.get('vllm_reported') or {}; print(sys.argv[1].split('/')[-2], m.get('verdict'), (m.get('failure') or {}).get('cause'), v)" "$f" 2>/dev/null | cut -c1-400
done
grep -h "GPU KV cache size\|gpu_worker.py:8[0-9][0-9]\] Free memory\|Graph capturing finished\|Profiling CUDA graph memory" "$runs"/*/vllm.log | cut -c1-300 | head -60
nvidia-smi --query-gpu=index,memory.used --format=csv,noheader
tar czf "$OUT/$tag.tgz" -C /tmp/runs "$tag"
