#!/usr/bin/env bash
# Installs vit_jax with its test extras into .venv and runs the test suite (CPU, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh cpu,test,torch
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/python -m ruff check vit_jax tests configs bench scripts
.venv/bin/python -m pytest -n 2 --dist loadfile -q --durations=30 "$@"   # the slowest, to keep the suite fast
