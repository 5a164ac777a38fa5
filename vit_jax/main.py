"""`vit-train` / `python -m vit_jax.main`: train and evaluate a ViT from an ml_collections config.

  vit-train --config=configs/digits.py --workdir=workdirs/digits
  vit-train --config=configs/finetune.py:ViT-B_16,cifar10 --config.batch=64 --workdir=workdirs/c10

Re-running the same command resumes from the workdir's latest checkpoint. Multi-host: run the
same command on every host (TPU pods and SLURM are detected; elsewhere add
`--config.distributed.coordinator_address=host0:1234 --config.distributed.num_processes=N
--config.distributed.process_id=i`).
"""

from __future__ import annotations

import logging
import os
import re
import sys

from absl import flags
from ml_collections import config_flags

from vit_jax import cli

USAGE = __doc__


def _define_flags(flag_values: flags.FlagValues, argv: list[str]) -> flags.FlagHolder:
    config = config_flags.DEFINE_config_file(
        'config', None, 'Config file, optionally with an argument: configs/finetune.py:ViT-B_16,cifar10. '
        'Override any field with --config.<field>=<value>.', flag_values=flag_values, lock_config=True,
        sys_argv=argv)
    flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the final model.',
                        flag_values=flag_values)
    return config


def main(argv: list[str] | None = None) -> dict:
    """Parses the command line, prints the resolved config and trains; returns the final metrics.

    Bad input raises ValueError / KeyError / OSError (a missing file, an unknown config field, a
    failed download); a run that cannot go on raises `train.TrainingError`.
    """
    argv = list(sys.argv if argv is None else argv)
    if any(a in ('-h', '--help', '-help', '--helpfull') for a in argv[1:]):
        print(USAGE + '\nFlags:\n'
              '  --config=PATH[:ARG]   experiment config (configs/*.py); --config.<field>=<value> overrides\n'
              '  --workdir=DIR         config.json, checkpoints/, metrics.jsonl, TensorBoard, model.npz')
        sys.exit(0)
    flag_values = flags.FlagValues()
    config_holder = _define_flags(flag_values, argv)
    try:
        flag_values(argv)
    except flags.Error as e:
        raise ValueError(str(e).splitlines()[0]) from None
    except (AttributeError, KeyError) as e:  # an override of a field the config does not have
        name = re.sub(r'["\'\\]', '', str(e))
        raise ValueError(f'--config.{name}: the config has no field {name!r} (check the spelling in the '
                         'config file)') from None
    except Exception as e:  # config files raising while loading  # noqa: BLE001
        first_line = str(e).splitlines()[0] if str(e) else repr(e)
        raise ValueError(f'--config: {type(e).__name__}: {first_line}') from None
    if config_holder.value is None:
        raise ValueError('--config is required, e.g. --config=configs/digits.py')
    if not flag_values.workdir:
        raise ValueError('--workdir is required, e.g. --workdir=workdirs/digits')
    config = config_holder.value
    config_file = flag_values['config'].config_filename
    try:
        config.keys()  # a config file that failed to load raises here
    except OSError as e:
        raise ValueError(f'--config={config_file}: {str(e).strip().splitlines()[-1].strip()}') from None
    workdir = os.path.expanduser(flag_values.workdir)

    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
    import jax

    from vit_jax import train  # after flag parsing: imports JAX
    if jax.process_index() == 0:
        print(f'Config {config_file}:\n{config}', flush=True)
    return train.train_and_evaluate(config, workdir)


def _main_exit_code(argv: list[str] | None) -> int:
    """`main`; a run that failed (non-finite loss, ...) is one line and exit code 1."""
    try:
        main(argv)
    except RuntimeError as e:
        from vit_jax import train
        if not isinstance(e, train.TrainingError):
            raise
        print(f'vit-train: error: {cli.error_message(e)}', file=sys.stderr, flush=True)
        return 1
    return 0


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point: exit 0 done, 1 training failed, 2 bad input (one line each)."""
    sys.exit(cli.run_cli('vit-train', lambda: _main_exit_code(argv)))


if __name__ == '__main__':
    run()
