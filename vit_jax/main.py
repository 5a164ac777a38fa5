"""`vit-train` / `python -m vit_jax.main`: train and evaluate a ViT from an ml_collections config.

  vit-train --config=configs/digits.py --workdir=workdirs/digits
  vit-train --config=configs/vit.py:b16,cifar10 --config.batch=64 --workdir=gs://bucket/run

The config file's `get_config(arg)` is completed with every field's default and every model
field (`vit_jax.resolve`), then `--config.<field>=<value>` overrides apply, then the values are
checked; the resolved config is printed before training. Re-running the same command resumes
from the workdir's newest intact checkpoint. Multi-host: run the same command on every host
(TPU pods and SLURM are detected; elsewhere add `--config.distributed.coordinator_address=host0:1234
--config.distributed.num_processes=N --config.distributed.process_id=i`).

Exit codes: 0 done, 1 training failed (e.g. a non-finite loss), 2 bad input (one line naming
the culprit), 75 preempted by SIGTERM after saving a checkpoint (run again to resume).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys

import jax
import yaml
from absl import flags
from ml_collections import config_flags

from vit_jax import cli, config_util, inference_time, resolve, train
from vit_jax.errors import ConfigError, TrainingError

USAGE = __doc__


def _check_override(config: object, key: str) -> None:
    """ConfigError naming `--config.<key>` (and the closest field) when the config has no such field."""
    node = config
    for i, part in enumerate(key.split('.')):
        fields = list(node.keys()) if hasattr(node, 'keys') else []
        if part not in fields:
            close = difflib.get_close_matches(part, fields, n=1)
            hint = f'; did you mean {".".join(key.split(".")[:i] + close)!r}?' if close else ''
            raise ConfigError(f'--config.{key}: the config has no field {key!r}{hint} (`vit-train` prints '
                              'every field; vit_jax/configs/common.py documents them)')
        node = node[part]


def parse(argv: list[str], require_workdir: bool = True) -> tuple[object, str | None]:
    """(resolved config, workdir) from a vit-train command line; ConfigError on bad input.

    `require_workdir=False` (vit-plan, which writes nothing): the workdir may be absent (None)."""
    spec = workdir = None
    rest = [argv[0]]
    args = list(argv[1:])
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition('=')
        if name in ('--config', '-config', '--workdir', '-workdir') and not eq:
            if not args:
                raise ConfigError(f'{name} needs a value')
            value = args.pop(0)
        if name in ('--config', '-config'):
            spec = value
        elif name in ('--workdir', '-workdir'):
            workdir = value
        elif arg.startswith(('--config.', '-config.')):
            # `--config.x VALUE` as absl takes it; a lone `--config.flag` (a boolean) stays as it is
            if not eq and args and not re.match(r'-(?!\d)', args[0]):
                arg = f'{arg}={args.pop(0)}'
            rest.append(arg)
        else:
            raise ConfigError(f'unknown argument {arg!r} (expected --config=FILE[:ARG], --workdir=DIR and '
                              '--config.<field>=<value> overrides)')
    if not spec:
        raise ConfigError('--config is required, e.g. --config=configs/digits.py')
    if not workdir and require_workdir:
        raise ConfigError('--workdir is required, e.g. --workdir=workdirs/digits')
    config = resolve.complete(config_util.load_file(spec))
    for arg in rest[1:]:
        _check_override(config, arg.lstrip('-').partition('=')[0].removeprefix('config.'))
    flag_values = flags.FlagValues()
    try:
        holder = config_flags.DEFINE_config_dict('config', config, flag_values=flag_values, lock_config=True,
                                                 sys_argv=rest)
        flag_values(rest)
    except flags.Error as e:   # absl may end its message with a tuple's repr: ('reason', 'value')
        text = re.sub(r": \('([^']*)', '[^']*'\)$", r': \1', str(e).splitlines()[0])
        raise ConfigError(text + (' (expected true or false)' if 'boolean' in text else '')) from None
    except (AttributeError, KeyError) as e:  # an override of a field the config does not have
        name = str(e.args[0] if e.args else e).strip('\'"')
        raise ConfigError(f'--config.{name}: the config has no such field (every field is listed in '
                          'vit_jax/configs/common.py and `vit-train` prints them)') from None
    if workdir and '://' not in workdir:
        workdir = os.path.expanduser(workdir)
    return resolve.validate(holder.value), workdir


class _ConfigDumper(yaml.SafeDumper):
    """The printed config: plain YAML as config.json holds it (no `!!python/tuple` tags), lists inline."""


_ConfigDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence('tag:yaml.org,2002:seq', value, flow_style=True))


def main(argv: list[str] | None = None) -> dict:
    """Parses the command line, prints the resolved config and trains; returns the final metrics."""
    argv = list(sys.argv if argv is None else argv)
    if any(a in ('-h', '--help', '-help', '--helpfull') for a in argv[1:]):
        print(USAGE + '\nFlags:\n'
              '  --config=PATH[:ARG]   experiment config (configs/*.py); --config.<field>=<value> overrides\n'
              '  --workdir=DIR         local path or gs://bucket/dir: config.json, checkpoints, '
              'metrics.jsonl, TensorBoard, model.npz')
        sys.exit(0)
    # Before the config file runs: a root-level logging call there (a library's) would configure
    # logging first, with its default format.
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
    config, workdir = parse(argv)
    if jax.process_index() == 0:
        text = yaml.dump(config_util.to_dict(config), Dumper=_ConfigDumper, sort_keys=True)
        print(f'Config:\n{text}', flush=True)
    if config.trainer == 'inference_time':
        return inference_time.inference_time(config, workdir)
    return train.train_and_evaluate(config, workdir)


def _main_exit_code(argv: list[str] | None) -> int:
    """`main`; a run that failed (non-finite loss, ...) is one line and exit code 1."""
    try:
        result = main(argv)
    except TrainingError as e:
        print(f'vit-train: error: {cli.error_message(e)}', file=sys.stderr, flush=True)
        return cli.EXIT_FAILED
    return cli.EXIT_PREEMPTED if result.get('preempted') else 0


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point: exit 0 done, 1 failed, 2 bad input, 75 preempted."""
    sys.exit(cli.run_cli('vit-train', lambda: _main_exit_code(argv), background_threads=True))


if __name__ == '__main__':
    run()
