#!/usr/bin/env bash
# The README's main job: installs vit_jax into .venv, trains a small ViT on scikit-learn's
# bundled handwritten digits (no download), evaluates it, saves a checkpoint, then classifies
# held-out digit images (the most typical of each digit: scripts/digits_samples.py) with the saved model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh cpu
workdir="${WORKDIR:-workdirs/digits}"
.venv/bin/vit-train --config=configs/digits.py --workdir="$workdir" "$@"
echo
echo "Classifying held-out digits (the most typical of each) with the trained model ($workdir):"
.venv/bin/python scripts/digits_samples.py "$workdir/samples" 10
.venv/bin/vit-predict "$workdir/samples" --checkpoint "$workdir" --top-k 1
