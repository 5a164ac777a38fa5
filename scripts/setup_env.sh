#!/usr/bin/env bash
# Creates .venv (if missing) and installs vit_jax with the given extras into it.
# Sourced by scripts/demo.sh and scripts/test.sh; needs only python3.11 + pip. pip's own output
# goes to .venv/install.log, shown only if the install fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.installed${extras:+-$extras}"
log=.venv/install.log
pip_install() {
  if ! .venv/bin/python -m pip install -q "$@" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "setup_env.sh: error: pip install $* failed (full log: $log)" >&2
    exit 1
  fi
}
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "Installing vit_jax${extras:+[$extras]} into .venv (once; a few minutes; log: $log)"
  : >"$log"
  pip_install --upgrade pip
  # torch first, pinned: the CPU build; a plain `torch` would pull CUDA packages.
  if [[ "$extras" == *torch* ]]; then pip_install torch==2.13.0; fi
  pip_install -c constraints.txt -e ".${extras:+[$extras]}"
  # The tests check vit_jax.preprocess against the original's tokenizers (tensorflow_text). Its
  # wheel requires the full `tensorflow` package, which would sit beside tensorflow-cpu: install it
  # without dependencies, at the installed TensorFlow's version.
  if [[ "$extras" == *test* ]]; then
    tf_minor=$(.venv/bin/python -c 'import importlib.metadata as m; print(".".join(m.version("tensorflow-cpu").split(".")[:2]))')
    pip_install --no-deps "tensorflow-text==${tf_minor}.*"
    # vit-plan's tests compile for TPU slices without a TPU: libtpu of the installed jax (~700 MB,
    # not in any default install). It stays unused under JAX_PLATFORMS=cpu.
    jax_version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("jax"))')
    pip_install -c constraints.txt "jax[tpu]==${jax_version}"
    # ... and for NVIDIA GPUs without a GPU: JAX's CUDA plugin and the CUDA runtime (~490 MB), in a
    # folder of their own that only those tests put on PYTHONPATH (in .venv itself, every JAX program
    # here would look for a GPU).
    rm -rf .venv/jax-cuda-plugin
    pip_install -c constraints.txt --no-deps --target .venv/jax-cuda-plugin "jax-cuda12-plugin==${jax_version}" \
      "jax-cuda12-pjrt==${jax_version}" nvidia-cuda-runtime-cu12
  fi
  touch "$stamp"
fi
