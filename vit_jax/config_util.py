"""Reading configs: the one field accessor, config files given by path, and their JSON form.

Configs are ml_collections ConfigDicts or the plain dicts they become in a workdir's
config.json. The code reads fields that the config has (`vit_jax.configs.common` defines every
one); a missing field is a ConfigError naming it, never a silent default.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections

from vit_jax.errors import ConfigError


def get(config: Any, key: str) -> Any:
    """The value of the field `key` ('pp.crop'); ConfigError if the config has no such field."""
    node = config
    parts = key.split('.')
    for i, part in enumerate(parts):
        if not (isinstance(node, Mapping) or hasattr(node, 'keys')) or part not in node:
            where = '.'.join(parts[:i]) or 'the config'
            raise ConfigError(f'config field {key!r} is missing ({where} has no {part!r}); every field is '
                              'defined in vit_jax/configs/common.py')
        node = node[part]
    return node


def load_file(spec: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file given as 'path.py' or 'path.py:arg' (as ml_collections).

    Errors (a missing file, an exception in the file, a result that is not a ConfigDict) are
    one-line ConfigErrors naming the file.
    """
    path, sep, arg = spec.partition(':')
    if not os.path.isfile(path):
        raise ConfigError(f'--config={spec}: no such config file {path!r}')
    name = f'vit_jax_config_{abs(hash(os.path.abspath(path)))}'
    try:
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in the user's file is reported as bad input
        raise ConfigError(f'--config={spec}: {path} raised {type(e).__name__}: {_first_line(e)}') from None
    if not hasattr(module, 'get_config'):
        raise ConfigError(f'--config={spec}: {path} has no get_config() function')
    try:
        config = module.get_config(arg) if sep else module.get_config()
    except ConfigError as e:
        raise ConfigError(f'--config={spec}: {e}') from None
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f'--config={spec}: get_config({arg!r}) raised {type(e).__name__}: '
                          f'{_first_line(e)}') from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f'--config={spec}: get_config() returned {type(config).__name__}, not an '
                          'ml_collections.ConfigDict')
    return config


def _first_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return text.strip().splitlines()[0] if text.strip() else repr(e)


def to_dict(config: Any) -> dict:
    """A config as plain JSON-compatible dicts (dtypes and other objects as their names)."""
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))
