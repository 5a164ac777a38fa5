"""`vit-analyze`: the paper's inspection figures (Dosovitskiy et al., 2020, Figs. 6 and 7).

    vit-analyze dog.jpg 'val/*.jpg' --checkpoint ViT-B_16.npz [--output-dir fig/]

writes PNG figures and `analysis.json` (the numbers behind every figure, and each image's
predicted class) to `--output-dir` (default: `analysis/` in a training workdir, else
`<checkpoint>_analysis/` beside a checkpoint file, or in the current directory for a name):

- `attention_rollout.png`: attention rollout (Abnar & Zuidema, 2020) of the class token over
  the patches, overlaid on each input image, titled with its predicted class (Fig. 6). Per
  layer, heads are averaged, the residual is accounted for as 0.5·A + 0.5·I (rows renormalised)
  and the layers are multiplied.
- `attention_maps.png`: per-layer, per-head attention of the class token (or, without one, the
  mean over queries) overlaid on the first image.
- `mean_attention_distance.png`: per head, the attention-weighted mean distance in input pixels
  between query and key patch centres (patch tokens only, weights renormalised over patch
  keys), averaged over queries and images, vs. depth (Fig. 7 right).
- `position_embedding_similarity.png`: cosine similarity of each patch's position embedding
  with every other patch's, one tile per patch (Fig. 7 center).
- `embedding_filters.png`: the first principal components of the patch-embedding filters as
  RGB tiles (Fig. 7 left; not for hybrids, whose embedding reads CNN features).

The figures about parameters need no image. Few-shot evaluation lives in `vit_jax.fewshot`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from vit_jax import cli, labels, paths, preprocessing
from vit_jax.checkpoint import facts, loader, workdir
from vit_jax.errors import UserError
from vit_jax.images import MAX_PIXELS, find_images
from vit_jax.models import MlpMixer, posemb_sincos_2d
from vit_jax.predict import top_k

# --- The numbers ----------------------------------------------------------------------------


def attention_rollout(attention: ArrayLike, residual: float = 0.5) -> jax.Array:
    """Rollout of attention [L, (B,) H, N, N] -> [(B,) N, N] (Abnar & Zuidema, 2020).

    Per layer: mean over heads, then `residual`·I + (1 - `residual`)·A with rows renormalised;
    the layers are multiplied from the first: R = Â_L ··· Â_1. (jnp: runs inside jit too.)
    """
    a = jnp.mean(jnp.asarray(attention, jnp.float32), axis=-3)
    a = residual * jnp.eye(a.shape[-1]) + (1.0 - residual) * a
    a = a / jnp.sum(a, axis=-1, keepdims=True)
    rollout = a[0]
    for layer in a[1:]:
        rollout = layer @ rollout
    return rollout


def token_map(matrix: ArrayLike, grid: int, num_prefix_tokens: int) -> jax.Array:
    """What the output attends to, as a [..., grid, grid] map over patches.

    The class token's row when there is one, else the mean over all query rows.
    """
    matrix = jnp.asarray(matrix)
    if num_prefix_tokens:
        row = matrix[..., 0, num_prefix_tokens:]
    else:
        row = jnp.mean(matrix, axis=-2)
    return row.reshape(row.shape[:-1] + (grid, grid))


def patch_distances(grid: int, stride: int) -> np.ndarray:
    """[grid², grid²] distances in input pixels between patch centres (row-major patches)."""
    yx = np.stack(np.meshgrid(np.arange(grid), np.arange(grid), indexing='ij'), -1).reshape(-1, 2)
    return stride * np.linalg.norm(yx[:, None, :] - yx[None, :, :], axis=-1)


def attention_distance(attention: ArrayLike, grid: int, stride: int, num_prefix_tokens: int) -> jax.Array:
    """Per layer, image and head [L, B, H]: attention-weighted query-key distance in pixels.

    `attention` is [L, B, H, N, N]; only patch tokens count, each query's weights renormalised
    over the patch keys, averaged over the queries. (jnp: runs inside jit too.)
    """
    p = num_prefix_tokens
    w = jnp.asarray(attention, jnp.float32)[..., p:, p:]
    if w.shape[-1] != grid * grid:
        raise ValueError(f'attention has {w.shape[-1]} patch tokens, expected grid {grid}² = {grid * grid}')
    w = w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1e-12)
    return jnp.mean(jnp.sum(w * patch_distances(grid, stride).astype(np.float32), axis=-1), axis=-1)


def mean_attention_distance(attention: ArrayLike, grid: int, stride: int,
                            num_prefix_tokens: int) -> np.ndarray:
    """Per layer and head [L, H]: `attention_distance` averaged over images (paper Fig. 7).

    `attention` is [L, H, N, N] (one image) or [L, B, H, N, N].
    """
    attention = jnp.asarray(attention)
    if attention.ndim == 4:
        attention = attention[:, None]
    return np.asarray(jnp.mean(attention_distance(attention, grid, stride, num_prefix_tokens), axis=1))


def position_embedding_similarity(pos_embedding: np.ndarray, num_prefix_tokens: int) -> np.ndarray:
    """Cosine similarity of patch position embeddings, [g, g, g, g]: tile (i, j) is the map of
    patch (i, j)'s similarity with every patch."""
    pe = np.asarray(pos_embedding, np.float64).reshape(-1, np.shape(pos_embedding)[-1])[num_prefix_tokens:]
    grid = int(round(len(pe) ** 0.5))
    if grid * grid != len(pe):
        raise ValueError(f'{len(pe)} patch position embeddings do not form a square grid')
    pe = pe / np.maximum(np.linalg.norm(pe, axis=-1, keepdims=True), 1e-12)
    return (pe @ pe.T).reshape(grid, grid, grid, grid)


def embedding_filter_components(kernel: np.ndarray, num: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of the patch-embedding filters (kernel [ph, pw, C, D], D filters).

    Returns (components [num, ph, pw, C], explained-variance ratios [num]).
    """
    kernel = np.asarray(kernel, np.float64)
    ph, pw, c, d = kernel.shape
    filters = kernel.reshape(ph * pw * c, d).T               # one row per filter
    filters = filters - filters.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(filters, full_matrices=False)
    num = min(num, len(s))
    var = s ** 2
    return vt[:num].reshape(num, ph, pw, c), var[:num] / var.sum()


# --- Running the model ----------------------------------------------------------------------

def has_attention(loaded: loader.LoadedModel) -> bool:
    """Whether the model attends (a ViT) rather than mixing tokens with an MLP (MLP-Mixer)."""
    return not isinstance(loaded.model, MlpMixer)


def make_attention_stats_fn(loaded: loader.LoadedModel, batch_size: int):
    """jit-compiled images [n <= batch_size] -> (distance [L, n, H], rollout maps [n, g, g],
    per-head maps of the first image [L, H, g, g], logits [n, classes] or None), reduced on the
    device so that the full attention tensor [L, B, H, N, N] never reaches host memory. Pads to
    one batch shape."""
    g, p, stride = loaded.grid, loaded.num_prefix_tokens, loaded.stride

    @jax.jit
    def stats(params, images):
        logits, attention = loaded.model.apply({'params': params}, images, train=False, return_attention=True)
        if attention is None:
            raise ValueError(f'{loaded.source}: the model has no transformer layers to inspect')
        return (attention_distance(attention, g, stride, p),
                token_map(attention_rollout(attention), g, p),
                token_map(attention[:, 0], g, p), logits if loaded.num_classes else None)

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        n = len(images)
        if n < batch_size:
            images = np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:], images.dtype)])
        distance, rollout, first, logits = jax.device_get(stats(loaded.params, images))
        return distance[:, :n], rollout[:n], first, None if logits is None else logits[:n]

    return run


# --- Figures --------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _save(fig: Any, path: str, dpi: int) -> str:
    """Writes a figure as PNG (local or gs://) and closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=dpi)
    _plt().close(fig)
    return paths.write_atomic(path, buffer.getvalue())


def _to_unit(image: np.ndarray) -> np.ndarray:
    """A [-1, 1] model input back to [0, 1] for display."""
    return np.clip((np.asarray(image) + 1.0) / 2.0, 0.0, 1.0)


def _overlay(ax, image: np.ndarray, mask: np.ndarray, title: str | None = None) -> None:
    h, w = image.shape[:2]
    ax.imshow(image)
    ax.imshow(mask / max(float(mask.max()), 1e-12), cmap='inferno', alpha=0.6,
              extent=(-0.5, w - 0.5, h - 0.5, -0.5),
              interpolation='bilinear', vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=7)


def plot_rollout(images: np.ndarray, maps: np.ndarray, titles: Sequence[str], path: str) -> str:
    """Per image: input (titled), rollout map, and input masked by the map (Fig. 6)."""
    plt = _plt()
    fig, axes = plt.subplots(len(images), 3, figsize=(7.5, 2.5 * len(images)), squeeze=False)
    for row, image, m, title in zip(axes, images, maps, titles, strict=True):
        image = _to_unit(image)
        h, w = image.shape[:2]
        row[0].imshow(image)
        row[0].set_title(title, fontsize=8)
        row[1].imshow(m, cmap='inferno')
        row[1].set_title('attention rollout', fontsize=8)
        up = np.kron(m / max(float(m.max()), 1e-12), np.ones((h // m.shape[0], w // m.shape[1])))
        row[2].imshow(image * up[..., None])
        row[2].set_title('input × rollout', fontsize=8)
        for ax in row:
            ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path, 120)


def plot_attention_maps(image: np.ndarray, maps: np.ndarray, path: str, title: str | None = None) -> str:
    """maps [L, H, g, g]: one overlay per layer (rows) and head (columns)."""
    plt = _plt()
    layers, heads = maps.shape[:2]
    fig, axes = plt.subplots(layers, heads, figsize=(1.2 * heads, 1.2 * layers + 0.3), squeeze=False)
    if title:
        fig.suptitle(title, fontsize=8)
    image = _to_unit(image)
    for layer in range(layers):
        for head in range(heads):
            _overlay(axes[layer, head], image, maps[layer, head], f'L{layer + 1} H{head + 1}')
    fig.tight_layout()
    return _save(fig, path, 100)


def plot_mean_distance(distance: np.ndarray, path: str) -> str:
    """distance [L, H]: one dot per head at its layer (Fig. 7 right)."""
    plt = _plt()
    layers, heads = distance.shape
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for head in range(heads):
        ax.scatter(np.arange(1, layers + 1), distance[:, head], s=12, label=f'head {head + 1}')
    ax.set_xlabel('network depth (layer)')
    ax.set_ylabel('mean attention distance (pixels)')
    ax.set_xticks(np.arange(1, layers + 1))
    if heads <= 16:
        ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    return _save(fig, path, 120)


def plot_position_similarity(similarity: np.ndarray, path: str) -> str:
    """similarity [g, g, g, g]: tile (i, j) shows patch (i, j)'s cosine similarity map (Fig. 7)."""
    plt = _plt()
    g = similarity.shape[0]
    side = min(max(4.0, 0.6 * g), 13.0)
    fig, axes = plt.subplots(g, g, figsize=(side + 1.5, side), squeeze=False)
    for i in range(g):
        for j in range(g):
            im = axes[i, j].imshow(similarity[i, j], cmap='viridis', vmin=-1, vmax=1)
            axes[i, j].set_axis_off()
    fig.colorbar(im, ax=axes, shrink=0.6, label='cosine similarity')
    fig.suptitle('position embedding similarity', fontsize=9)
    return _save(fig, path, 100)


def plot_filter_components(components: np.ndarray, path: str) -> str:
    """components [n, ph, pw, 3], each rescaled to [0, 1] for display (Fig. 7 left)."""
    plt = _plt()
    n = len(components)
    cols = min(7, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, c in zip(axes.flat, components, strict=False):
        lo, hi = c.min(), c.max()
        ax.imshow((c - lo) / max(hi - lo, 1e-12), interpolation='nearest')
    fig.suptitle('RGB embedding filters (first principal components)', fontsize=8)
    return _save(fig, path, 120)


# --- Putting it together --------------------------------------------------------------------

def _rounded(x: Any, digits: int = 5) -> Any:
    return np.round(np.asarray(x, np.float64), digits).tolist()


def analyze(loaded: loader.LoadedModel, image_paths: Sequence[str], output_dir: str, *,
            batch_size: int = 16, max_figure_images: int = 4, crop_fraction: float | None = None,
            progress: bool = False, max_pixels: int = MAX_PIXELS) -> dict:
    """Writes the figures and `analysis.json` to `output_dir`; returns that JSON document.

    An MLP-Mixer has no attention and no position embeddings: it gets the patch-embedding figure
    only, and asking it for attention figures (images) is a UserError that says so.
    """
    if image_paths and not has_attention(loaded):
        raise UserError(f'{loaded.source}: an MLP-Mixer has no attention maps (an MLP mixes its tokens); '
                        'run vit-analyze without --image for its patch-embedding figure')
    params = jax.device_get(loaded.params)
    p, g = loaded.num_prefix_tokens, loaded.grid
    doc: dict[str, Any] = {'checkpoint': loaded.source, 'image_size': loaded.image_size, 'grid': g,
                           'stride': loaded.stride, 'num_prefix_tokens': p, 'figures': {}}
    figures = doc['figures']
    crop_fraction = crop_fraction if crop_fraction is not None else loaded.crop_fraction

    if has_attention(loaded):
        if loaded.model.posemb == 'sincos2d':   # fixed: big_vision's sin-cos table of this grid
            pe = np.asarray(posemb_sincos_2d(g, g, loaded.model.hidden_size))
            sim = position_embedding_similarity(pe, 0)
        else:
            sim = position_embedding_similarity(params['Transformer']['posembed_input']['pos_embedding'], p)
        figures['position_embedding_similarity'] = plot_position_similarity(
            sim, paths.join(output_dir, 'position_embedding_similarity.png'))
        doc['position_embedding_similarity'] = _rounded(sim)

    kernel = np.asarray(params['embedding' if 'embedding' in params else 'stem']['kernel'])
    if kernel.shape[2] == 3:
        comps, ratio = embedding_filter_components(kernel)
        figures['embedding_filters'] = plot_filter_components(
            comps, paths.join(output_dir, 'embedding_filters.png'))
        doc['embedding_filter_explained_variance'] = _rounded(ratio)

    if image_paths:
        names, shown, rollout_maps, distance_sum, count = [], [], [], None, 0
        skipped: list[dict] = []

        def on_error(path: str, message: str) -> None:
            skipped.append({'path': path, 'error': message})
            print(f'skipped {path}: {message}', file=sys.stderr)

        batches = preprocessing.image_batches(image_paths, loaded.image_size, batch_size, crop_fraction,
                                              on_error, max_pixels=max_pixels)
        if progress:
            from tqdm import tqdm
            batches = tqdm(batches, total=-(-len(image_paths) // batch_size), unit='batch', file=sys.stderr)
        stats_fn = make_attention_stats_fn(loaded, batch_size)
        class_names = loaded.class_names or labels.default_labels(loaded.num_classes)
        predictions: dict[str, dict] = {}
        for batch_names, images in batches:
            distance, rollout, first, logits = stats_fn(images)
            distance_sum = distance.sum(axis=1) + (0 if distance_sum is None else distance_sum)
            count += len(images)
            if logits is not None:
                for name, top in zip(batch_names, top_k(logits, 1, class_names), strict=True):
                    predictions[name] = {k: top[0][k] for k in ('label', 'index', 'probability')}
            if not names:
                figures['attention_maps'] = plot_attention_maps(
                    images[0], first, paths.join(output_dir, 'attention_maps.png'),
                    _title(batch_names[0], predictions))
                doc['attention_maps_image'] = batch_names[0]
            names += batch_names
            rollout_maps += list(rollout)
            shown += list(images[:max(0, max_figure_images - len(shown))])
        doc['skipped'] = skipped
        if count:
            distance = distance_sum / count
            figures['mean_attention_distance'] = plot_mean_distance(
                distance, paths.join(output_dir, 'mean_attention_distance.png'))
            figures['attention_rollout'] = plot_rollout(
                np.stack(shown), np.stack(rollout_maps[:len(shown)]),
                [_title(n, predictions) for n in names[:len(shown)]],
                paths.join(output_dir, 'attention_rollout.png'))
            doc['num_images'] = count
            if predictions:
                doc['predictions'] = predictions
            doc['mean_attention_distance'] = _rounded(distance, 3)
            doc['attention_rollout'] = {n: _rounded(m) for n, m in zip(names, rollout_maps, strict=True)}
    paths.write_atomic(paths.join(output_dir, 'analysis.json'), json.dumps(doc))
    return doc


def _title(path: str, predictions: dict[str, dict]) -> str:
    """An image's name and, for a classifier, its predicted class."""
    found = predictions.get(path)
    return paths.name(path) + (f'\n{found["label"]} ({found["probability"]:.0%})' if found else '')


def default_output_dir(checkpoint: str) -> str:
    """Where vit-analyze writes without --output-dir: `analysis/` in a training workdir, else
    `<name>_analysis/` beside a checkpoint file, else (a catalogue name) in the current directory."""
    if workdir.is_workdir(checkpoint):
        return paths.join(checkpoint, 'analysis')
    stem = paths.name(checkpoint.rstrip('/')).removesuffix('.npz') or 'checkpoint'
    if paths.exists(checkpoint):
        return paths.join(paths.parent(checkpoint.rstrip('/')), f'{stem}_analysis')
    return f'{stem.replace("/", "_")}_analysis'


def _parser() -> argparse.ArgumentParser:
    parser = cli.argument_parser('vit-analyze', __doc__.split('\n\n')[0])
    parser.add_argument('inputs', nargs='*', metavar='IMAGES',
                        help='image files, folders (searched recursively) or globs, for the attention '
                             'figures (without them: the figures about the parameters only)')
    facts.add_checkpoint_args(parser)
    parser.add_argument('--image', action='append', default=[],
                        help='the same as an IMAGES argument (repeatable; the original flag)')
    parser.add_argument('--output-dir', default=None,
                        help="where the PNGs and analysis.json go (default: a workdir's analysis/, else "
                             '<checkpoint>_analysis/ beside the checkpoint file)')
    parser.add_argument('--batch-size', type=cli.positive_int, default=16, help='images per forward pass')
    parser.add_argument('--max-figure-images', type=cli.positive_int, default=4,
                        help='how many images the rollout figure shows (all are averaged)')
    parser.add_argument('--crop-fraction', type=float, default=None,
                        help='resize to image_size / fraction, then take the central image_size crop '
                             '(default: what a training workdir used, else resize the whole image), '
                             'as vit-predict does')
    cli.add_max_pixels_arg(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`vit-analyze`; returns 1 when none of the images could be read, raises on bad input."""
    args = _parser().parse_args(argv)
    inputs = [*args.inputs, *args.image]
    files = find_images(inputs) if inputs else []
    loaded = loader.load_model(args.checkpoint, facts.from_args(args))
    output_dir = args.output_dir or default_output_dir(args.checkpoint)
    doc = analyze(loaded, files, output_dir, batch_size=args.batch_size,
                  max_figure_images=args.max_figure_images, crop_fraction=args.crop_fraction,
                  progress=len(files) > args.batch_size, max_pixels=args.max_image_pixels)
    for name, path in doc['figures'].items():
        print(f'{name}: {path}')
    print(f'numbers: {paths.join(output_dir, "analysis.json")}')
    if 'mean_attention_distance' in doc:
        print('mean attention distance per layer (pixels, mean over heads): '
              + ' '.join(f'{np.mean(row):.1f}' for row in doc['mean_attention_distance']))
    if args.image and 'num_images' not in doc:
        print('vit-analyze: error: none of the images could be read', file=sys.stderr)
        return 1
    return 0


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`vit-analyze`): exit 2 with one line on bad input."""
    sys.exit(cli.run_cli('vit-analyze', lambda: main(argv)))


if __name__ == '__main__':
    run()
