#!/usr/bin/env bash
# The C++ counterpart of DeepSpeedExamples' training/cifar/run_ds.sh: picks the binary for
# --dtype and --stage (one binary per policy combination, no runtime branching in the step)
# and passes every argument on. Multi-rank runs will go through mpirun here.
#   examples/cifar10/run_ds.sh --dtype fp32 --stage 0 --epochs 2
set -euo pipefail
bin="$(cd "$(dirname "$0")/../.." && pwd)/build/bin"
dtype=fp32
stage=0
args=("$@")
for ((i = 0; i < ${#args[@]}; ++i)); do
  case "${args[i]}" in
    --dtype) dtype="${args[i+1]:-}" ;;
    --dtype=*) dtype="${args[i]#--dtype=}" ;;
    --stage) stage="${args[i+1]:-}" ;;
    --stage=*) stage="${args[i]#--stage=}" ;;
  esac
done
binary="$bin/cifar10_${dtype}_zero${stage}"
if [ ! -x "$binary" ]; then
  echo "run_ds.sh: no binary for --dtype $dtype --stage $stage ($binary)." >&2
  echo "built: $(cd "$bin" 2>/dev/null && ls cifar10_*_zero* 2>/dev/null | tr '\n' ' ')" >&2
  exit 2
fi
exec "$binary" "$@"
