#!/usr/bin/env bash
# The README's pictures: what `vit-analyze` draws for the demo model (scripts/demo.sh's digits ViT).
# Trains the demo into workdirs/digits first if it is not there, then writes docs/*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh cpu
export TF_CPP_MIN_LOG_LEVEL=2
workdir="${WORKDIR:-workdirs/digits}"
if [ ! -f "$workdir/model.npz" ]; then
  .venv/bin/vit-train --config=configs/digits.py --workdir="$workdir" --config.progress_bar=False
fi
.venv/bin/python scripts/digits_samples.py "$workdir/samples" 10
out="$(mktemp -d)"
.venv/bin/vit-analyze --checkpoint "$workdir" --image "$(ls "$workdir"/samples/digit_3_heldout_*.png | head -1)" \
  --output-dir "$out"
mkdir -p docs
for figure in attention_rollout mean_attention_distance position_embedding_similarity; do
  cp "$out/$figure.png" "docs/digits_$figure.png"
done
rm -rf "$out"
echo "wrote docs/digits_{attention_rollout,mean_attention_distance,position_embedding_similarity}.png"
