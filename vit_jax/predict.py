"""`vit-predict`: classify image files, folders or globs with a ViT checkpoint.

    vit-predict photos/ cat.jpg 'more/*.png' --checkpoint ViT-B_16_imagenet2012.npz
    vit-predict img.jpg --checkpoint workdir/            # a `vit-train` workdir (its class names)
    vit-predict img.jpg --checkpoint ViT-B_16 --labels imagenet21k --top-k 3 --json

`--checkpoint` is a public `.npz`, a training workdir, any file `vit-convert` reads (timm,
Hugging Face, big_vision) or a catalogue name (downloaded when online). Images of any size are
resized bilinearly to the checkpoint's resolution (optionally after a center crop) and scaled
to [-1, 1] as in the original evaluation. Unreadable images are reported and skipped.

`load_model` is shared with `vit_jax.analysis`, `vit_jax.fewshot` and `vit_jax.export`.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vit_jax import cli, convert
from vit_jax.models import MODEL_CONFIGS, VisionTransformer, build_model, get_config, scan_to_blocks

# The shipped label list (vit_jax/data/) that a head of this size means.
_LABELS_BY_SIZE = {1000: 'imagenet2012', 21843: 'imagenet21k'}


@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference: module, parameters and what its inputs/outputs mean."""

    model: VisionTransformer
    params: Any
    image_size: int            # side of the square input the position embeddings were made for
    class_names: list[str] | None
    source: str
    crop_fraction: float | None = None   # eval center crop of a training workdir (None: resize)

    @property
    def num_classes(self) -> int | None:
        return self.model.num_classes

    @property
    def num_prefix_tokens(self) -> int:
        """1 for a class token, else 0 (the tokens before the patch tokens)."""
        return self.model.num_prefix_tokens

    @property
    def stride(self) -> int:
        """Input pixels per token along each side (patch size x ResNet stem stride)."""
        return self.model.patch_stride[0]

    @property
    def grid(self) -> int:
        return self.image_size // self.stride


# --- Labels -------------------------------------------------------------------------------

def default_labels(num_classes: int | None) -> list[str] | None:
    """The shipped list matching a head size (1000 -> ImageNet-1k, 21843 -> ImageNet-21k)."""
    from vit_jax import input_pipeline  # imports TensorFlow: only when labels are needed
    name = _LABELS_BY_SIZE.get(num_classes or 0)
    return input_pipeline.load_labels(name) if name else None


# --- Checkpoints ----------------------------------------------------------------------------

def _workdir_crop_fraction(workdir: str) -> float | None:
    """The eval center-crop fraction of a training workdir's config (None: whole-image resize)."""
    from vit_jax import input_pipeline
    with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
        pp = input_pipeline.preprocessing_from_config(json.load(f))
    return pp.crop / pp.resize_to if pp.eval_crop == 'center' else None


def from_params(model_config: Any, params: Any, source: str, class_names: list[str] | None = None
                ) -> LoadedModel:
    """The inference module for `params` (head size, pre-logits and class token read from them)."""
    params = dict(params)
    if set(params) == {'params'}:   # Flax variables
        params = dict(params['params'])
    if 'encoderblock' in params.get('Transformer', {}):
        params = scan_to_blocks(params)
    if 'Transformer' not in params or 'posembed_input' not in params['Transformer']:
        raise ValueError(f'{source}: no Transformer/posembed_input/pos_embedding in the parameters')
    head = params.get('head')
    num_classes = int(np.shape(head['kernel'])[-1]) if head is not None else None
    config = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
    # A named config (--model) may differ from the file in its pre-logits layer or class token.
    config['representation_size'] = (int(np.shape(params['pre_logits']['kernel'])[-1])
                                     if 'pre_logits' in params else None)
    if 'cls' not in params and config.get('classifier', 'token') in ('token', 'token_unpooled'):
        config['classifier'] = 'gap'
    model = build_model(config, num_classes, inference=True)
    prefix = model.num_prefix_tokens
    tokens = np.shape(params['Transformer']['posembed_input']['pos_embedding'])[1]
    grid = int(round((tokens - prefix) ** 0.5))
    if grid * grid != tokens - prefix:
        raise ValueError(f'{source}: pos_embedding has {tokens} tokens, not a square grid '
                         f'(+{prefix} class token) for classifier={model.classifier!r}')
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise ValueError(f'{source}: {len(class_names)} class names for a {num_classes}-class head')
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return LoadedModel(model=model, params=params, image_size=grid * model.patch_stride[0],
                       class_names=class_names, source=source)


def load_model(checkpoint: str, model_name: str | None = None) -> LoadedModel:
    """Loads a checkpoint given as a file, a training workdir or a catalogue name.

    The architecture is inferred from the parameters (`vit_jax.convert.load_checkpoint`);
    `model_name` (a `vit_jax.models.MODEL_CONFIGS` key) overrides it, keeping the file's
    LayerNorm epsilon and GELU form.
    """
    if model_name is not None and model_name not in MODEL_CONFIGS:
        raise ValueError(f'--model {model_name!r} is unknown; known models: {", ".join(MODEL_CONFIGS)}')
    found = convert.read_checkpoint(checkpoint)
    model_config = found.model_config
    if model_name is not None:
        named = get_config(model_name)
        for key in ('layer_norm_eps', 'gelu_approximate'):   # numerics the file's format implies
            if model_config.get(key) is not None:
                named[key] = model_config.get(key)
        model_config = named
    loaded = from_params(model_config, found.params, checkpoint, found.class_names)
    if found.format == 'workdir':
        loaded.crop_fraction = _workdir_crop_fraction(found.path)
    return loaded


# --- Images ---------------------------------------------------------------------------------

def find_images(inputs: Sequence[str]) -> list[str]:
    """Expands files, folders (recursively, image extensions) and globs, keeping input order."""
    from vit_jax.input_pipeline import IMAGE_EXTENSIONS
    found: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            matches = sorted(os.path.join(root, f) for root, _, files in os.walk(item)
                             for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.exists(item):
            matches = [item]
        else:
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
        if not matches:
            raise FileNotFoundError(f'no images found for {item!r}')
        found.extend(m for m in matches if m not in found)
    return found


def preprocess(image: Image.Image, size: int, crop_fraction: float | None = None) -> np.ndarray:
    """An image -> float32 [size, size, 3] in [-1, 1], through the training pipeline's eval path
    (`vit_jax.input_pipeline.preprocess_eval`): bilinear resize of the whole image to `size`, or
    with `crop_fraction` a resize to size / crop_fraction and a central `size` crop."""
    if crop_fraction is not None and not 0 < crop_fraction <= 1:
        raise ValueError(f'crop fraction {crop_fraction} is not in (0, 1]')
    from vit_jax import input_pipeline  # imports TensorFlow: only once there are images to read
    pp = input_pipeline.Preprocessing(
        crop=size, eval_crop='resize' if crop_fraction is None else 'center',
        resize=None if crop_fraction is None else max(size, round(size / crop_fraction)))
    pixels = np.asarray(image.convert('RGB'), np.uint8)
    return input_pipeline.preprocess_eval(pixels, 0, pp)['image'].numpy()


def load_image(path: str, size: int, crop_fraction: float | None = None) -> np.ndarray:
    """Reads and preprocesses one image; raises OSError/ValueError when it cannot be read."""
    with Image.open(path) as image:
        image.load()
        return preprocess(image, size, crop_fraction)


def iter_batches(paths: Iterable[str], size: int, batch_size: int, crop_fraction: float | None = None,
                 on_error=None) -> Iterator[tuple[list[str], np.ndarray]]:
    """(paths, images) batches; unreadable files go to `on_error(path, message)` and are skipped."""
    names: list[str] = []
    images: list[np.ndarray] = []
    for path in paths:
        try:
            images.append(load_image(path, size, crop_fraction))
            names.append(path)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            if on_error is None:
                raise
            on_error(path, f'{type(e).__name__}: {e}')
        if len(names) == batch_size:
            yield names, np.stack(images)
            names, images = [], []
    if names:
        yield names, np.stack(images)


# --- Inference ------------------------------------------------------------------------------

def make_predict_fn(loaded: LoadedModel, batch_size: int):
    """jit-compiled images -> logits; pads to `batch_size` so that one shape compiles once."""
    apply = jax.jit(lambda params, x: loaded.model.apply({'params': params}, x, train=False))

    def predict(images: np.ndarray) -> np.ndarray:
        n = len(images)
        if n < batch_size:
            images = np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:], images.dtype)])
        return np.asarray(apply(loaded.params, images))[:n]

    return predict


def top_k(logits: np.ndarray, k: int, class_names: Sequence[str] | None) -> list[list[dict]]:
    """Per row, the k most probable classes (softmax) as {rank, index, label, probability}."""
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))
    k = min(k, probs.shape[-1])
    order = np.argsort(-probs, axis=-1, kind='stable')[:, :k]
    return [[{'rank': r + 1, 'index': int(i),
              'label': class_names[i] if class_names else str(i),
              'probability': float(p[i])} for r, i in enumerate(row)]
            for p, row in zip(probs, order, strict=True)]


def predict_files(loaded: LoadedModel, paths: Sequence[str], *, k: int = 5, batch_size: int = 32,
                  crop_fraction: float | None = None, class_names: Sequence[str] | None = None,
                  progress: bool = False) -> dict:
    """Classifies `paths`; returns the `--json` document: {results: [...], skipped: [...], ...}."""
    if loaded.num_classes is None:
        raise ValueError(f'{loaded.source}: the checkpoint has no classification head')
    if loaded.model.classifier not in ('token', 'gap'):
        raise ValueError(f'{loaded.source}: classifier={loaded.model.classifier!r} gives per-token '
                         'outputs, not one prediction per image')
    names = class_names if class_names is not None else loaded.class_names
    if names is not None and len(names) != loaded.num_classes:
        raise ValueError(f'{len(names)} labels for a {loaded.num_classes}-class head')
    skipped: list[dict] = []

    def on_error(path: str, message: str) -> None:
        skipped.append({'path': path, 'error': message})
        print(f'skipped {path}: {message}', file=sys.stderr)

    predict = make_predict_fn(loaded, batch_size)
    crop_fraction = crop_fraction if crop_fraction is not None else loaded.crop_fraction
    results = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), unit='img', file=sys.stderr)
    for batch_paths, images in iter_batches(paths, loaded.image_size, batch_size, crop_fraction, on_error):
        for path, preds in zip(batch_paths, top_k(predict(images), k, names), strict=True):
            results.append({'path': path, 'predictions': preds})
        if bar is not None:
            bar.update(len(batch_paths))
    if bar is not None:
        bar.update(len(paths) - bar.n)
        bar.close()
    return {'checkpoint': loaded.source, 'image_size': loaded.image_size,
            'num_classes': loaded.num_classes, 'results': results, 'skipped': skipped}


# --- CLI ------------------------------------------------------------------------------------

def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """--checkpoint / --model, shared by the vit_jax CLIs that load a model."""
    parser.add_argument('--checkpoint', required=True,
                        help='npz file, training workdir, timm/HF/big_vision checkpoint or catalogue name')
    parser.add_argument('--model', default=None, choices=sorted(MODEL_CONFIGS), metavar='NAME',
                        help='override the architecture inferred from the checkpoint (e.g. ViT-B_16)')


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='vit-predict', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='+', help='image files, folders (searched recursively) or globs')
    add_checkpoint_args(parser)
    parser.add_argument('--labels', default=None,
                        help='imagenet2012 | imagenet21k | a text file with one label per line '
                             '(default: the workdir class names, or the list matching the head size)')
    parser.add_argument('--top-k', type=int, default=5, help='how many classes to show per image')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--crop-fraction', type=float, default=None,
                        help='resize to image_size / fraction, then take the central image_size crop '
                             '(default: what a training workdir used, else resize the whole image, '
                             'as the original evaluation)')
    parser.add_argument('--json', action='store_true', help='print one JSON document to stdout')
    return parser


def format_text(doc: dict) -> str:
    lines = []
    for r in doc['results']:
        lines.append(r['path'])
        lines += [f'  {p["probability"]:7.2%}  {p["label"]}' for p in r['predictions']]
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`vit-predict`; returns 1 when no image could be read, raises on bad input."""
    args = _parser().parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        raise ValueError('--top-k and --batch-size must be >= 1')
    paths = find_images(args.inputs)
    loaded = load_model(args.checkpoint, args.model)
    from vit_jax import input_pipeline
    names = input_pipeline.load_labels(args.labels) if args.labels else (
        loaded.class_names or default_labels(loaded.num_classes))
    doc = predict_files(loaded, paths, k=args.top_k, batch_size=args.batch_size,
                        crop_fraction=args.crop_fraction, class_names=names,
                        progress=len(paths) > args.batch_size)   # on stderr
    print(json.dumps(doc, indent=2) if args.json else format_text(doc))
    if not doc['results']:
        print('vit-predict: error: none of the images could be read', file=sys.stderr)
        return 1
    return 0


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`vit-predict`): exit 2 with one line on bad input."""
    sys.exit(cli.run_cli('vit-predict', lambda: main(argv)))


if __name__ == '__main__':
    run()
