"""Every console script, run as a user runs it, prints only vit_jax's own lines on stderr: no
TensorFlow, absl, oneDNN or Orbax banners, on any CPU (TF_ENABLE_ONEDNN_OPTS=1 turns oneDNN on
here as TensorFlow does by itself on Intel CPUs with AVX-512), for --help, a user error, and a run
that decodes images with TensorFlow."""

import concurrent.futures
import importlib
import importlib.metadata
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vit_jax import checkpoint
from vit_jax.models import get_model

BIN = os.path.dirname(sys.executable)
MISSING = '/nonexistent/model.npz'
NOT_FOUND = (f'{MISSING}: no such file, and not a known checkpoint name (e.g. ViT-B_16, '
             'imagenet21k+imagenet2012/ViT-B_16, sam/ViT-B_16, Mixer-B_16, augreg/B_16, LiT-B16B, an AugReg '
             'filename, or a URL)')
# Per console script: arguments with a user error, and the one line it must print.
USER_ERRORS = {
    'vit-train': (['--config=configs/digits.py', '--workdir=WORKDIR', '--config.total_steps=-1'],
                  'config.total_steps=-1 must be >= 1'),
    'vit-predict': (['IMAGE', '--checkpoint', MISSING], NOT_FOUND),
    'vit-convert': ([MISSING, 'OUT.npz'], NOT_FOUND),
    'vit-analyze': (['--checkpoint', MISSING, '--output-dir', 'OUT'], NOT_FOUND),
    'vit-fewshot': (['--checkpoint', MISSING, '--dataset', 'digits'], NOT_FOUND),
    'vit-export': (['--checkpoint', MISSING, '--output', 'OUT.zip'], NOT_FOUND),
    'vit-zeroshot': (['--checkpoint', MISSING, '--labels', 'LABELS', 'IMAGE'], NOT_FOUND),
    'vit-plan': (['--config=configs/digits.py'],
                 '--topology is required, e.g. --topology=v5e:4x4 (vit-plan --list-topologies)'),
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _console_scripts() -> list[str]:
    return sorted(ep.name for ep in importlib.metadata.distribution('vit_jax').entry_points
                  if ep.group == 'console_scripts')


def _env(onednn: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(('TF_', 'XLA_'))}
    return dict(env, TF_ENABLE_ONEDNN_OPTS=onednn, JAX_PLATFORMS='cpu')


def _run_all(commands: list[list[str]], onednn: str = '1', cwd: str = ROOT) -> list:
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda c: subprocess.run(c, capture_output=True, text=True, env=_env(onednn),
                                                      cwd=cwd, timeout=300), commands))


def test_every_console_script_is_quiet_for_help_and_user_errors(tmp_path):
    scripts = _console_scripts()
    assert sorted(USER_ERRORS) == scripts     # a new command gets its user error here
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'image.png')
    (tmp_path / 'labels.txt').write_text('a\nb\n')
    subst = {'--workdir=WORKDIR': f'--workdir={tmp_path / "wd"}', 'IMAGE': str(tmp_path / 'image.png'),
             'OUT': str(tmp_path / 'out'), 'OUT.npz': str(tmp_path / 'out.npz'),
             'OUT.zip': str(tmp_path / 'out.zip'), 'LABELS': str(tmp_path / 'labels.txt')}
    helps = [[os.path.join(BIN, s), '--help'] for s in scripts]
    errors = [[os.path.join(BIN, s), *(subst.get(a, a) for a in USER_ERRORS[s][0])] for s in scripts]
    results = _run_all(helps + errors)
    for script, proc in zip(scripts, results[:len(scripts)], strict=True):
        assert (proc.returncode, proc.stderr) == (0, ''), f'{script} --help: {proc.stderr[-2000:]}'
        assert script in proc.stdout.splitlines()[0], proc.stdout[:200]   # named as the user calls it
    for script, proc in zip(scripts, results[len(scripts):], strict=True):
        assert proc.returncode == 2, f'{script}: {proc.stderr[-2000:]}'
        assert proc.stderr.splitlines() == [f'{script}: error: {USER_ERRORS[script][1]}'], proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize('onednn', ['0', '1'])
def test_decoding_with_tensorflow_prints_only_the_skipped_file(tmp_path, onednn):
    model = get_model('testing', num_classes=3)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
    checkpoint.save(params, tmp_path / 'tiny.npz')
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(tmp_path / 'good.png')
    (tmp_path / 'bad.png').write_bytes(b'\x89PNG\r\n\x1a\n not a PNG after all')
    good, bad = str(tmp_path / 'good.png'), str(tmp_path / 'bad.png')
    command = [os.path.join(BIN, 'vit-predict'), good, bad, '--checkpoint', str(tmp_path / 'tiny.npz'),
               '--image-size', '32']
    (proc,) = _run_all([command], onednn)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0] == good
    assert proc.stderr.splitlines() == [f'skipped {bad}: unreadable image (not an image of a supported '
                                        'format (.jpg, .jpeg, .png, .gif, .bmp, .webp, .tif, .tiff, .ppm))']


def test_without_tensorflow_every_command_starts_and_reading_an_image_says_what_to_install(tmp_path):
    """Colab and GPU hosts bring their own TensorFlow; the base install has none (it is an extra)."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'image.png')
    code = '\n'.join([
        'import sys',
        "sys.modules['tensorflow'] = None   # as if not installed",
        'import vit_jax.main, vit_jax.predict, vit_jax.analysis, vit_jax.convert, vit_jax.export',
        'import vit_jax.fewshot, vit_jax.zeroshot',
        'from vit_jax import errors, preprocessing',
        'try:',
        "    preprocessing.load_image('image.png', preprocessing.for_inference(16))",
        'except errors.UserError as e:',
        '    print(e)'])
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=_env('1'),
                          timeout=120, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, ''), proc.stderr[-2000:]
    assert proc.stdout.strip() == ("TensorFlow is not installed; vit_jax reads images and data sets with it: "
                                   "pip install 'vit_jax[cpu]' (or [cuda12], [cuda13], [tpu]; on Colab it is "
                                   "there already)")


@pytest.mark.parametrize('module', ['analysis', 'convert', 'export', 'fewshot', 'predict', 'zeroshot'])
def test_every_option_has_help_and_none_is_abbreviated(module):
    """`--image` is not silently `--image-size`; every flag says what it does (and its default)."""
    parser = importlib.import_module(f'vit_jax.{module}')._parser()
    assert parser.allow_abbrev is False
    for action in parser._actions:
        assert action.help, f'vit_jax.{module}: {action.option_strings or action.dest} has no help'
    if module == 'predict':   # before: --image taken as --image-size, "invalid int value: 'y.png'"
        with pytest.raises(SystemExit):
            parser.parse_args(['--checkpoint', 'x.npz', '--image', 'y.png'])
        assert parser.parse_args(['--checkpoint', 'x.npz', '--image-size', '32', 'y.png']).image_size == 32


def test_bad_numbers_and_non_utf8_text_files_are_one_line_errors(tmp_path):
    """Counts and sizes are checked where they are parsed (`--text-heads 0` was a ZeroDivisionError,
    `--image-size -1` reported as pp.crop); a label file saved as UTF-16 (Notepad) is read."""
    from vit_jax import cli, labels, paths
    from vit_jax.errors import DataError

    parser = cli.argument_parser('vit-test', 'test')
    parser.add_argument('--n', type=cli.positive_int)
    for bad in ('0', '-1', 'x'):
        with pytest.raises(SystemExit):
            parser.parse_args(['--n', bad])
    assert parser.parse_args(['--n', '3']).n == 3
    (tmp_path / 'utf16.txt').write_text('chat\nchien\n', encoding='utf-16')
    (tmp_path / 'bom.txt').write_text('chat\nchien\n', encoding='utf-8-sig')
    for name in ('utf16.txt', 'bom.txt'):
        assert labels.load_labels(str(tmp_path / name)) == ['chat', 'chien']
    (tmp_path / 'latin1.txt').write_bytes('café\n'.encode('latin-1'))
    with pytest.raises(DataError, match=r'latin1.txt: not UTF-8 text \(byte 3\); save it as UTF-8'):
        paths.read_text(tmp_path / 'latin1.txt')
