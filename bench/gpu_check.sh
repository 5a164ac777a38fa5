#!/usr/bin/env bash
# The prepared check for a machine with an NVIDIA GPU (none has been lent to this project yet; the
# device tool says when one is). Under 8 minutes:
#   1. installs vit_jax[cuda12] and the test tools into .venv-gpu (pip's CUDA libraries);
#   2. JAX sees the GPU and TensorFlow (tf.data) does not take it;
#   3. the tests that differ on a GPU, run on it: fused attention against the original formula in
#      float32 and bfloat16 (XLA's and, where it applies, cuDNN's flash attention), sharding, a train
#      step; then cuDNN flash attention in bfloat16 against the float32 formula on a B/16-sized layer;
#   4. bench.throughput: ViT-B/16 bf16 training and inference, img/s and MFU against the card's
#      published bf16 peak (vit_jax.plan.CHIPS), written to bench/results/gpu_check.json;
#   5. the demo trains on the GPU and reaches its accuracy.
#   bash bench/gpu_check.sh [cuda12|cuda13]
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-cuda12}"
start=$SECONDS
python3 -m venv .venv-gpu
.venv-gpu/bin/python -m pip install -q --upgrade pip
.venv-gpu/bin/python -m pip install -q -c constraints.txt -e ".[$extra,test]"
echo "installed in $((SECONDS - start)) s"
export JAX_PLATFORMS=cuda TF_CPP_MIN_LOG_LEVEL=2
.venv-gpu/bin/python - <<'PY'
import jax

from vit_jax import tflib

devices = jax.devices()
assert devices[0].platform == 'gpu', f'JAX does not see a GPU: {devices}'
print('JAX:', devices)
tf = tflib.load()
assert tf.config.get_visible_devices('GPU') == [], 'TensorFlow sees a GPU (tf.data must stay on the CPU)'
print('TensorFlow: CPU only')
PY
# tests/conftest.py defaults JAX_PLATFORMS to cpu; the variable set above puts them on the GPU.
.venv-gpu/bin/python -m pytest -q -p no:cacheprovider tests/test_models.py tests/test_sharding.py \
  tests/test_train.py -k "(attention or bfloat16 or bf16 or sharding or mesh or partition or step) and not 2_processes" \
  2>&1 | tail -n 5
.venv-gpu/bin/python - <<'PY'
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import vit

# One B/16 attention layer at batch 32 (197 tokens, 12 heads of 64): cuDNN's fused flash attention in
# bfloat16 against the original formula in float32.
x = jax.random.normal(jax.random.PRNGKey(0), (32, 197, 768), jnp.float32)
layer = lambda impl, dtype: vit.MultiHeadDotProductAttention(num_heads=12, attention_impl=impl, dtype=dtype)  # noqa: E731
params = layer('einsum', None).init(jax.random.PRNGKey(1), x, True)
want = np.asarray(layer('einsum', None).apply(params, x, True)[0])
for impl in ('xla', 'cudnn'):
    try:
        got = np.asarray(jax.jit(lambda p, x: layer(impl, jnp.bfloat16).apply(p, x, True)[0])(params, x),
                         np.float32)
    except Exception as e:  # noqa: BLE001 - cuDNN refuses shapes/dtypes it has no kernel for
        print(f'{impl}: not applicable here ({str(e).splitlines()[0][:200]})')
        continue
    err = float(np.abs(got - want).max() / np.abs(want).max())
    print(f'{impl} bf16 vs einsum f32: max relative error {err:.2e}')
    assert err < 3e-2, (impl, err)
PY
.venv-gpu/bin/python -m bench.throughput --models B_16 --batch-sizes 128 --dtypes bfloat16 --no-torch \
  --rounds 3 | tail -n 4
.venv-gpu/bin/python - <<'PY'
import json

import jax

from bench._util import write_results
from vit_jax import plan

kind = str(jax.devices()[0].device_kind)
chip = plan.CHIPS.get(kind)
rows = json.load(open('bench/results/throughput.json'))['rows']
for row in rows:
    flops = row['img/s'] * row['analytic GFLOP/img'] * 1e9
    row['device'] = kind
    row['TFLOP/s'] = flops / 1e12
    row['MFU vs peak'] = flops / chip.peak_bf16_flops if chip else None
    print(f"{row['model']} {row['mode']} bf16 batch {row['batch']} on {kind}: {row['img/s']:.0f} img/s, "
          f"{row['TFLOP/s']:.0f} TFLOP/s" + (f", MFU {row['MFU vs peak']:.1%} of {chip.peak_bf16_flops / 1e12:.0f}"
                                              ' TFLOP/s' if chip else ' (no published peak in plan.CHIPS)'))
write_results('gpu_check', rows, device=kind)
PY
workdir="$(mktemp -d)"
.venv-gpu/bin/vit-train --config=configs/digits.py --workdir="$workdir" --config.progress_bar=False | tail -n 1
.venv-gpu/bin/python - "$workdir" <<'PY'
import sys

from vit_jax import metrics

last = metrics.read_jsonl(f'{sys.argv[1]}/metrics.jsonl')[-1]
assert last['accuracy'] >= 0.95, last
print(f'GPU check passed: {last["accuracy"]:.2%} on the digits after {last["step"]} steps')
PY
echo "gpu_check: done in $((SECONDS - start)) s"
