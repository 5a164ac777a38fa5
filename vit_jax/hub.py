"""The public ViT checkpoint catalogue: names -> URLs, AugReg selection, cached downloads.

Names (all resolve to files under gs://vit_models, fetched over https):
- `ViT-B_16` or `imagenet21k/ViT-B_16`: ImageNet-21k pre-training (with `pre_logits`, 21843 classes);
- `imagenet21k+imagenet2012/ViT-B_16`: the ImageNet fine-tunes (384 px; `ViT-B_16-224` at 224);
- AugReg ("How to train your ViT?"): a full filename such as
  `B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0` (optionally with `.npz` or an
  `augreg/` prefix), or a model key such as `augreg/B_16`, which picks the best checkpoint from
  the AugReg `index.csv` as the original code does (`B_16` alone works too).

`resolve(name_or_path)` returns a local path: existing files as they are, names and URLs
downloaded once into `$VIT_JAX_CACHE` (default ~/.cache/vit_jax) with a progress bar and
resume (HTTP Range).
"""

from __future__ import annotations

import csv
import http.client
import io
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from tqdm import tqdm

from vit_jax.models import MODEL_CONFIGS

GCS_BUCKET = 'gs://vit_models'
HTTPS_ROOT = 'https://storage.googleapis.com'
AUGREG_DIR = f'{GCS_BUCKET}/augreg'
AUGREG_INDEX = f'{AUGREG_DIR}/index.csv'

# What the original repository published (README "Available ViT models").
IMAGENET21K = ('ViT-B_16', 'ViT-B_32', 'ViT-L_16', 'ViT-L_32', 'ViT-H_14', 'R50+ViT-B_16')
IMAGENET21K_IMAGENET2012 = ('ViT-B_16', 'ViT-B_16-224', 'ViT-B_32', 'ViT-L_16', 'ViT-L_16-224',
                            'ViT-L_32', 'R50+ViT-B_16')

# AugReg model keys (the first '-'-separated part of AugReg filenames) -> MODEL_CONFIGS names,
# as the original `AUGREG_CONFIGS`.
AUGREG_MODELS = {
    name.replace('ViT-', '').replace('+', '_'): name for name in MODEL_CONFIGS
    if name not in ('testing', 'ViT-L_32', 'R50+ViT-B_16', 'ViT-H_14')}

# Columns of gs://vit_models/augreg/index.csv (see the original `get_augreg_df`).
AUGREG_COLUMNS = (
    'name', 'ds', 'epochs', 'lr', 'aug', 'wd', 'do', 'sd', 'best_val', 'final_val', 'final_test',
    'adapt_ds', 'adapt_lr', 'adapt_steps', 'adapt_resolution', 'adapt_final_val',
    'adapt_final_test', 'params', 'infer_samples_per_sec', 'filename', 'adapt_filename')


class DownloadError(OSError):
    """A download that failed; the message names the URL and how to use a local file."""


def catalogue() -> dict[str, str]:
    """All fixed catalogue names -> gs:// URLs (AugReg names are resolved via the index)."""
    names = {}
    for model in IMAGENET21K:
        names[model] = names[f'imagenet21k/{model}'] = f'{GCS_BUCKET}/imagenet21k/{model}.npz'
    for model in IMAGENET21K_IMAGENET2012:
        names[f'imagenet21k+imagenet2012/{model}'] = f'{GCS_BUCKET}/imagenet21k+imagenet2012/{model}.npz'
    return names


def https_url(url: str) -> str:
    """gs://bucket/path -> https://storage.googleapis.com/bucket/path (public objects)."""
    if url.startswith('gs://'):
        return f'{HTTPS_ROOT}/{url[len("gs://"):]}'
    return url


def cache_dir() -> str:
    """`$VIT_JAX_CACHE`, or ~/.cache/vit_jax."""
    return os.environ.get('VIT_JAX_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'vit_jax')


def cache_path(url: str, directory: str | None = None) -> str:
    """Where `url` is cached: <cache>/<host-less path>, e.g. .../vit_models/imagenet21k/ViT-B_16.npz."""
    url = https_url(url)
    rest = url.split('://', 1)[-1]
    rest = rest.split('/', 1)[-1] if url.startswith(HTTPS_ROOT) else rest
    parts = [p for p in rest.split('?', 1)[0].split('/') if p not in ('', '.', '..')]
    return os.path.join(directory or cache_dir(), *parts)


# --- AugReg index ----------------------------------------------------------------------------

def _number(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


def read_augreg_index(source: str | None = None) -> list[dict[str, Any]]:
    """Rows of the AugReg `index.csv` (local path, URL, or None for the cached public one).

    Numeric columns become floats. Raises ValueError if a required column is missing.
    """
    path = resolve(source or AUGREG_INDEX)
    with open(path, newline='') as f:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    required = {'name', 'ds', 'final_val', 'filename', 'adapt_ds', 'adapt_final_val', 'adapt_filename'}
    missing = required - set(rows[0] if rows else ())
    if missing:
        raise ValueError(f'{path}: not an AugReg index (missing columns {sorted(missing)})')
    return rows


def select_augreg(rows: Iterable[Mapping[str, Any]], model: str, *, ds: str = 'i21k',
                  adapt_ds: str | None = None, adapt_resolution: int | None = None) -> Mapping[str, Any]:
    """The best AugReg row for `model` (an AugReg key such as 'B_16' or 'R26_S_32').

    Without `adapt_ds` this is the original choice: the `ds` pre-training with the best final
    upstream validation accuracy (`final_val`). With `adapt_ds` (e.g. 'imagenet2012'), the
    fine-tune on it with the best `adapt_final_val` (optionally at `adapt_resolution`).
    """
    rows = [r for r in rows if str(r['filename']).split('-')[0] == model and r['ds'] == ds]
    key = 'final_val'
    if adapt_ds is not None:
        rows = [r for r in rows if r['adapt_ds'] == adapt_ds and (
            adapt_resolution is None or int(r['adapt_resolution']) == adapt_resolution)]
        key = 'adapt_final_val'
    if not rows:
        raise ValueError(f'no AugReg checkpoint for model={model!r} ds={ds!r} adapt_ds={adapt_ds!r} '
                         f'adapt_resolution={adapt_resolution!r}; known models: {", ".join(AUGREG_MODELS)}')
    return max(rows, key=lambda r: float(r[key]))


def augreg_url(filename: str) -> str:
    """gs:// URL of an AugReg checkpoint filename (with or without `.npz`)."""
    filename = filename[len('augreg/'):] if filename.startswith('augreg/') else filename
    return f'{AUGREG_DIR}/{filename if filename.endswith(".npz") else filename + ".npz"}'


def url_for(name: str, *, index: str | None = None) -> str | None:
    """The gs:// URL of a catalogue or AugReg name, or None if `name` is not one."""
    fixed = catalogue()
    if name in fixed:
        return fixed[name]
    bare = name[len('augreg/'):] if name.startswith('augreg/') else name
    key = bare.split('-')[0]
    if key in AUGREG_MODELS and '-' in bare:
        return augreg_url(bare)
    if key in AUGREG_MODELS:  # 'augreg/B_16' or 'B_16': the best AugReg pre-training.
        return augreg_url(str(select_augreg(read_augreg_index(index), key)['filename']))
    return None


# --- Downloads -------------------------------------------------------------------------------

def _offline_error(url: str, reason: Any) -> DownloadError:
    base = url.rsplit('/', 1)[-1] or 'checkpoint.npz'
    return DownloadError(f'could not download {url} ({reason}); if this machine is offline, fetch the '
                         f'file elsewhere and pass its local path instead (vit-train: '
                         f'--config.pretrained_path=/path/to/{base}; vit-predict/vit-convert: the path '
                         f'itself)')


def download(url: str, dst: str, *, progress: bool = True, timeout: float = 60.0,
             chunk_size: int = 1 << 20) -> str:
    """Downloads `url` to `dst`, resuming a partial `dst + '.part'` with an HTTP Range request.

    `dst` appears only once complete. Raises DownloadError naming the URL on any failure.
    """
    url = https_url(url)
    part = dst + '.part'
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={'Range': f'bytes={have}-'} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # The partial file is already complete.
            os.replace(part, dst)
            return dst
        raise _offline_error(url, f'HTTP {e.code} {e.reason}') from None
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, refused connections
        raise _offline_error(url, getattr(e, 'reason', e)) from None
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with response:
        if response.status != 206:  # The server ignored the Range: start again.
            have = 0
        length = response.headers.get('Content-Length')
        total = have + int(length) if length is not None else None
        try:
            with open(part, 'ab' if have else 'wb') as f, tqdm(
                    total=total, initial=have, unit='B', unit_scale=True, unit_divisor=1024,
                    desc=os.path.basename(dst), disable=not progress) as bar:
                while chunk := response.read(chunk_size):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise _offline_error(url, f'interrupted: {e}; run again to resume') from None
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise _offline_error(url, f'got {size} of {total} bytes; run again to resume')
    os.replace(part, dst)
    return dst


def resolve(name_or_path: str, *, index: str | None = None, directory: str | None = None,
            progress: bool = True) -> str:
    """A local path for a file, directory, URL or catalogue name (downloaded once, then cached).

    Remote paths other than the public bucket (e.g. gs://my-bucket/x.npz) are returned as they
    are: `vit_jax.io_util.read_bytes` reads them through tf.io.gfile / etils.epath.
    """
    name = os.fspath(name_or_path)
    local = os.path.expanduser(name)
    if os.path.exists(local):
        return local
    if name.startswith('gs://') and not name.startswith(GCS_BUCKET + '/'):
        return name
    url = name if name.split('://', 1)[0] in ('http', 'https', 'gs') else url_for(name, index=index)
    if url is None:
        raise FileNotFoundError(f'{name}: no such file, and not a known checkpoint name (e.g. ViT-B_16, '
                                'imagenet21k+imagenet2012/ViT-B_16, augreg/B_16, an AugReg filename, '
                                'or a URL)')
    dst = cache_path(url, directory)
    if not os.path.exists(dst):
        download(url, dst, progress=progress)
    return dst


def list_names() -> str:
    """A printable list of the catalogue (for --help texts)."""
    out = io.StringIO()
    for name, url in catalogue().items():
        if '/' in name:
            print(f'{name:40s} {https_url(url)}', file=out)
    print(f'augreg/<model> ({", ".join(AUGREG_MODELS)}) -> best in {https_url(AUGREG_INDEX)}', file=out)
    return out.getvalue()
