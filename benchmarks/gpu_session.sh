#!/usr/bin/env bash
# The batch's GPU measurements, in calls that each fit the device tool's 10-minute limit, after
# `benchmarks/gpu_carry.sh`'s three install calls (its header). Figures go to $OUT.
#   bash benchmarks/gpu_session.sh real        tiny.en on CUDA against the CPU (~1 min)
#   bash benchmarks/gpu_session.sh inprocess   engine / generate / ceiling / profile, both models (~6 min)
#   bash benchmarks/gpu_session.sh service M   the service over HTTP on model M: 300 tasks at
#                                              MAX_TASKS_PER_GPU 64 with 3 urgent probes, then at 5 (~4 min)
#   bash benchmarks/gpu_session.sh multi M N   the same stream on GPUs 0..N-1 (an -x2 or -x4
#                                              machine), then on GPU 0 alone, in one sitting: the
#                                              ratio of the two, model loads, NVML against the cap
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src:/tmp/site:/tmp/site2 PYTHONUNBUFFERED=1
OUT=${OUT:-out}
mkdir -p "$OUT"
case "${1:-}" in
  real)
    python3 benchmarks/gpu_real_weights.py --out "$OUT" --copies 8 ;;
  inprocess)
    for model in large-v3-turbo large-v3; do
      python3 benchmarks/gpu_batching.py --out "$OUT" --model "$model" --tasks 300 \
        --threads 64,5 --generate-batches 128 2>&1 | grep -v "captured a decode" | cut -c1-600
    done ;;
  service)
    model=${2:-large-v3-turbo}
    for tasks in 64 5; do
      python3 benchmarks/gpu_report.py --out "$OUT" --devices 0 stream --models "$model" \
        --beams 1 --tokens 0 --tasks 300 --min-seconds 5 --max-tasks "$tasks" --urgent 3 \
        --urgent-after 15 --name "$model-$tasks" --max-seconds 150 2>&1 | grep -v "final$" | tail -15
    done ;;
  multi)
    model=${2:-large-v3-turbo}
    count=${3:-2}
    devices=$(seq -s, 0 $((count - 1)))
    for set in "$devices" 0; do
      python3 benchmarks/gpu_report.py --out "$OUT" --devices "$set" stream --models "$model" \
        --beams 1 --tokens 0 --tasks 300 --min-seconds 5 --max-tasks 64 \
        --name "$model-gpus-${set//,/}" --max-seconds 200 2>&1 | grep -v "final$" | tail -15
    done ;;
  *)
    echo "usage: $0 real | inprocess | service MODEL | multi MODEL GPUS" >&2; exit 2 ;;
esac
