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

USAGE = __doc__


def _define_flags(flag_values: flags.FlagValues, argv: list[str]) -> flags.FlagHolder:
    config = config_flags.DEFINE_config_file(
        'config', None, 'Config file, optionally with an argument: configs/finetune.py:ViT-B_16,cifar10. '
        'Override any field with --config.<field>=<value>.', flag_values=flag_values, lock_config=True,
        sys_argv=argv)
    flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the final model.',
                        flag_values=flag_values)
    return config


def _fail(message: str, code: int = 2) -> None:
    print(f'vit-train: error: {message}', file=sys.stderr, flush=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> dict:
    """Parses the command line, prints the resolved config and trains; returns the final metrics."""
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
        _fail(str(e).splitlines()[0])
    except (AttributeError, KeyError) as e:  # an override of a field the config does not have
        name = re.sub(r'["\'\\]', '', str(e))
        _fail(f'--config.{name}: the config has no field {name!r} (check the spelling in the config file)')
    except Exception as e:  # config files raising while loading  # noqa: BLE001
        _fail(f'--config: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r}')
    if config_holder.value is None:
        _fail('--config is required, e.g. --config=configs/digits.py')
    if not flag_values.workdir:
        _fail('--workdir is required, e.g. --workdir=workdirs/digits')
    config = config_holder.value
    try:
        config.keys()  # a config file that failed to load raises here
    except OSError as e:
        _fail(f'--config={flag_values["config"].config_filename}: {str(e).strip().splitlines()[-1].strip()}')
    workdir = os.path.expanduser(flag_values.workdir)

    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
    import jax

    from vit_jax import train  # after flag parsing: imports JAX
    if jax.process_index() == 0:
        print(f'Config {flag_values["config"].config_filename}:\n{config}', flush=True)
    try:
        return train.train_and_evaluate(config, workdir)
    except train.TrainingError as e:
        _fail(str(e), code=1)
    except (ValueError, KeyError, FileNotFoundError, PermissionError, NotADirectoryError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        _fail(str(message))


def run() -> None:
    """Console-script entry point."""
    main()


if __name__ == '__main__':
    run()
