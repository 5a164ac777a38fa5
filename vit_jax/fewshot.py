"""Few-shot linear evaluation (paper §4.1): frozen representations + closed-form least squares.

For each n in `shots` (default 1, 5, 10, 25), n training images per class are embedded with the
frozen model (its pre-logits: the class token, or the `pre_logits` layer when the model has a
`representation_size`, i.e. everything except the head), features are standardised, a
constant bias feature is appended, and a ridge regression to {-1, 1} one-hot targets is solved
in closed form; test accuracy is the argmax of its predictions (as big_vision's few-shot
evaluator, whose default regulariser 2**10 is used).

From the command line (a tfds data set, or a folder `root/{train,test}/<class>/<image>`):

    python -m vit_jax.fewshot --checkpoint ViT-B_16.npz --dataset cifar10 --shots 1 5 10 25
    python -m vit_jax.fewshot --checkpoint workdir/ --folder my_images/ --json

During training (`FewShotEvaluator` embeds only the sampled support set, once per call):

    evaluator = FewShotEvaluator(model, train_images, train_labels, test_images, test_labels)
    metrics = evaluator(params)            # {'fewshot/1shot': 0.43, ..., 'fewshot/25shot': 0.81}
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import predict
from vit_jax.models import VisionTransformer

SHOTS = (1, 5, 10, 25)
L2_REG = 2.0 ** 10
_BIAS = 100.0    # large constant feature: the bias is (almost) not regularised


def fit_least_squares(x: np.ndarray, y: np.ndarray, num_classes: int, l2_reg: float = L2_REG
                      ) -> Callable[[np.ndarray], np.ndarray]:
    """Ridge regression of features x [n, d] to {-1, 1} one-hot targets of labels y [n].

    Returns `predict(x_test) -> scores [m, num_classes]`. Solved in whichever of the primal
    (d x d) or dual (n x n) forms is smaller.
    """
    x = np.asarray(x, np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-5
    prep = lambda z: np.pad((np.asarray(z, np.float64) - mean) / std, ((0, 0), (0, 1)),  # noqa: E731
                            constant_values=_BIAS)
    xb = prep(x)
    targets = 2.0 * np.eye(num_classes)[np.asarray(y)] - 1.0
    n, d = xb.shape
    if n <= d:
        w = xb.T @ np.linalg.solve(xb @ xb.T + l2_reg * np.eye(n), targets)
    else:
        w = np.linalg.solve(xb.T @ xb + l2_reg * np.eye(d), xb.T @ targets)
    return lambda z: prep(z) @ w


def fewshot_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                     num_classes: int | None = None, l2_reg: float = L2_REG) -> float:
    """Top-1 test accuracy of the least-squares classifier fitted on (train_x, train_y)."""
    if num_classes is None:
        num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    scores = fit_least_squares(train_x, train_y, num_classes, l2_reg)(test_x)
    return float(np.mean(np.argmax(scores, axis=-1) == np.asarray(test_y)))


def sample_shots(labels: np.ndarray, shots: int, seed: int = 0) -> np.ndarray:
    """Indices of `shots` random examples of every class present in `labels` (sorted)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < shots:
            raise ValueError(f'class {c} has {len(idx)} training examples, fewer than {shots} shots')
        picked.append(rng.choice(idx, shots, replace=False))
    return np.sort(np.concatenate(picked))


def fewshot_from_features(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                          shots: Iterable[int] = SHOTS, l2_reg: float = L2_REG, seed: int = 0
                          ) -> dict[int, float]:
    """{shots: accuracy} with nested support sets (the n-shot set contains the smaller ones)."""
    shots = sorted(shots)
    num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    order = sample_shots(train_y, shots[-1], seed)
    rank = _rank_within_class(np.asarray(train_y)[order], seed)
    results = {}
    for n in shots:
        idx = order[rank < n]
        results[n] = fewshot_accuracy(np.asarray(train_x)[idx], np.asarray(train_y)[idx],
                                      test_x, test_y, num_classes, l2_reg)
    return results


def _rank_within_class(labels: np.ndarray, seed: int) -> np.ndarray:
    """A random order of the examples within each class (0, 1, ...), for nested shot sets."""
    rng = np.random.default_rng(seed + 1)
    rank = np.empty(len(labels), int)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = rng.permutation(len(idx))
    return rank


# --- Representations of a model -------------------------------------------------------------

def representation_model(model: VisionTransformer) -> VisionTransformer:
    """The same network without its head: outputs the pre-logits representation."""
    return model.clone(num_classes=None)


def make_representation_fn(model: VisionTransformer, batch_size: int = 64
                           ) -> Callable[[Any, np.ndarray], np.ndarray]:
    """jit-compiled `(params, images) -> pre-logits features [n, d]`, in fixed-size batches."""
    features_model = representation_model(model)
    apply = jax.jit(lambda p, x: features_model.apply(
        {'params': {k: v for k, v in p.items() if k != 'head'}}, x, train=False))

    def represent(params: Any, images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start:start + batch_size], np.float32)
            n = len(batch)
            if n < batch_size:
                batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)])
            out.append(np.asarray(apply(params, jnp.asarray(batch)), np.float32)[:n])
        return np.concatenate(out)

    return represent


class FewShotEvaluator:
    """Few-shot accuracies of the current params; for use as an evaluator during training.

    The support set (max(shots) images per class, sampled once with `seed`) and the test
    images are held in memory as preprocessed arrays; each call embeds them with `params`.
    """

    def __init__(self, model: VisionTransformer, train_images: np.ndarray, train_labels: np.ndarray,
                 test_images: np.ndarray, test_labels: np.ndarray, *, shots: Sequence[int] = SHOTS,
                 l2_reg: float = L2_REG, seed: int = 0, batch_size: int = 64, prefix: str = 'fewshot'):
        self.shots = sorted(shots)
        idx = sample_shots(train_labels, self.shots[-1], seed)
        self.train_images, self.train_labels = np.asarray(train_images)[idx], np.asarray(train_labels)[idx]
        self.test_images, self.test_labels = np.asarray(test_images), np.asarray(test_labels)
        self.l2_reg, self.seed, self.prefix = l2_reg, seed, prefix
        self.represent = make_representation_fn(model, batch_size)

    def __call__(self, params: Any) -> dict[str, float]:
        params = params.get('params', params) if hasattr(params, 'get') else params
        acc = fewshot_from_features(self.represent(params, self.train_images), self.train_labels,
                                    self.represent(params, self.test_images), self.test_labels,
                                    self.shots, self.l2_reg, self.seed)
        return {f'{self.prefix}/{n}shot': a for n, a in acc.items()}


def fewshot_evaluate(model: VisionTransformer, params: Any, train_images: np.ndarray,
                     train_labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray, *,
                     shots: Sequence[int] = SHOTS, l2_reg: float = L2_REG, seed: int = 0,
                     batch_size: int = 64) -> dict[int, float]:
    """{shots: test accuracy} of the paper's few-shot linear evaluation of `params`."""
    evaluator = FewShotEvaluator(model, train_images, train_labels, test_images, test_labels,
                                 shots=shots, l2_reg=l2_reg, seed=seed, batch_size=batch_size, prefix='')
    return {int(k.split('/')[-1].removesuffix('shot')): v for k, v in evaluator(params).items()}


# --- Data for the CLI: streamed, so that only the support set's images and the test set's
# features are ever held in memory (a 224 px float32 image is 0.6 MB).

Example = tuple[int, Callable[[], np.ndarray]]   # (label, load the preprocessed image)


def folder_examples(root: str, split: str, size: int, classes: Sequence[str] | None = None
                    ) -> tuple[list[Example], list[str]]:
    """Examples of `root/split/<class>/<image>` (classes sorted by name, or as given)."""
    base = os.path.join(root, split)
    if not os.path.isdir(base):
        raise FileNotFoundError(f'{base} does not exist (expected {root}/{{train,test}}/<class>/<image>)')
    found = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    if not found:
        raise FileNotFoundError(f'{base} has no class folders')
    classes = list(classes or found)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f'{os.path.join(base, unknown[0])} is not one of the training classes')
    examples = [(classes.index(d), lambda f=f: predict.load_image(f, size))
                for d in found for f in predict.find_images([os.path.join(base, d)])]
    return examples, classes


def tfds_examples(name: str, split: str, size: int, data_dir: str | None = None) -> Iterable[Example]:
    """Examples of a tfds split (decoded by tfds, preprocessed as in vit-predict when loaded)."""
    import tensorflow_datasets as tfds
    from PIL import Image
    ds = tfds.load(name, split=split, as_supervised=True, data_dir=data_dir, shuffle_files=False)
    for image, label in tfds.as_numpy(ds):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        yield int(label), lambda pil=pil: predict.preprocess(pil, size)


def _loaded_or_skipped(examples: Iterable[Example]) -> Iterable[tuple[int, np.ndarray]]:
    for label, load in examples:
        try:
            yield label, load()
        except (OSError, ValueError) as e:
            print(f'skipped an unreadable image: {type(e).__name__}: {e}', file=sys.stderr)


def first_shots(examples: Iterable[Example], shots: int, limit: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """The first `shots` readable images of every class, looking at most at `limit` examples."""
    kept: dict[int, list[np.ndarray]] = {}
    seen = 0
    for label, load in examples:
        if limit is not None and seen >= limit:
            break
        seen += 1
        if len(kept.setdefault(label, [])) < shots:
            kept[label].extend(image for _, image in _loaded_or_skipped([(label, load)]))
    if not kept:
        raise ValueError('no readable training images')
    labels = np.concatenate([[c] * len(v) for c, v in sorted(kept.items())]).astype(int)
    return np.stack([im for _, v in sorted(kept.items()) for im in v]), labels


def embed(represent: Callable[[Any, np.ndarray], np.ndarray], params: Any, examples: Iterable[Example],
          batch_size: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of up to `limit` examples, embedded batch by batch."""
    from tqdm import tqdm
    feats, labels, batch, batch_labels = [], [], [], []
    total = min(len(examples), limit or len(examples)) if isinstance(examples, Sequence) else limit
    stream = _loaded_or_skipped(itertools.islice(examples, limit))
    for label, image in tqdm(stream, desc='embedding', unit='img', file=sys.stderr, leave=False, total=total):
        batch.append(image)
        batch_labels.append(label)
        if len(batch) == batch_size:
            feats.append(represent(params, np.stack(batch)))
            labels += batch_labels
            batch, batch_labels = [], []
    if batch:
        feats.append(represent(params, np.stack(batch)))
        labels += batch_labels
    if not feats:
        raise ValueError('no readable test images')
    return np.concatenate(feats), np.asarray(labels)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m vit_jax.fewshot', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_checkpoint_args(parser)
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument('--dataset', help='tfds name, e.g. cifar10 (train/test splits as in --train-split)')
    data.add_argument('--folder', help='root/{train,test}/<class>/<image>')
    parser.add_argument('--data-dir', default=None, help='tfds data_dir')
    parser.add_argument('--train-split', default='train')
    parser.add_argument('--test-split', default='test')
    parser.add_argument('--shots', type=int, nargs='+', default=list(SHOTS))
    parser.add_argument('--max-train', type=int, default=None,
                        help='look at most at this many training examples for the support set '
                             '(the first max(shots) images of each class are used)')
    parser.add_argument('--max-test', type=int, default=10000, help='evaluate on at most this many')
    parser.add_argument('--l2-reg', type=float, default=L2_REG)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--json', action='store_true', help='print {shots: accuracy} as JSON')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow decodes images: keep it quiet
    try:
        if min(args.shots) < 1:
            raise ValueError(f'--shots must be >= 1, got {args.shots}')
        loaded = predict.load_model(args.checkpoint, args.model)
        size = loaded.image_size
        if args.folder:
            train, classes = folder_examples(args.folder, 'train', size)
            test, _ = folder_examples(args.folder, 'test', size, classes)
            np.random.default_rng(args.seed).shuffle(test)   # so that --max-test samples every class
        else:
            train = tfds_examples(args.dataset, args.train_split, size, args.data_dir)
            test = tfds_examples(args.dataset, args.test_split, size, args.data_dir)
        train_x, train_y = first_shots(train, max(args.shots), args.max_train)
        represent = make_representation_fn(loaded.model, args.batch_size)
        test_f, test_y = embed(represent, loaded.params, test, args.batch_size, args.max_test)
        print(f'{len(train_x)} support / {len(test_f)} test images, {len(np.unique(train_y))} classes, '
              f'{size} px', file=sys.stderr)
        acc = fewshot_from_features(represent(loaded.params, train_x), train_y, test_f, test_y,
                                    shots=args.shots, l2_reg=args.l2_reg, seed=args.seed)
    except (OSError, ValueError, KeyError) as e:
        print(f'vit_jax.fewshot: error: {e}', file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({str(k): v for k, v in acc.items()}))
    else:
        for n, a in acc.items():
            print(f'{n:3d}-shot accuracy: {a:.2%}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
