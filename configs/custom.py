"""Fine-tuning on your own images: --config=configs/custom.py:MODEL,/path/to/folder

The folder is `root/<class>/<image>` (10 % held out for eval: pp.holdout) or
`root/train/<class>/...` with `root/test|val/<class>/...`, local or gs://; a CSV of
`path,label[,split]` rows works too (vit_jax.input_pipeline). The recipe is the paper's
fine-tuning one for small data sets (App. B.1.1: the Pets / Flowers setting): 500 steps, SGD
momentum 0.9, lr 0.01, cosine, clip 1, 384 px, batch 512 with accum_steps 8; lower --config.batch
(and accum_steps) on small machines.
"""

import os

import ml_collections

from vit_jax import config_util


def get_config(arg: str = 'ViT-B_16,images') -> ml_collections.ConfigDict:
    model, folder = (arg.split(',', 1) + ['images'])[:2]
    finetune = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'finetune.py')
    config = config_util.load_file(f'{finetune}:{model},oxford_iiit_pet')   # the 500-step recipe at 384 px
    config.dataset = folder
    config.pp.update(dict(train='train', test='test'))
    return config
