#!/usr/bin/env bash
# The C++ counterpart of DeepSpeedExamples' training/cifar/run_ds_prmoe.sh: PR-MoE (the
# residual MLP) with two MoE layers of 2 and 4 experts, split over 2 ranks (expert parallel
# size 2), top-1 gating with RSample noise, expert parameter groups; fp16, ZeRO stage 0.
# Other arguments pass through, e.g. --dataset fashion-mnist --epochs 2.
set -euo pipefail
NUM_GPUS=2
EP_SIZE=2
NUM_EXPERTS=(2 4)
exec "$(dirname "$0")/run_ds.sh" -n "$NUM_GPUS" \
  --log-interval 100 \
  --moe \
  --ep-world-size "$EP_SIZE" \
  --num-experts "${NUM_EXPERTS[@]}" \
  --mlp-type residual \
  --top-k 1 \
  --noisy-gate-policy RSample \
  --moe-param-group \
  "$@"
