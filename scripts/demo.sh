#!/usr/bin/env bash
# The README's main job: installs vit_jax into .venv, trains a small ViT on scikit-learn's
# bundled handwritten digits (no download), evaluates it, saves a checkpoint and classifies images.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2
workdir="${WORKDIR:-workdirs/digits}"
.venv/bin/vit-train --config=configs/digits.py --workdir="$workdir" "$@"
