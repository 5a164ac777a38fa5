"""Writes held-out digits (never seen in training) as PNG files, for the demo's vit-predict step:
the first held-out image of each of the digits 0, 1, 2, ... (N of them).

    python scripts/digits_samples.py OUT_DIR [N]     # OUT_DIR/digit_<digit>_heldout_<index>.png
"""

import os
import sys

import numpy as np
from PIL import Image

from vit_jax.configs.common import DATASET_PRESETS
from vit_jax.input_pipeline import digits_splits


def main(out_dir: str, n: int = 8) -> None:
    _, (images, labels), _ = digits_splits(DATASET_PRESETS['digits'].pp.holdout)
    os.makedirs(out_dir, exist_ok=True)
    for k in range(min(n, 10)):
        i = int(np.flatnonzero(labels == k)[0])
        Image.fromarray(images[i]).save(os.path.join(out_dir, f'digit_{labels[i]}_heldout_{i:03d}.png'))


if __name__ == '__main__':
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
