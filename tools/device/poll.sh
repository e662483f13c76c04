#!/usr/bin/env bash
# wait up to $1 s (or until all-done), then pack /tmp/w into $OUT
if [ -n "$SYNC" ]; then cp -r runner/. /tmp/repo/runner/ && cp tools/device/points.txt /tmp/repo/tools/device/points.txt && echo synced; fi
end=$(( $(date +%s) + ${1:-540} ))
while [ "$(date +%s)" -lt "$end" ]; do
  grep -q all-done /tmp/w/phase 2>/dev/null && break
  sleep 10
done
cat /tmp/w/phase 2>/dev/null; tail -5 /tmp/w/tvg.log 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv 2>/dev/null | tail -1
tar czf "$OUT/w.tgz" --exclude='*.safetensors' -C /tmp w 2>/dev/null; ls -la "$OUT"
