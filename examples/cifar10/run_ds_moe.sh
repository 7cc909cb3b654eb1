#!/usr/bin/env bash
# The C++ counterpart of DeepSpeedExamples' training/cifar/run_ds_moe.sh: 2 ranks, 2 experts
# split over them (expert parallel size 2), top-1 gating with RSample noise, expert
# parameter groups; the Python example's default dtype fp16 and ZeRO stage 0.
# Other arguments pass through, e.g. --dataset fashion-mnist --epochs 2, --dtype bf16.
set -euo pipefail
NUM_GPUS=2
EP_SIZE=2
NUM_EXPERTS=(2)
exec "$(dirname "$0")/run_ds.sh" -n "$NUM_GPUS" \
  --log-interval 100 \
  --moe \
  --ep-world-size "$EP_SIZE" \
  --num-experts "${NUM_EXPERTS[@]}" \
  --top-k 1 \
  --noisy-gate-policy RSample \
  --moe-param-group \
  "$@"
