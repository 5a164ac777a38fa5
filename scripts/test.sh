#!/usr/bin/env bash
# Installs vit_jax with its test extras into .venv and runs the test suite (CPU, offline).
#   bash scripts/test.sh              # everything (what CI runs)
#   bash scripts/test.sh --fast       # the edit-test loop: without the tests marked `slow`
#   bash scripts/test.sh [--fast] tests/test_models.py -k attention   # pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
tier=()
if [ "${1:-}" = "--fast" ]; then tier=(-m "not slow"); shift; fi
bash scripts/setup_env.sh cpu,test,torch
export JAX_PLATFORMS=cpu
.venv/bin/python -m ruff check vit_jax tests configs bench scripts
# --dist worksteal: an idle process takes tests from the busy one (the slow ones cluster in a few files)
.venv/bin/python -m pytest -n 2 --dist worksteal -q --durations=30 "${tier[@]}" "$@"
