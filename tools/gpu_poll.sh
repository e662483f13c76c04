#!/usr/bin/env bash
# Follow tools/gpu_sweep.sh: wait up to SECONDS (or until it is done), print its progress,
# and pack what it has written so far (no compile caches) into $OUT/sweep.tgz.
#   bash tools/gpu_poll.sh /tmp/m 540
m=${1:-/tmp/m}
for _ in $(seq 1 $(( ${2:-540} / 10 ))); do
  grep -q " done$" "$m/progress.txt" 2>/dev/null && break
  sleep 10
done
cat "$m/progress.txt" 2>/dev/null
tail -n 8 "$m/cmp.log" 2>/dev/null
for f in "$m"/*/*/runner.jsonl "$m"/*/*/*/runner.jsonl; do
  [ -f "$f" ] && grep -h '"event": "\(vllm ready\|bench done\|verified\|run failed\|rejected\)' "$f" | cut -c1-260 | tail -n 4
done 2>/dev/null
nvidia-smi --query-gpu=index,memory.used --format=csv,noheader
tar czf "$OUT/sweep.tgz" --exclude='cache-*' --exclude='vllm-cache' -C "$(dirname "$m")" "$(basename "$m")"
ls -la "$OUT"
