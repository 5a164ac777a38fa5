#!/usr/bin/env bash
# Checks vit_jax's LiT against the ORIGINAL code: google-research/vision_transformer's models_lit.py
# with flaxformer's BertEncoder. Tiny LiT models (a TextTransformer and a BERT-base text tower) are
# initialised and run by the original code; their parameters, saved in the public flat .npz layout,
# are read by vit_jax's loader and run by vit_jax.models.LitModel; the embeddings are compared.
#
#   bash scripts/original_lit/run.sh [VISION_TRANSFORMER_CHECKOUT] [FLAXFORMER_CHECKOUT]
#
# Needs network once (git clones; chex, aqtp and pandas, which the original code imports, go into a
# temporary directory, not into .venv). Not part of the offline test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
vt=${1:-$work/vision_transformer}
ff=${2:-$work/flaxformer}
[ -d "$vt" ] || git clone -q --depth 1 https://github.com/google-research/vision_transformer "$vt"
[ -d "$ff" ] || git clone -q --depth 1 https://github.com/google/flaxformer "$ff"
.venv/bin/python -m pip install -q --target "$work/deps" --no-deps chex toolz aqtp pandas
mkdir -p "$work/out"
# The original's vit_jax must shadow this package in the first process only.
PYTHONPATH="$vt:$ff:$work/deps" .venv/bin/python -P scripts/original_lit/run_original.py "$work/out"
.venv/bin/python -P scripts/original_lit/compare.py "$work/out"
