#!/usr/bin/env bash
# The C++ counterpart of DeepSpeedExamples' training/cifar/run_ds.sh: picks the binary for
# --dtype and --stage (one binary per policy combination, no runtime branching in the step)
# and launches it on -n RANKS MPI ranks (default 1: no mpirun). Other arguments pass through.
# The defaults are the Python example's: --dtype fp16, --stage 0. With --moe it picks the
# MoE binary (cifar10_moe_<dtype>_zero<stage>; run_ds_moe.sh and run_ds_prmoe.sh pass it).
# With --cuda it picks the GPU binary (cifar10[_moe]_<dtype>_zero<stage>_cuda, one GPU per rank;
# run_ds_moe.sh --cuda too).
#   examples/cifar10/run_ds.sh --dtype=bf16 --stage=2 -n 2 --epochs 2
#   examples/cifar10/run_ds.sh --cuda --dtype=bf16 --stage=2 --epochs 2
set -euo pipefail
bin="${DSPP_BIN_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/build/bin}"  # DSPP_BIN_DIR: another build tree
dtype=fp16
stage=0
ranks=1
moe=
device=
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--ranks) ranks="$2"; shift 2; continue ;;
    --dtype) dtype="$2"; args+=("$1" "$2"); shift 2; continue ;;
    --dtype=*) dtype="${1#--dtype=}" ;;
    --stage) stage="$2"; args+=("$1" "$2"); shift 2; continue ;;
    --stage=*) stage="${1#--stage=}" ;;
    --moe) moe=moe_ ;;
    --cuda) device=_cuda; shift; continue ;;
  esac
  args+=("$1")
  shift
done
binary="$bin/cifar10_${moe}${dtype}_zero${stage}${device}"
if [ ! -x "$binary" ]; then
  echo "run_ds.sh: no binary for ${moe:+--moe }${device:+--cuda }--dtype $dtype --stage $stage ($binary)." >&2
  echo "built: $(cd "$bin" 2>/dev/null && ls cifar10_*_zero* 2>/dev/null | tr '\n' ' ')" >&2
  exit 2
fi
if [ "$ranks" -eq 1 ]; then exec "$binary" "${args[@]}"; fi
flags=(--bind-to none)
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
[ "$ranks" -gt "$(nproc)" ] && flags+=(--oversubscribe)
exec mpirun "${flags[@]}" -np "$ranks" "$binary" "${args[@]}"
