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

    from vit_jax.export import load_exported        # imports jax and numpy only, no Flax/model code
    served = load_exported('vit_b16.vitx')
    logits = served(images)                         # images: float32 [n, 224, 224, 3] in [-1, 1]
    served.metadata['class_names']

`load_exported` needs only `jax` (the same or a newer version, within jax.export's
compatibility window) on one of the exported platforms. Images are preprocessed as in
`vit_jax.predict.preprocess`: bilinear resize to the image size, then (x - 127.5) / 127.5.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import io_util  # numpy and the standard library only: the loader stays Flax-free

FORMAT_VERSION = 1
_MODULE, _PARAMS, _METADATA = 'model.stablehlo', 'params.npz', 'metadata.json'


def _flat_numpy(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in io_util.flatten(jax.device_get(params)).items()}


def export_inference(model: Any, params: Any, image_size: int, *, bake_params: bool = True,
                     platforms: Sequence[str] | None = None) -> jax.export.Exported:
    """`jax.export` of images [b, image_size, image_size, 3] -> logits, b symbolic.

    With `bake_params` the parameters are constants of the computation (call `exported.call(x)`),
    otherwise the first argument (call `exported.call(params, x)`).
    """
    batch, = jax.export.symbolic_shape('batch')
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    apply = lambda p, x: model.apply({'params': p}, x, train=False)  # noqa: E731
    kwargs = {'platforms': tuple(platforms)} if platforms else {}
    if bake_params:
        params = jax.tree_util.tree_map(jnp.asarray, params)
        return jax.export.export(jax.jit(lambda x: apply(params, x)), **kwargs)(images)
    # Plain nested dicts (not FrozenDict): the loader rebuilds the tree without Flax.
    params = io_util.unflatten(_flat_numpy(params))
    specs = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    return jax.export.export(jax.jit(apply), **kwargs)(specs, images)


def save_exported(exported: jax.export.Exported, path: str, metadata: Mapping[str, Any],
                  params: Mapping[str, Any] | None = None) -> str:
    """Writes the zip file described in the module doc; it appears complete or not at all."""
    metadata = dict(metadata, format_version=FORMAT_VERSION, platforms=list(exported.platforms),
                    params_baked=params is None)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, 'w', zipfile.ZIP_STORED) as z:
        z.writestr(_MODULE, bytes(exported.serialize()))
        z.writestr(_METADATA, json.dumps(metadata, indent=1))
        if params is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **_flat_numpy(params))
            z.writestr(_PARAMS, buffer.getvalue())
    return io_util.write_atomic(path, archive.getvalue())


class Served:
    """A loaded export: `served(images) -> logits` (numpy in, numpy out); `.metadata`."""

    def __init__(self, exported: jax.export.Exported, metadata: dict, params: Any | None):
        self.exported, self.metadata, self.params = exported, metadata, params

    def __call__(self, images: Any) -> np.ndarray:
        images = jnp.asarray(images, jnp.float32)
        size = self.metadata.get('image_size')
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f'images must be [n, {size}, {size}, 3], got {tuple(images.shape)}')
        args = (images,) if self.params is None else (self.params, images)
        return np.asarray(self.exported.call(*args))


def load_exported(path: str) -> Served:
    """Loads a file written by `save_exported` / `python -m vit_jax.export` (no model code needed)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if _MODULE not in names or _METADATA not in names:
                raise ValueError(f'{path}: not a vit_jax export (no {_MODULE} / {_METADATA})')
            metadata = json.loads(z.read(_METADATA))
            exported = jax.export.deserialize(bytearray(z.read(_MODULE)))
            params = None
            if _PARAMS in names:
                with np.load(io.BytesIO(z.read(_PARAMS)), allow_pickle=False) as f:
                    flat = {k: f[k] for k in f.files}
                    params = jax.tree_util.tree_map(jnp.asarray, io_util.unflatten(flat, source=path))
    except zipfile.BadZipFile:
        raise ValueError(f'{path}: not a vit_jax export (not a zip file)') from None
    return Served(exported, metadata, params)


def export_model(loaded: Any, path: str, *, bake_params: bool = True,
                 platforms: Sequence[str] | None = None) -> str:
    """Exports a `vit_jax.predict.LoadedModel` (from `vit_jax.predict.load_model`) to `path`."""
    exported = export_inference(loaded.model, loaded.params, loaded.image_size,
                                bake_params=bake_params, platforms=platforms)
    metadata = {'source': loaded.source, 'image_size': loaded.image_size,
                'num_classes': loaded.num_classes, 'class_names': loaded.class_names,
                'preprocessing': {'resize': 'bilinear', 'crop_fraction': loaded.crop_fraction,
                                  'scale': '(x - 127.5) / 127.5'},
                'output': 'logits' if loaded.num_classes else 'pre-logits features'}
    return save_exported(exported, path, metadata, None if bake_params else loaded.params)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m vit_jax.export', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from vit_jax.predict import add_checkpoint_args
    add_checkpoint_args(parser)
    parser.add_argument('--output', required=True, help='file to write (e.g. model.vitx)')
    parser.add_argument('--platforms', nargs='+', default=None,
                        help='lower for these (cpu, cuda, rocm, tpu); default: this machine\'s backend')
    parser.add_argument('--params-separate', action='store_true',
                        help='pass the parameters as an argument (stored beside the computation) '
                             'instead of baking them in as constants')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vit_jax.export`; raises on bad input."""
    from vit_jax.predict import default_labels, load_model

    args = _parser().parse_args(argv)
    loaded = load_model(args.checkpoint, args.model)
    if loaded.class_names is None:
        loaded.class_names = default_labels(loaded.num_classes)
    path = export_model(loaded, args.output, bake_params=not args.params_separate, platforms=args.platforms)
    print(f'wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB): images [batch, {loaded.image_size}, '
          f'{loaded.image_size}, 3] -> {loaded.num_classes or "features"}')
    return 0


def run(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: exit 2 with one line on bad input."""
    from vit_jax import cli
    sys.exit(cli.run_cli('vit-export', lambda: main(argv)))


if __name__ == '__main__':
    run()
