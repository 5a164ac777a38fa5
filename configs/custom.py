"""Fine-tuning on your own images: --config=configs/custom.py:MODEL,/path/to/folder

The folder is `root/<class>/<image>` (10 % held out for eval) or `root/train/<class>/...` with
`root/test|val/<class>/...`; a CSV of `path,label[,split]` rows works too (vit_jax.input_pipeline).
The recipe is the paper's fine-tuning one for small data sets (App. B.1.1: the Pets / Flowers
setting): 500 steps, SGD momentum 0.9, lr 0.01, cosine, clip 1, 384 px, batch 512 with
accum_steps 8; lower --config.batch (and accum_steps) on small machines.
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from configs import common  # noqa: E402


def get_config(arg: str = 'ViT-B_16,images') -> ml_collections.ConfigDict:
    model, folder = (arg.split(',', 1) + ['images'])[:2]
    config = common.get_config()
    config.dataset = folder
    config.pp = ml_collections.ConfigDict(dict(crop=384))
    config.model = common.model_config(model)
    config.pretrained_path = model
    common.fit_crop(config, model)
    config.total_steps = 500
    config.warmup_steps = 50
    config.base_lr = 0.01
    return config
