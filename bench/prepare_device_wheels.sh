#!/usr/bin/env bash
# Wheels the GPU machine's image lacks, for its Python 3.12 on x86-64, into .whl/ at the repo root.
#
#   bash bench/prepare_device_wheels.sh        # here, before a device call; then carry ".whl"
#
# The image (see the device notes) already has jax 0.11, flax, optax, orbax, tensorstore,
# sentencepiece, safetensors, etils, protobuf and pyyaml; maxlm's configs need
# ml-collections, its data package grain (+ array_record, portpicker, importlib_resources
# for etils[epath]) and its monitor tensorboardX. Versions are the ones requirements.txt
# pins, so the GPU runs the code CI checked. bench/device_check.sh installs them with
# --no-deps into /tmp/site. .whl/ is git-ignored through .git/info/exclude (never committed).
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" requirements.txt | head -1 | sed 's/ .*//'; }
PKGS=("$(pin grain)" "$(pin array_record)" "$(pin ml-collections)" "$(pin tensorboardX)"
      "portpicker==1.6.0" "importlib_resources==7.1.0")
for p in "${PKGS[@]}"; do
  [[ "$p" == *==* ]] || { echo "prepare_device_wheels: no pin for '$p' in requirements.txt" >&2; exit 1; }
done
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${PKGS[@]}"
ls -la .whl
du -sh .whl  # counts toward the 64 MiB that travels with the working tree
