"""Pre-training from scratch, the paper's recipe (§4.1, App. B.1, Table 3): pretrain.py:MODEL,DATASET

Adam β1 0.9, β2 0.999, batch 4096, clip at global norm 1, 10k linear warm-up steps, a
representation (pre_logits) layer of the model's width in the head, 224 px. Per data set
(Table 3): ImageNet-21k 90 epochs, lr 1e-3, linear decay, weight decay 0.03, dropout 0.1;
ImageNet-1k 300 epochs, lr 3e-3, cosine decay, weight decay 0.3, dropout 0.1. The paper's
weight decay is Flax's Adam weight decay: p -= lr * wd * p, i.e. decoupled and multiplied by the
learning rate, which is weight_decay_type='decoupled' here. Steps = epochs * train images / 4096
(ImageNet-1k 1,281,167 train images; ImageNet-21k ~14.2M, which must be prepared in tfds_data_dir).
i21k is multi-label: the paper's sigmoid cross-entropy loss. The tfds splits are those of
vit_jax.configs.common.DATASET_PRESETS (i21k: big_vision's full[51200:] / full[:51200]); `num_train`
below only converts epochs to steps.
"""

import ml_collections

from vit_jax import models
from vit_jax.configs import common
from vit_jax.errors import ConfigError

RECIPES = {
    'imagenet21k': dict(epochs=90, num_train=14_197_122, base_lr=1e-3, decay_type='linear', weight_decay=0.03,
                        dropout=0.1, loss='sigmoid_xent'),
    'imagenet2012': dict(epochs=300, num_train=1_281_167, base_lr=3e-3, decay_type='cosine', weight_decay=0.3,
                         dropout=0.1, loss='softmax_xent'),
}


def get_config(arg: str = 'ViT-B_16,imagenet2012') -> ml_collections.ConfigDict:
    model, dataset = (arg.split(',') + ['imagenet2012'])[:2]
    if dataset not in RECIPES:
        raise ConfigError(f'no pre-training recipe for {dataset!r}; known: {", ".join(RECIPES)}')
    r = RECIPES[dataset]
    config = common.with_dataset(common.get_config(), dataset)
    config.pp.crop = 224
    config.pretrained_dir = None   # from scratch
    config.model = models.get_config(model, **{'transformer.dropout_rate': r['dropout']})
    config.model.representation_size = config.model.hidden_size
    config.optimizer = 'adam'
    config.optim_dtype = None
    config.batch = config.batch_eval = 4096
    config.accum_steps = 1
    config.total_steps = r['epochs'] * r['num_train'] // config.batch
    config.warmup_steps = 10_000
    config.base_lr = r['base_lr']
    config.decay_type = r['decay_type']
    config.weight_decay = r['weight_decay']
    config.weight_decay_type = 'decoupled'
    config.loss = r['loss']
    config.eval_every = 1_000
    config.checkpoint_every = 1_000
    return config
