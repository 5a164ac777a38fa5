"""`vit-convert`: convert ViT checkpoints between the public formats; `export` writes them.

    vit-convert ViT-B_16.npz vit_b16.safetensors                 # -> timm
    vit-convert model.safetensors hf_dir/ --num-heads 12         # timm -> Hugging Face
    vit-convert gs://bucket/run vit.npz                          # a vit-train workdir -> npz

The source is anything the one loader reads (`vit_jax.checkpoint.loader`), its format detected;
`export(params, model_config, dst, format)` writes npz (a file), timm safetensors (a file) or a
Hugging Face directory (written beside the destination and swapped in whole), local or gs://.
Everything is converted and checked before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from vit_jax import cli, paths
from vit_jax.checkpoint import adapt, arch, facts, hf, hub, loader, npz, timm
from vit_jax.errors import CheckpointError, ConfigError
from vit_jax.models import family, num_params, scan_to_blocks

EXPORT_FORMATS = ('npz', 'timm', 'hf')


def export(params: Mapping[str, Any], model_config: Any, dst: str, format: str = 'npz',  # noqa: A002
           class_names: Sequence[str] | None = None, eval_pp: Mapping[str, Any] | None = None) -> str:
    """Writes `params` as npz (a file), timm (a .safetensors file, else a timm hub directory:
    config.json + model.safetensors) or a Hugging Face directory.

    The destination is complete or untouched (a directory is swapped in whole). timm's weights
    strict-load into `timm.create_model(architecture, **model_args)` of the config.json (in a .safetensors
    file: its metadata); timm has LayerNorm eps 1e-6: exporting a model with another warns.
    A Hugging Face directory gets `class_names` as its labels and the eval preprocessing
    (`eval_pp` of a vit-train workdir, else a whole-image resize) as its image processor; a timm
    directory the same as its config.json's label_names and pretrained_cfg.
    """
    if format not in EXPORT_FORMATS:
        raise CheckpointError(f'unknown export format {format!r}; expected one of {EXPORT_FORMATS}')
    params = dict(params)
    if 'encoderblock' in params.get('Transformer', {}):
        params = scan_to_blocks(params)
    params = jax.tree_util.tree_map(np.asarray, params)
    dst = str(dst)
    if format == 'npz':
        if 'cls' in params and (model_config.get('classifier') == 'gap' or 'fc_norm' in params):
            raise CheckpointError('an .npz does not record the pooling, and one with a class token is read '
                                  'as token-pooled: export this average-pooled model to timm (--to timm), '
                                  'whose metadata records it')
        cls_alone = not arch.model_field(model_config, 'distillation_head')
        if 'dist' in params and 'head' not in params and cls_alone:
            raise CheckpointError('an .npz does not record that the features are the class token alone, not '
                                  'the mean of the class and distillation tokens (Hugging Face DeiTModel); '
                                  'export it to hf (--to hf)')
        if model_config.get('classifier') == 'token_gap':
            raise CheckpointError('an .npz does not record the pooling (the class token concatenated with '
                                  "the mean patch token, Hugging Face Dinov2ForImageClassification's), and "
                                  'timm and Hugging Face ViT have no such head: keep the source directory')
        if arch.model_field(model_config, 'posemb') == 'sincos2d':
            # big_vision's layout (a `params/` prefix), whose missing position embedding means sin-cos.
            return npz.save({'params': params}, dst)
        return npz.save(params, dst)
    if format == 'timm' and dst.endswith('.safetensors'):
        return paths.write_atomic(dst, timm.timm_bytes(params, model_config))
    if paths.exists(dst) and not paths.is_dir(dst):
        what = 'a timm export to a path without .safetensors' if format == 'timm' else 'Hugging Face export'
        raise CheckpointError(f'{dst}: exists and is not a directory ({what} writes one)')
    if format == 'timm':
        return paths.write_dir_atomic(dst, timm.timm_files_bytes(params, model_config, class_names, eval_pp))
    return paths.write_dir_atomic(dst, hf.hf_files_bytes(params, model_config, class_names, eval_pp))


# --- CLI ------------------------------------------------------------------------------------------

def describe(config: Any, params: Mapping[str, Any]) -> str:
    """One-paragraph summary: config name, architecture, numerics, parameter count."""
    name = config.get('model_name') or 'custom (no MODEL_CONFIGS match)'
    eps, approx = arch.numerics(config)
    fixed = arch.model_field(config, 'posemb') == 'sincos2d'
    size = 'any (a fixed sin-cos position embedding)' if fixed else arch.image_size(params, config)
    if family(config) == 'Mixer':
        layout = (f'MLP-Mixer: hidden {config.hidden_dim}, {config.num_blocks} blocks, token mlp '
                  f'{config.tokens_mlp_dim}, channel mlp {config.channels_mlp_dim}, '
                  f'patch {tuple(config.patches.size)}')
    else:
        t = config.transformer
        resnet = config.get('resnet')
        hybrid = f', ResNet stem {tuple(resnet.num_layers)}' if resnet is not None else ''
        layout = (f'hidden {config.hidden_size}, {t.num_layers} layers, {t.num_heads} heads, '
                  f'mlp {t.mlp_dim}, patch {tuple(config.patches.size)}{hybrid}, '
                  f'classifier {config.classifier}, representation_size {config.get("representation_size")}')
    return (f'model: {name}\n'
            f'  {layout}, {arch.num_classes(params)} classes, image size {size}\n'
            f'  layer_norm_eps {eps:g}, GELU {"tanh" if approx else "exact"}\n'
            f'parameters: {num_params(params):,}')


def _default_format(dst: str) -> str:
    if dst.endswith('.npz'):
        return 'npz'
    if dst.endswith('.safetensors'):
        return 'timm'
    return 'hf'


def list_archs() -> str:
    """The timm architectures vit_jax loads exactly, one per line with width, depth, heads, patch,
    pooling and activation."""
    rows = [f'{"timm architecture":36s} width depth heads patch pool  activation']
    for name, (width, depth, heads, patch, pool, act) in timm.TIMM_ARCHS.items():
        rows.append(f'{name:36s} {width:5d} {depth:5d} {heads:5d} {patch:5d} {pool:5s} {act}')
    return '\n'.join(rows)


def _parser() -> argparse.ArgumentParser:
    parser = cli.argument_parser(
        'vit-convert',
        'Convert a ViT checkpoint between the original/AugReg/big_vision .npz, timm and Hugging Face '
        'formats (the source format is detected).',
        epilog='SRC may also be a public checkpoint name (downloaded once and cached):\n' + hub.list_names())
    parser.add_argument('src', metavar='SRC', help='.npz, .safetensors, .pth/.bin, HF directory, or name')
    parser.add_argument('dst', metavar='DST', help='output .npz / .safetensors file or HF directory')
    parser.add_argument('--to', choices=EXPORT_FORMATS, default=None,
                        help='output format (default: from DST: .npz -> npz, .safetensors -> timm, else hf)')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='replace the head by a zero-initialised N-class head (0 removes it)')
    facts.add_args(parser)
    parser.add_argument('--list-archs', action='store_true',
                        help='print the timm architectures loaded exactly, and exit')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`vit-convert SRC DST [--to npz|timm|hf] [--num-classes N]`; raises on bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if '--list-archs' in argv:
        print(list_archs())
        return 0
    args = _parser().parse_args(argv)
    if args.num_classes is not None and args.num_classes < 0:
        raise ConfigError(f'--num-classes must be >= 0, got {args.num_classes}')
    path = hub.resolve(args.src)
    if path.endswith('.npz') and npz.is_lit(npz.keys(path)) and not npz.is_siglip(npz.keys(path)):
        if args.to not in (None, 'npz') or not args.dst.endswith('.npz') or args.num_classes is not None:
            raise CheckpointError(f'{args.src} is a LiT image-text model: timm and Hugging Face have no LiT '
                                  'model and its heads are not classifiers; the public .npz is its only '
                                  'format (vit-zeroshot reads it)')
        params = npz.load(path)
        arch.check_values(params, source=path)
        print(f'detected: LiT .npz ({path})')
        print(f'wrote: {npz.save(params, args.dst)}')
        return 0
    found = loader.read(path, facts.from_args(args))
    print(f'detected: {loader.FORMAT_NAMES[found.format]} ({found.path})')
    config, params = found.model_config, found.params
    to = args.to or _default_format(args.dst)
    if loader.is_siglip(config) and (to != 'npz' or args.num_classes is not None):
        print('note: a two-tower SigLIP model: converting its image tower (timm and Hugging Face ViT have no '
              'text tower; --to npz keeps both)')
        config, params = config.image, params['img']
    elif loader.is_siglip(config):
        _save_siglip_npz(config, params, args.dst)
        return 0
    if args.num_classes is not None:
        params = adapt.replace_head(params, args.num_classes,
                                    bool(arch.model_field(config, 'distillation_head')))
    print(describe(config, params))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        # A replaced head has no class names; the source's eval preprocessing still applies.
        names = found.class_names if args.num_classes is None else None
        export(params, config, args.dst, format=to, class_names=names, eval_pp=found.eval_pp)
    for warning in caught:
        print(f'note: {warning.message}')
    print(f'wrote: {loader.FORMAT_NAMES.get(to, to)} -> {args.dst}')
    if to == 'timm' and (family(config) != 'Mixer' or not args.dst.endswith('.safetensors')):
        record = timm.timm_config(params, config)
        print(f"timm: timm.create_model({record['architecture']!r}, **model_args) loads it strictly, "
              f"model_args = {json.dumps(record['model_args'])}")
    return 0


def _save_siglip_npz(config: Any, params: Mapping[str, Any], dst: str) -> None:
    """Both towers of a SigLIP model as an .npz (`img/`, `txt/`, `t`, `b`, read back as big_vision's), which
    records no numerics: refused unless both towers have big_vision's (LayerNorm eps 1e-6, tanh GELU)."""
    for tower, fields in (('vision', config.image), ('text', config.text)):
        if arch.numerics(fields) != (1e-6, True):
            eps, tanh = arch.numerics(fields)
            raise CheckpointError(f'an .npz does not record that the {tower} tower has LayerNorm eps '
                                  f'{eps:g} and {"tanh" if tanh else "exact"} GELU: keep the source')
    print(f'wrote: {npz.save(params, dst)}')


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`vit-convert`): exit 2 with one line on bad input."""
    sys.exit(cli.run_cli('vit-convert', lambda: main(argv)))


if __name__ == '__main__':
    run()
