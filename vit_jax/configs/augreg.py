"""Fine-tunes a ViT / hybrid from an AugReg checkpoint (the original's configs/augreg.py).

    vit-train --workdir=/tmp/vit --config=configs/augreg.py:R_Ti_16 \
        --config.dataset=oxford_iiit_pet --config.pp.train='train[:90%]' --config.base_lr=0.01

A model key (`R_Ti_16`, `B_16`, ...: the first part of AugReg filenames) picks the best i21k
pre-training by upstream validation accuracy from `{pretrained_dir}/index.csv`, as the original;
a full filename (without `.npz`, e.g.
`R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0`) picks that file. The name is
checked against the AugReg filename grammar when the config is resolved, before any download.
"""

import ml_collections

from vit_jax.configs import common, models
from vit_jax.errors import ConfigError


def get_config(model_or_filename: str) -> ml_collections.ConfigDict:
    """Returns default parameters for fine-tuning an AugReg checkpoint."""
    config = common.get_config()
    config.pretrained_dir = 'gs://vit_models/augreg'
    config.model_or_filename = model_or_filename
    model = model_or_filename.split('-')[0]
    if model not in models.AUGREG_CONFIGS or '-' in model:
        known = sorted(k for k in models.AUGREG_CONFIGS if '-' not in k)
        raise ConfigError(f'unknown AugReg model {model!r} (the part before the first "-"); '
                          f'known: {", ".join(known)}')
    config.model = models.AUGREG_CONFIGS[model].copy_and_resolve_references()
    config.model.transformer.dropout_rate = 0  # No AugReg during fine-tuning.
    # These values are often overridden on the command line.
    config.base_lr = 0.03
    config.total_steps = 500
    config.warmup_steps = 100
    config.pp.update(dict(train='train', test='test', resize=448, crop=384))
    # This value MUST be overridden on the command line.
    config.dataset = ''
    return config
