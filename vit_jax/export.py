"""Export a ViT for serving: `jax.export` (serialized StableHLO) with a symbolic batch size.

The exported function maps float32 images [batch, H, W, 3] in [-1, 1] (any batch size) to
float32 logits [batch, classes]. It is written as one zip file holding

- `model.stablehlo`: the `jax.export.Exported.serialize()` bytes (the computation, with the
  parameters baked in as constants unless `bake_params=False`),
- `params.npz`: the parameters (flat, '/'-joined names) when they are passed as an argument,
  so that they can be swapped without exporting again,
- `metadata.json`: image size, number of classes, class names, preprocessing, platforms.

Export (from a checkpoint anything in vit_jax reads) and serve:

    python -m vit_jax.export --checkpoint ViT-B_16.npz --output vit_b16.vitx [--platforms cpu cuda]

    from vit_jax.serving import load_exported       # jax and numpy only, no Flax/model code
    served = load_exported('vit_b16.vitx')
    logits = served(images)                         # images: float32 [n, 224, 224, 3] in [-1, 1]
    served.metadata['class_names']

`vit_jax.serving.load_exported` needs only `jax` (the same or a newer version, within
jax.export's compatibility window) on one of the exported platforms. Images are preprocessed as
in `vit_jax.preprocessing.for_inference`: bilinear resize to the image size, then
(x - 127.5) / 127.5.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import cli, labels, paths, trees
from vit_jax.checkpoint import facts, loader
from vit_jax.errors import ConfigError
from vit_jax.serving import FORMAT_VERSION, METADATA, MODULE, PARAMS

# The platforms jax.export lowers for (`jax.export.export(..., platforms=...)`).
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def _flat_numpy(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in trees.flatten(jax.device_get(params)).items()}


def export_inference(model: Any, params: Any, image_size: int, *, bake_params: bool = True,
                     platforms: Sequence[str] | None = None) -> jax.export.Exported:
    """`jax.export` of images [b, image_size, image_size, 3] -> logits, b symbolic.

    With `bake_params` the parameters are constants of the computation (call `exported.call(x)`),
    otherwise the first argument (call `exported.call(params, x)`).
    """
    unknown = [p for p in platforms or () if p not in PLATFORMS]
    if unknown:
        raise ConfigError(f'platforms {", ".join(map(repr, unknown))}: jax.export lowers for '
                          f'{", ".join(PLATFORMS)}')
    batch, = jax.export.symbolic_shape('batch')
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    apply = lambda p, x: model.apply({'params': p}, x, train=False)  # noqa: E731
    kwargs = {'platforms': tuple(platforms)} if platforms else {}
    if bake_params:
        params = jax.tree_util.tree_map(jnp.asarray, params)
        return jax.export.export(jax.jit(lambda x: apply(params, x)), **kwargs)(images)
    # Plain nested dicts (not FrozenDict): the loader rebuilds the tree without Flax.
    params = trees.unflatten(_flat_numpy(params))
    specs = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    return jax.export.export(jax.jit(apply), **kwargs)(specs, images)


def save_exported(exported: jax.export.Exported, path: str, metadata: Mapping[str, Any],
                  params: Mapping[str, Any] | None = None) -> str:
    """Writes the zip file described in the module doc; it appears complete or not at all."""
    metadata = dict(metadata, format_version=FORMAT_VERSION, platforms=list(exported.platforms),
                    params_baked=params is None)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, 'w', zipfile.ZIP_STORED) as z:
        z.writestr(MODULE, bytes(exported.serialize()))
        z.writestr(METADATA, json.dumps(metadata, indent=1))
        if params is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **_flat_numpy(params))
            z.writestr(PARAMS, buffer.getvalue())
    return paths.write_atomic(path, archive.getvalue())


def export_model(loaded: Any, path: str, *, bake_params: bool = True,
                 platforms: Sequence[str] | None = None) -> str:
    """Exports a `vit_jax.checkpoint.loader.LoadedModel` (from `loader.load_model`) to `path`."""
    exported = export_inference(loaded.model, loaded.params, loaded.image_size,
                                bake_params=bake_params, platforms=platforms)
    metadata = {'source': loaded.source, 'image_size': loaded.image_size,
                'num_classes': loaded.num_classes, 'class_names': loaded.class_names,
                'preprocessing': {'resize': 'bilinear', 'crop_fraction': loaded.crop_fraction,
                                  'scale': '(x - 127.5) / 127.5'},
                'output': 'logits' if loaded.num_classes else 'pre-logits features'}
    return save_exported(exported, path, metadata, None if bake_params else loaded.params)


def _parser() -> argparse.ArgumentParser:
    parser = cli.argument_parser('vit-export', __doc__.split('\n\n')[0])
    facts.add_checkpoint_args(parser)
    parser.add_argument('--output', required=True, help='file to write (e.g. model.vitx)')
    parser.add_argument('--platforms', nargs='+', default=None, choices=PLATFORMS, metavar='PLATFORM',
                        help=f'lower for these ({", ".join(PLATFORMS)}); default: this machine\'s backend')
    parser.add_argument('--params-separate', action='store_true',
                        help='pass the parameters as an argument (stored beside the computation) '
                             'instead of baking them in as constants')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vit_jax.export`; raises on bad input."""
    args = _parser().parse_args(argv)
    loaded = loader.load_model(args.checkpoint, facts.from_args(args))
    if loaded.class_names is None:
        loaded.class_names = labels.default_labels(loaded.num_classes)
    path = export_model(loaded, args.output, bake_params=not args.params_separate, platforms=args.platforms)
    print(f'wrote {path} ({paths.size(path) / 2**20:.1f} MiB): images [batch, {loaded.image_size}, '
          f'{loaded.image_size}, 3] -> {loaded.num_classes or "features"}')
    return 0


def run(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: exit 2 with one line on bad input."""
    sys.exit(cli.run_cli('vit-export', lambda: main(argv)))


if __name__ == '__main__':
    run()
