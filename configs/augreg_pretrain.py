"""AugReg pre-training ("How to train your ViT?", Steiner et al. 2021):
--config=configs/augreg_pretrain.py:MODEL,DATASET,AUG

AUG is one of the paper's presets (docs/DESIGN.md "Paper recipes"): none, light1, light2, medium1,
medium2, strong1, strong2 = RandAugment(2 layers, magnitude m) + Mixup(alpha) as listed in
AUG_PRESETS. Regularisation "reg1" of the paper: dropout 0.1 and stochastic depth 0.1 (set
--config.model.transformer.dropout_rate / stochastic_depth to 0 for "reg0"). Optimiser (paper §3):
Adam(W) β1 0.9, β2 0.999, batch 4096, lr 1e-3, 10k warm-up steps then cosine decay, clip at
global norm 1, 300 epochs on ImageNet-1k (30 or 300 on ImageNet-21k, sigmoid loss), no
pre_logits layer, weight decay 0.1 decoupled (multiplied by lr: weight_decay_type='decoupled').
"""

import os

import ml_collections

from vit_jax import config_util
from vit_jax.errors import ConfigError

RECIPES = {'imagenet21k': 14_197_122, 'imagenet2012': 1_281_167}   # train images (as pretrain.py)

AUG_PRESETS = {  # name: (RandAugment layers, magnitude, Mixup alpha)
    'none': (0, 0, 0.0), 'light1': (2, 0, 0.0), 'light2': (2, 10, 0.2), 'medium1': (2, 15, 0.2),
    'medium2': (2, 15, 0.5), 'strong1': (2, 20, 0.5), 'strong2': (2, 20, 0.8)}


def get_config(arg: str = 'ViT-B_16,imagenet2012,medium2') -> ml_collections.ConfigDict:
    model, dataset, aug = (arg.split(',') + ['imagenet2012', 'medium2'][len(arg.split(',')) - 1:])[:3]
    if aug not in AUG_PRESETS:
        raise ConfigError(f'augmentation {aug!r} is unknown; expected one of {", ".join(AUG_PRESETS)}')
    pretrain = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pretrain.py')
    config = config_util.load_file(f'{pretrain}:{model},{dataset}')
    config.model.representation_size = None
    config.model.transformer.dropout_rate = 0.1
    config.model.transformer.stochastic_depth = 0.1
    config.optimizer = 'adam'
    config.base_lr = 1e-3
    config.decay_type = 'cosine'
    config.weight_decay = 0.1
    config.total_steps = 300 * RECIPES[dataset] // config.batch
    layers, magnitude, mixup = AUG_PRESETS[aug]
    config.aug.update(dict(randaugment_layers=layers, randaugment_magnitude=magnitude, mixup_alpha=mixup))
    return config
