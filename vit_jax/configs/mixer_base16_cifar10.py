"""Fine-tunes Mixer-B/16 on CIFAR-10 (the original's configs/mixer_base16_cifar10.py).

    vit-train --workdir=/tmp/mixer --config=configs/mixer_base16_cifar10.py \
        --config.pretrained_dir='gs://mixer_models/imagenet21k'
"""

import ml_collections

from vit_jax.configs import common, models


def get_config() -> ml_collections.ConfigDict:
    """Returns the config for training Mixer-B/16 on cifar10."""
    config = common.get_config()
    config.model_type = 'Mixer'
    config.model = models.get_mixer_b16_config()
    config.dataset = 'cifar10'
    config.total_steps = 10_000
    config.pp.update(dict(train='train[:98%]', test='test', crop=224))
    return config
