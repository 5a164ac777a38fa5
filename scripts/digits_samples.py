"""Writes held-out digits (never seen in training) as PNG files, for the demo's vit-predict step:
for each of the digits 0, 1, 2, ... (N of them), its most typical held-out image, the one nearest
(in pixels) to the mean of that digit's training images. The choice does not depend on any model;
typical images keep the demo's predictions the same on every CPU (a borderline digit can flip with
the last bits of XLA's arithmetic, which differ by instruction set). The held-out accuracy that
vit-train prints covers every held-out image.

    python scripts/digits_samples.py OUT_DIR [N]     # OUT_DIR/digit_<digit>_heldout_<index>.png
"""

import os
import sys

import numpy as np
from PIL import Image

from vit_jax.configs.common import DATASET_PRESETS
from vit_jax.input_pipeline import digits_splits


def main(out_dir: str, n: int = 10) -> None:
    (train_x, train_y), (images, labels), _ = digits_splits(DATASET_PRESETS['digits'].pp.holdout)
    os.makedirs(out_dir, exist_ok=True)
    for k in range(min(n, 10)):
        mean = train_x[train_y == k].astype(np.float64).mean(axis=0)
        candidates = np.flatnonzero(labels == k)
        distances = ((images[candidates].astype(np.float64) - mean) ** 2).sum(axis=(1, 2))
        i = int(candidates[np.argmin(distances)])
        Image.fromarray(images[i]).save(os.path.join(out_dir, f'digit_{k}_heldout_{i:03d}.png'))


if __name__ == '__main__':
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
