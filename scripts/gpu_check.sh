#!/usr/bin/env bash
# The prepared check for an NVIDIA GPU machine (none has been lent to this project yet): installs
# vit_jax[cuda12] into .venv-gpu, then checks that JAX sees the GPU, that TensorFlow (tf.data) does
# not take it, and that the demo trains on it and reaches its accuracy. About 5 minutes.
#   bash scripts/gpu_check.sh [cuda12|cuda13]
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-cuda12}"
python3 -m venv .venv-gpu
.venv-gpu/bin/python -m pip install -q --upgrade pip
.venv-gpu/bin/python -m pip install -q -c constraints.txt -e ".[$extra]"
.venv-gpu/bin/python - <<'EOF'
import jax

from vit_jax import tflib

devices = jax.devices()
assert devices[0].platform == 'gpu', f'JAX does not see a GPU: {devices}'
print('JAX:', devices)
tf = tflib.load()
assert tf.config.get_visible_devices('GPU') == [], 'TensorFlow sees a GPU (tf.data must stay on the CPU)'
print('TensorFlow: CPU only')
EOF
workdir="$(mktemp -d)"
.venv-gpu/bin/vit-train --config=configs/digits.py --workdir="$workdir" --config.progress_bar=False | tail -n 1
.venv-gpu/bin/python - "$workdir" <<'EOF'
import sys

from vit_jax import metrics

last = metrics.read_jsonl(f'{sys.argv[1]}/metrics.jsonl')[-1]
assert last['accuracy'] >= 0.95, last
print(f'GPU check passed: {last["accuracy"]:.2%} on the digits after {last["step"]} steps')
EOF
