#!/usr/bin/env bash
# One prepared device check for a lent H100/H200 (issue 15.4): at most 8 minutes, one call.
#
#   bash bench/prepare_device_wheels.sh             # here, once: wheels the GPU image lacks
#   (device run, carry [".whl"]):  bash bench/device_check.sh
#   bash bench/device_check.sh --dry-run            # anywhere: every step compiled on CPU, tiny shapes
#
# Writes $OUT/device_check.json, $OUT/device_check_rows.md (rows for BENCHMARKS.md) and
# $OUT/device_check.log (OUT defaults to /tmp/maxlm_device_check). The Python side
# (bench/device_check.py) keeps its own budget (--budget_s, default 420 s) and writes
# its JSON after every section, so even a run cut by `timeout` leaves its figures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-/tmp/maxlm_device_check}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
if [[ " $* " != *" --dry-run "* ]]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  # XLA's allocator takes most of the GPU up front; leave room for cuDNN workspaces.
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT_DIR/gpu.txt"
else
  export JAX_PLATFORMS=cpu
fi
export PYTHONUNBUFFERED=1
timeout 470 "$PY" bench/device_check.py --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/device_check.log"
exit "${PIPESTATUS[0]}"
