"""Fine-tunes a Vision Transformer (the original's configs/vit.py): vit.py:MODEL,DATASET

    vit-train --workdir=/tmp/vit --config=configs/vit.py:b16,cifar10 \
        --config.pretrained_dir='gs://vit_models/imagenet21k'

MODEL is the suffix of a `vit_jax.configs.models.get_<MODEL>_config` function (ti16, s16, b16,
l16, h14, b8, s32, b32, l32, r_ti16, r50_b16, r26_b32, r26_s32, r50_l32, the *_gap_norep ones,
testing); DATASET a preset of `common.DATASET_PRESETS`. The weights are
`{pretrained_dir}/{model_name}.npz`, as the original (a local folder or a bucket; the public
gs://vit_models buckets are downloaded once, verified and cached).
"""

import ml_collections

from vit_jax.configs import common, models
from vit_jax.errors import ConfigError


def get_config(model_dataset: str) -> ml_collections.ConfigDict:
    """Returns default parameters for fine-tuning ViT `model` on `dataset`."""
    model, _, dataset = model_dataset.partition(',')
    get_model_config = getattr(models, f'get_{model}_config', None)
    if get_model_config is None or not dataset:
        known = sorted(n[4:-7] for n in dir(models) if n.startswith('get_') and n.endswith('_config'))
        raise ConfigError(f'vit.py:{model_dataset}: expected MODEL,DATASET with MODEL one of '
                          f'{", ".join(known)}')
    config = common.with_dataset(common.get_config(), dataset)
    config.model = get_model_config()
    # The original fine-tunes every model at 384 px: ViT-H/14 (h14) sees the top-left 378x378 of it.
    config.pp.partial_patches = True
    if model == 'b16' and dataset == 'cifar10':
        config.base_lr = 0.01
    return config
