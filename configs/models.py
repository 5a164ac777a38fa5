"""The original's model configs by name (`vit_jax.configs.models`): MODEL_CONFIGS, AUGREG_CONFIGS and
the `get_*_config()` functions, re-exported beside the experiment files as in the original."""

from vit_jax.configs.models import *  # noqa: F403
from vit_jax.configs.models import AUGREG_CONFIGS, MODEL_CONFIGS  # noqa: F401
