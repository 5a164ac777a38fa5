"""Class names: the label lists shipped in vit_jax/data/ and label files (one name per line)."""

from __future__ import annotations

import importlib.resources

from vit_jax import paths
from vit_jax.errors import DataError

# Shipped lists (vit_jax/data/README.md has their provenance).
LABEL_SETS = {'imagenet2012': 'imagenet2012.txt', 'imagenet1k': 'imagenet2012.txt',
              'imagenet21k': 'imagenet21k.txt'}
# The shipped list that a head of this size means (1000: ImageNet-1k, 21843: ImageNet-21k).
_SET_BY_HEAD_SIZE = {1000: 'imagenet2012', 21843: 'imagenet21k'}


def load_labels(name_or_path: str) -> list[str]:
    """Class names, one per line (stripped, blank lines skipped): a shipped set or a text file."""
    if name_or_path in LABEL_SETS:
        text = (importlib.resources.files('vit_jax') / 'data' / LABEL_SETS[name_or_path]).read_text('utf-8')
    elif paths.is_file(name_or_path):
        text = paths.read_text(name_or_path)
    else:
        raise DataError(f'labels {name_or_path!r}: neither a file nor one of {", ".join(sorted(LABEL_SETS))}')
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f'{name_or_path}: no labels in the file (one per line)')
    return names


def default_labels(num_classes: int | None) -> list[str] | None:
    """The shipped list matching a head size (1000 -> ImageNet-1k, 21843 -> ImageNet-21k), else None."""
    name = _SET_BY_HEAD_SIZE.get(num_classes or 0)
    return load_labels(name) if name else None
