"""`vit-predict`: classify image files, folders or globs with a ViT checkpoint.

    vit-predict photos/ cat.jpg 'more/*.png' --checkpoint ViT-B_16_imagenet2012.npz
    vit-predict img.jpg --checkpoint workdir/            # a `vit-train` workdir (its class names)
    vit-predict img.jpg --checkpoint ViT-B_16 --labels imagenet21k --top-k 3 --json
    vit-predict gs://bucket/imgs/ --checkpoint gs://bucket/run

`--checkpoint` is anything the one loader reads (`vit_jax.checkpoint.loader`): a public `.npz`,
a training workdir, a timm / Hugging Face / big_vision checkpoint or a catalogue name, local or
in a bucket. Images of any size are decoded and resized exactly as the training pipeline's eval
split (`vit_jax.preprocessing`): bilinear resize to the checkpoint's resolution (or a workdir's
center crop), then (x - 127.5) / 127.5. Unreadable images are reported and skipped.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vit_jax import cli, images, labels, preprocessing
from vit_jax.checkpoint import facts, loader
from vit_jax.checkpoint.loader import LoadedModel
from vit_jax.errors import UserError

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


def top_k(logits: np.ndarray, k: int, class_names: Sequence[str] | None,
          normalize: Callable[[np.ndarray], np.ndarray] | None = None) -> list[list[dict]]:
    """Per row, the k most probable classes as {rank, index, label, probability}; probabilities by
    `normalize` (default: softmax)."""
    probs = (np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)) if normalize is None
             else np.asarray(normalize(logits)))
    k = min(k, probs.shape[-1])
    order = np.argsort(-probs, axis=-1, kind='stable')[:, :k]
    return [[{'rank': r + 1, 'index': int(i),
              'label': class_names[i] if class_names else str(i),
              'probability': float(p[i])} for r, i in enumerate(row)]
            for p, row in zip(probs, order, strict=True)]


def score_files(paths: Sequence[str], batches: Callable[[Callable[[str, str], None]], Iterable],
                score: Callable[[np.ndarray], np.ndarray], k: int, names: Sequence[str] | None,
                progress: bool = False, normalize: Callable[[np.ndarray], np.ndarray] | None = None
                ) -> tuple[list[dict], list[dict]]:
    """`score` (model inputs -> logits) over `batches(on_error)` of (paths, inputs) (see
    `preprocessing.image_batches`): per image its top k (probabilities: `top_k`'s `normalize`), and the
    unreadable files (reported on stderr, skipped), with a progress bar on stderr."""
    skipped: list[dict] = []

    def on_error(path: str, message: str) -> None:
        skipped.append({'path': path, 'error': message})
        print(f'skipped {path}: {message}', file=sys.stderr)

    results = []
    bar = tqdm(total=len(paths), unit='img', file=sys.stderr) if progress else None
    for batch_paths, batch in batches(on_error=on_error):
        for path, preds in zip(batch_paths, top_k(score(batch), k, names, normalize), strict=True):
            results.append({'path': path, 'predictions': preds})
        if bar is not None:
            bar.update(len(batch_paths))
    if bar is not None:
        bar.update(len(paths) - bar.n)
        bar.close()
    return results, skipped


def predict_files(loaded: LoadedModel, paths: Sequence[str], *, k: int = 5, batch_size: int = 32,
                  crop_fraction: float | None = None, class_names: Sequence[str] | None = None,
                  progress: bool = False, max_pixels: int = images.MAX_PIXELS) -> dict:
    """Classifies `paths`; returns the `--json` document: {results: [...], skipped: [...], ...}."""
    if loaded.num_classes is None:
        raise UserError(f'{loaded.source}: the checkpoint has no classification head')
    if getattr(loaded.model, 'classifier', 'gap') in ('unpooled', 'token_unpooled'):   # a Mixer pools
        raise UserError(f'{loaded.source}: classifier={loaded.model.classifier!r} gives per-token '
                         'outputs, not one prediction per image')
    names = class_names if class_names is not None else loaded.class_names
    if names is not None and len(names) != loaded.num_classes:
        raise UserError(f'{len(names)} labels for a {loaded.num_classes}-class head')
    crop_fraction = crop_fraction if crop_fraction is not None else loaded.crop_fraction
    batches = functools.partial(preprocessing.image_batches, paths, loaded.image_size, batch_size,
                                crop_fraction, max_pixels=max_pixels)
    results, skipped = score_files(paths, batches, make_predict_fn(loaded, batch_size), k, names, progress)
    return {'checkpoint': loaded.source, 'image_size': loaded.image_size,
            'num_classes': loaded.num_classes, 'results': results, 'skipped': skipped}


# --- CLI ------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = cli.argument_parser('vit-predict', __doc__.split('\n\n')[0])
    parser.add_argument('inputs', nargs='+', help='image files, folders (searched recursively) or globs')
    facts.add_checkpoint_args(parser)
    parser.add_argument('--labels', default=None,
                        help='imagenet2012 | imagenet21k | a text file with one label per line '
                             '(default: the workdir class names, or the list matching the head size)')
    parser.add_argument('--top-k', type=cli.positive_int, default=5,
                        help='how many classes to show per image')
    parser.add_argument('--batch-size', type=cli.positive_int, default=32, help='images per forward pass')
    parser.add_argument('--crop-fraction', type=float, default=None,
                        help='resize to image_size / fraction, then take the central image_size crop '
                             '(default: what a training workdir used, else resize the whole image, '
                             'as the original evaluation)')
    parser.add_argument('--json', action='store_true', help='print one JSON document to stdout')
    cli.add_max_pixels_arg(parser)
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
    files = images.find_images(args.inputs)
    loaded = loader.load_model(args.checkpoint, facts.from_args(args))
    names = labels.load_labels(args.labels) if args.labels else (
        loaded.class_names or labels.default_labels(loaded.num_classes))
    doc = predict_files(loaded, files, k=args.top_k, batch_size=args.batch_size,
                        crop_fraction=args.crop_fraction, class_names=names,
                        progress=len(files) > args.batch_size,   # on stderr
                        max_pixels=args.max_image_pixels)
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
