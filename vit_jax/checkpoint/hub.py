"""The public ViT checkpoint catalogue: names -> URLs, AugReg selection, verified cached downloads.

Names (every public file the original's README and notebooks list, fetched over https):
- `ViT-B_16` or `imagenet21k/ViT-B_16`: ImageNet-21k pre-training (with `pre_logits`, 21843 classes);
- `imagenet21k+imagenet2012/ViT-B_16`: the ImageNet fine-tunes (384 px; `ViT-B_16-224` at 224);
- `sam/ViT-B_16`: ImageNet-1k with SAM;
- `LiT-B16B` or `lit/LiT-B16B` (and B16B_2, L16L, L16S, L16Ti): the LiT image-text models, with
  their vocabularies `lit/LiT-B16B.txt` (BERT WordPiece) or `lit/LiT-L16S.model` (SentencePiece);
- `Mixer-B_16` or `mixer_models/imagenet21k/Mixer-B_16`, `mixer_models/imagenet1k/...`,
  `mixer_models/sam/...`, `mixer_models/gsam/...`: the MLP-Mixer files of gs://mixer_models;
- AugReg ("How to train your ViT?"): a full filename such as
  `B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0` (optionally with `.npz` or an
  `augreg/` prefix; checked against the AugReg filename grammar before any download), or a model
  key such as `augreg/B_16`, which picks the best checkpoint from the AugReg `index.csv` as the
  original code does (`B_16` alone works too).

`resolve(name_or_path)` returns a path: an existing file as it is, a gs:// URL outside the public
bucket unchanged (it is read through `vit_jax.paths`), and names and public URLs downloaded once
into `$VIT_JAX_CACHE` (default ~/.cache/vit_jax; a local directory), with a progress bar and
resume (HTTP Range). `$VIT_JAX_HUB_URL` replaces https://storage.googleapis.com (a mirror).

Downloads are verified and resumable (`vit_jax.checkpoint.download`, which knows nothing of ViTs):
the size and hash the server reports are checked before a file is used, recorded beside it in
`<file>.verified.json`, and every reuse checks the cached file against that record.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from vit_jax import paths
from vit_jax.checkpoint import download as downloads
from vit_jax.checkpoint.download import DownloadError, check_cached, record_path, reverify
from vit_jax.configs.models import AUGREG_CONFIGS, MODEL_CONFIGS
from vit_jax.errors import CheckpointError

__all__ = [
    'AUGREG_COLUMNS', 'AUGREG_DIR', 'AUGREG_INDEX', 'AUGREG_MODELS', 'GCS_BUCKET', 'HTTPS_ROOT',
    'DownloadError', 'augreg_url', 'cache_dir', 'cache_path', 'catalogue', 'check_augreg_name',
    'check_cached', 'download',
    'hub_url', 'https_url', 'list_names', 'lit_vocab_name', 'read_augreg_index', 'record_path', 'resolve',
    'select_augreg',
    'url_for',
]


GCS_BUCKET = 'gs://vit_models'
MIXER_BUCKET = 'gs://mixer_models'
PUBLIC_BUCKETS = (GCS_BUCKET, MIXER_BUCKET)
HTTPS_ROOT = 'https://storage.googleapis.com'
HUB_URL_ENV = 'VIT_JAX_HUB_URL'
CACHE_ENV = 'VIT_JAX_CACHE'
AUGREG_DIR = f'{GCS_BUCKET}/augreg'
AUGREG_INDEX = f'{AUGREG_DIR}/index.csv'
LIT_DIR = f'{GCS_BUCKET}/lit'
# The vocabulary file of each LiT tokenizer, beside the weights (the original's `LitModel.vocab_path`).
LIT_VOCAB_SUFFIXES = {'bert': '.txt', 'sentencepiece': '.model'}

# What the original repository published (its README and the bucket listings in vit_jax.ipynb).
IMAGENET21K = ('ViT-B_8', 'ViT-B_16', 'ViT-B_32', 'ViT-L_16', 'ViT-L_32', 'ViT-H_14', 'R26+ViT-B_32',
               'R50+ViT-B_16', 'R50+ViT-L_32')
IMAGENET21K_IMAGENET2012 = ('ViT-B_8', 'ViT-B_16', 'ViT-B_16-224', 'ViT-B_32', 'ViT-L_16', 'ViT-L_16-224',
                            'ViT-L_32', 'R50+ViT-B_16')
SAM = ('ViT-B_16', 'ViT-B_32', 'ViT-L_16', 'ViT-L_32', 'ViT-S_16')
# gs://mixer_models/<folder>/<file>.npz (the gsam folder's Mixer-S files have no config in
# MODEL_CONFIGS: the loader reads their architecture from the shapes).
MIXER_FILES = {
    'imagenet21k': ('Mixer-B_16', 'Mixer-L_16'),
    'imagenet1k': ('Mixer-B_16', 'Mixer-L_16'),
    'sam': ('Mixer-B_16', 'Mixer-B_32'),
    'gsam': ('Mixer-B_16', 'Mixer-B_32', 'Mixer-S_16', 'Mixer-S_32', 'Mixer-S_8'),
}

# AugReg model keys (the first '-'-separated part of AugReg filenames) -> model config names. The
# original `AUGREG_CONFIGS` also holds keys that contain '-' ('testing-unpooled', 'LiT-B16B',
# 'B_16-gap-norep', ...): no filename's first part can be one of them, so they are left out.
AUGREG_MODELS = {key: config.model_name for key, config in AUGREG_CONFIGS.items() if '-' not in key}

# Columns of gs://vit_models/augreg/index.csv (see the original `get_augreg_df`).
AUGREG_COLUMNS = (
    'name', 'ds', 'epochs', 'lr', 'aug', 'wd', 'do', 'sd', 'best_val', 'final_val', 'final_test',
    'adapt_ds', 'adapt_lr', 'adapt_steps', 'adapt_resolution', 'adapt_final_val',
    'adapt_final_test', 'params', 'infer_samples_per_sec', 'filename', 'adapt_filename')


def catalogue() -> dict[str, str]:
    """All fixed catalogue names -> gs:// URLs (AugReg names are resolved via the index)."""
    names = {}
    for model in IMAGENET21K:
        names[model] = names[f'imagenet21k/{model}'] = f'{GCS_BUCKET}/imagenet21k/{model}.npz'
    for model in IMAGENET21K_IMAGENET2012:
        names[f'imagenet21k+imagenet2012/{model}'] = f'{GCS_BUCKET}/imagenet21k+imagenet2012/{model}.npz'
    for model in SAM:
        names[f'sam/{model}'] = f'{GCS_BUCKET}/sam/{model}.npz'
    for folder, files in MIXER_FILES.items():
        for model in files:
            names[f'mixer_models/{folder}/{model}'] = f'{MIXER_BUCKET}/{folder}/{model}.npz'
    for model in MIXER_FILES['imagenet21k']:
        names[model] = names[f'mixer_models/imagenet21k/{model}']
    for model, config in MODEL_CONFIGS.items():
        if 'text_model' in config:
            names[model] = names[f'lit/{model}'] = f'{LIT_DIR}/{model}.npz'
            vocab = lit_vocab_name(model)
            names[vocab] = f'{GCS_BUCKET}/{vocab}'
    names['augreg/index.csv'] = AUGREG_INDEX
    return names


def lit_vocab_name(model_name: str) -> str:
    """The catalogue name of a LiT model's vocabulary (`lit/LiT-B16B.txt`, `lit/LiT-L16S.model`)."""
    suffix = LIT_VOCAB_SUFFIXES[MODEL_CONFIGS[model_name].pp.tokenizer_name]
    return f'lit/{model_name}{suffix}'


# The AugReg filename grammar (the `filename` / `adapt_filename` columns of index.csv), one part
# at a time: pre-training `{model}-{ds}-{epochs}ep-lr_{lr}-aug_{aug}-wd_{wd}-do_{do}-sd_{sd}`,
# then optionally `--{adapt_ds}-steps_{steps}k-lr_{lr}-res_{res}` for a fine-tune.
_NUMBER = r'\d+(?:\.\d+)?(?:e-?\d+)?'
_AUGREG_PARTS = (('data set', r'i1k|i21k'), ('epochs', r'\d+ep'), ('learning rate', rf'lr_{_NUMBER}'),
                 ('augmentation', r'aug_[a-z]+\d*'), ('weight decay', rf'wd_{_NUMBER}'),
                 ('dropout', rf'do_{_NUMBER}'), ('stochastic depth', rf'sd_{_NUMBER}'))
_ADAPT_PARTS = (('fine-tuning data set', r'[a-z][a-z0-9_]*'), ('fine-tuning steps', r'steps_\d+k?'),
                ('fine-tuning learning rate', rf'lr_{_NUMBER}'), ('fine-tuning resolution', r'res_\d+'))


def check_augreg_name(name: str) -> str:
    """The bare AugReg name (model key or filename); CheckpointError naming the part that breaks the grammar.

    Accepts a model key (`B_16`), a full pre-training or fine-tune filename, with or without an
    `augreg/` prefix and `.npz`.
    """
    bare = name.removeprefix('augreg/').removesuffix('.npz')
    upstream, _, adapt = bare.partition('--')
    parts = upstream.split('-')
    if parts[0] not in AUGREG_MODELS:
        raise CheckpointError(f'AugReg name {name!r}: model {parts[0]!r} is not one of '
                              f'{", ".join(sorted(AUGREG_MODELS))}')
    if len(parts) == 1 and not adapt:
        return bare
    for grammar, given in ((_AUGREG_PARTS, parts[1:]), (_ADAPT_PARTS, adapt.split('-') if adapt else [])):
        if len(given) != len(grammar) and (given or grammar is _AUGREG_PARTS):
            raise CheckpointError(f'AugReg name {name!r}: expected {len(grammar)} parts '
                                  f'({", ".join(w for w, _ in grammar)}) after the model, got {len(given)}')
        for (what, pattern), part in zip(grammar, given, strict=False):
            if not re.fullmatch(pattern, part):
                raise CheckpointError(f'AugReg name {name!r}: {what} part {part!r} does not match '
                                      f'{pattern!r}')
    return bare


def hub_url() -> str:
    """The https root that serves public buckets: `$VIT_JAX_HUB_URL` (a mirror) or Cloud Storage's."""
    return (os.environ.get(HUB_URL_ENV) or HTTPS_ROOT).rstrip('/')


def https_url(url: str) -> str:
    """gs://bucket/path -> https://storage.googleapis.com/bucket/path (public objects; or the mirror)."""
    if url.startswith('gs://'):
        return f'{hub_url()}/{url[len("gs://"):]}'
    return url


def cache_dir() -> str:
    """`$VIT_JAX_CACHE`, or ~/.cache/vit_jax."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser('~'), '.cache', 'vit_jax')


def cache_path(url: str, directory: str | None = None) -> str:
    """Where `url` is cached: <cache>/<host-less path>, e.g. .../vit_models/imagenet21k/ViT-B_16.npz.

    Public-bucket URLs drop the host (Cloud Storage's or the mirror's), so a mirror shares the
    cache; other URLs keep it.
    """
    url = https_url(url)
    for root in (hub_url(), HTTPS_ROOT):
        if url.startswith(root + '/'):
            rest = url[len(root) + 1:]
            break
    else:
        rest = url.split('://', 1)[-1]
    parts = [p for p in rest.split('?', 1)[0].split('/') if p not in ('', '.', '..')]
    return paths.join(directory or cache_dir(), *parts)


# --- AugReg index ----------------------------------------------------------------------------

def _number(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


def read_augreg_index(source: str | None = None) -> list[dict[str, Any]]:
    """Rows of the AugReg `index.csv` (local path, URL, or None for the cached public one).

    Numeric columns become floats. Raises CheckpointError if a required column is missing.
    """
    path = resolve(source or AUGREG_INDEX)
    reader = csv.DictReader(io.StringIO(paths.read_text(path), newline=''))
    rows = [{k: _number(v) for k, v in row.items()} for row in reader]
    required = {'name', 'ds', 'final_val', 'filename', 'adapt_ds', 'adapt_final_val', 'adapt_filename'}
    missing = required - set(rows[0] if rows else ())
    if missing:
        raise CheckpointError(f'{path}: not an AugReg index (missing columns {sorted(missing)})')
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
        raise CheckpointError(f'no AugReg checkpoint for model={model!r} ds={ds!r} adapt_ds={adapt_ds!r} '
                              f'adapt_resolution={adapt_resolution!r}; known models: '
                              f'{", ".join(AUGREG_MODELS)}')
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
        return augreg_url(check_augreg_name(bare))
    if key in AUGREG_MODELS:  # 'augreg/B_16' or 'B_16': the best AugReg pre-training.
        return augreg_url(str(select_augreg(read_augreg_index(index), key)['filename']))
    return None



def download(url: str, dst: str, *, progress: bool = True, timeout: float = 60.0,
             chunk_size: int = 1 << 20) -> str:
    """Downloads `url` (a gs:// URL of a public bucket: over https, from the mirror if set) to the local
    file `dst`, verified and resumable (`download.download`); DownloadError (one line) on any failure."""
    return downloads.download(https_url(url), dst, progress=progress, timeout=timeout, chunk_size=chunk_size,
                              offline_hint=_OFFLINE_HINT, local_hint=f'set {CACHE_ENV} to a local directory')


# What to do instead on a machine that cannot download ({name}: the file's name).
_OFFLINE_HINT = (' (vit-train: --config.pretrained_path=/path/to/{name}; vit-predict/vit-convert: the path '
                 'itself)')


def resolve(name_or_path: str, *, index: str | None = None, directory: str | None = None,
            progress: bool = True, timeout: float = 60.0) -> str:
    """A path for a file, directory, URL or catalogue name (downloaded once, verified, then cached).

    Remote paths other than the public bucket (e.g. gs://my-bucket/x.npz) are returned as they
    are, to be read through `vit_jax.paths`. A cached download is used only while it matches its
    verification record; otherwise it is checked against the server again (and downloaded again
    if it is not the object), or refused with a DownloadError when the server cannot be reached.
    """
    name = os.fspath(name_or_path)
    remote = paths.is_remote(name)
    if not remote and paths.exists(name):
        return os.path.expanduser(name)
    scheme = name.split('://', 1)[0] if remote else ''
    public = name.startswith(tuple(f'{bucket}/' for bucket in PUBLIC_BUCKETS))
    if remote and scheme not in ('http', 'https') and not public:
        return name
    url = name if remote else url_for(name, index=index)
    if url is None:
        raise FileNotFoundError(f'{name}: no such file, and not a known checkpoint name (e.g. ViT-B_16, '
                                'imagenet21k+imagenet2012/ViT-B_16, sam/ViT-B_16, Mixer-B_16, augreg/B_16, '
                                'LiT-B16B, '
                                'an AugReg filename, or a URL)')
    url = https_url(url)
    dst = cache_path(url, directory)
    if paths.exists(dst):
        problem = check_cached(dst)
        if problem is None or reverify(url, dst, problem, timeout):
            return dst
    return download(url, dst, progress=progress, timeout=timeout)


def list_names() -> str:
    """A printable list of the catalogue (for --help texts)."""
    out = io.StringIO()
    for name, url in catalogue().items():
        if '/' in name:
            print(f'{name:40s} {https_url(url)}', file=out)
    print(f'augreg/<model> ({", ".join(AUGREG_MODELS)}) -> best in {https_url(AUGREG_INDEX)}', file=out)
    return out.getvalue()
