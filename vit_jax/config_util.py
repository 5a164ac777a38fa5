"""Reading fields of ml_collections configs, plain dicts or attribute objects alike."""

from __future__ import annotations

from typing import Any


def get(config: Any, key: str, default: Any = None) -> Any:
    """`config.a.b` for key 'a.b', or `default` where any part is missing or None."""
    node = config
    for part in key.split('.'):
        if node is None:
            return default
        if isinstance(node, dict) or hasattr(node, 'keys'):
            node = node[part] if part in node else None
        else:
            node = getattr(node, part, None)
    return default if node is None else node
