#!/usr/bin/env bash
# device-side driver: memory points of points-first.txt, tune-vs-grid, then points.txt; everything under /tmp/w
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_CACHE_ROOT=/tmp/vllm-cache
mkdir -p /tmp/w/mem
cd /tmp/repo
points() {
  while read -r name rest; do
    [ -z "$name" ] && continue
    echo "mem $name $(date +%T)" >> /tmp/w/phase
    timeout 420 python3 -m runner $rest mode=check serve.enforce_eager=true verify.ready_timeout_s=380 \
      hydra.run.dir=/tmp/w/mem/$name > /tmp/w/mem/$name.log 2>&1
    echo "mem-done $name rc=$? $(date +%T)" >> /tmp/w/phase
  done < "$1"
}
[ -f tools/device/points-first.txt ] && points tools/device/points-first.txt
if [ -z "$SKIP_TVG" ]; then
  echo "tvg $(date +%T)" >> /tmp/w/phase
  python3 benchmarks/tune_vs_grid.py --warm-machine --work /tmp/w/tvg \
    hw=auto model=llama3-8b model.load_format=dummy bench=h100-quick \
    bench.input_len=512 bench.output_len=128 bench.prompts_per_concurrency=${WAVES:-8} \
    tune.slo.ttft_p99_ms=500 tune.slo.tpot_p99_ms=15 \
    '+tune.space.serve.quantization=[null,fp8]' '+tune.space.serve.max_num_seqs=[64,256]' \
    > /tmp/w/tvg.log 2>&1
  echo "tvg-done rc=$? $(date +%T)" >> /tmp/w/phase
fi
points tools/device/points.txt
echo "all-done $(date +%T)" >> /tmp/w/phase
