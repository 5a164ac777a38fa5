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
  touch "$stamp"
fi
