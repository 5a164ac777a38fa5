#!/usr/bin/env bash
# Creates .venv (if missing) and installs vit_jax with the given extras into it.
# Sourced by scripts/demo.sh and scripts/test.sh; needs only python3.11 + pip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: the CPU build; a plain `torch` would pull CUDA packages.
  if [[ "$extras" == *torch* ]]; then .venv/bin/python -m pip install -q torch==2.13.0; fi
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  # The tests check vit_jax.preprocess against the original's tokenizers (tensorflow_text). Its
  # wheel requires the full `tensorflow` package, which would sit beside tensorflow-cpu: install it
  # without dependencies, at the installed TensorFlow's version.
  if [[ "$extras" == *test* ]]; then
    tf_minor=$(.venv/bin/python -c 'import importlib.metadata as m; print(".".join(m.version("tensorflow-cpu").split(".")[:2]))')
    .venv/bin/python -m pip install -q --no-deps "tensorflow-text==${tf_minor}.*"
  fi
  touch "$stamp"
fi
