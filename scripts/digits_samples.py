"""Writes held-out digits (never seen in training) as PNG files, for the demo's vit-predict step.

    python scripts/digits_samples.py OUT_DIR [N]     # OUT_DIR/heldout_<k>_label_<digit>.png
"""

import os
import sys

from PIL import Image

from vit_jax.input_pipeline import digits_splits


def main(out_dir: str, n: int = 8) -> None:
    _, (images, labels), _ = digits_splits()
    os.makedirs(out_dir, exist_ok=True)
    for k in range(min(n, len(images))):
        Image.fromarray(images[k]).save(os.path.join(out_dir, f'heldout_{k}_label_{labels[k]}.png'))


if __name__ == '__main__':
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
