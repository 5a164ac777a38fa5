"""The default experiment config (every field vit-train reads), as the original's configs/common.py.

Defined in the package (`vit_jax.configs.common`) so that experiment files import it without
path tricks; this file makes it usable as `--config=configs/common.py` too.
"""

from vit_jax.configs.common import DATASET_PRESETS, flatten, get_config, with_dataset

__all__ = ['DATASET_PRESETS', 'flatten', 'get_config', 'with_dataset']
