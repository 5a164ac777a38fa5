"""Few-shot linear evaluation (paper §4.1): frozen representations + closed-form least squares.

For each n in `shots` (default 1, 5, 10, 25), n training images per class are embedded with the
frozen model (its pre-logits: the class token, or the `pre_logits` layer when the model has a
`representation_size`, i.e. everything except the head), features are standardised, a
constant bias feature is appended, and a ridge regression to {-1, 1} one-hot targets is solved
in closed form; test accuracy is the argmax of its predictions (as big_vision's few-shot
evaluator, whose default regulariser 2**10 is used).

From the command line (any `config.dataset` of vit-train: a tfds name, 'digits', a folder
`root/{train,test}/<class>/<image>` or a CSV; eval preprocessing at the model's resolution):

    python -m vit_jax.fewshot --checkpoint ViT-B_16.npz --dataset cifar10 --shots 1 5 10 25
    python -m vit_jax.fewshot --checkpoint workdir/ --dataset my_images/ --json

During training (`FewShotEvaluator` embeds only the sampled support set, once per call):

    evaluator = FewShotEvaluator(model, train_images, train_labels, test_images, test_labels)
    metrics = evaluator(params)            # {'fewshot/1shot': 0.43, ..., 'fewshot/25shot': 0.81}
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import cli, config_util, input_pipeline
from vit_jax.checkpoint import facts, loader
from vit_jax.configs import common
from vit_jax.errors import DataError
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
    """Indices of a seeded random `shots` examples of every class in `labels`, class by class.

    The one support-set rule (CLI and `FewShotEvaluator`): every example gets a random key from
    `seed`; a class's support set is its `shots` examples with the smallest keys, in key order,
    so the first n of each class are the n-shot set and smaller sets are nested in larger ones.
    """
    labels = np.asarray(labels)
    keys = np.random.default_rng(seed).random(len(labels))
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < shots:
            raise DataError(f'class {c} has {len(idx)} training examples, fewer than {shots} shots')
        picked.append(idx[np.argsort(keys[idx], kind='stable')[:shots]])
    return np.concatenate(picked)


def support_accuracies(support_x: np.ndarray, support_y: np.ndarray, test_x: np.ndarray,
                       test_y: np.ndarray, shots: Iterable[int] = SHOTS, l2_reg: float = L2_REG
                       ) -> dict[int, float]:
    """{n: accuracy} where the n-shot set is the first n examples of every class of the support set."""
    support_y = np.asarray(support_y)
    rank = np.zeros(len(support_y), int)
    seen: dict[int, int] = {}
    for i, c in enumerate(support_y.tolist()):
        rank[i] = seen.get(c, 0)
        seen[c] = rank[i] + 1
    num_classes = int(max(np.max(support_y), np.max(test_y))) + 1
    return {n: fewshot_accuracy(np.asarray(support_x)[rank < n], support_y[rank < n], test_x, test_y,
                                num_classes, l2_reg) for n in sorted(shots)}


def fewshot_from_features(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                          shots: Iterable[int] = SHOTS, l2_reg: float = L2_REG, seed: int = 0
                          ) -> dict[int, float]:
    """{shots: accuracy}, support sets drawn from the training set by `sample_shots` (nested)."""
    shots = sorted(shots)
    idx = sample_shots(train_y, shots[-1], seed)
    return support_accuracies(np.asarray(train_x)[idx], np.asarray(train_y)[idx], test_x, test_y,
                              shots, l2_reg)


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

    The support set (`support_images` / `support_labels`: max(shots) images of every class, in the
    order `sample_shots` drew them, so that the first n of each class are the n-shot set) and the
    test images are held in memory as preprocessed arrays; each call embeds them with `params`.
    `from_config` samples the support set (once) and reads the test images of a data set.
    """

    def __init__(self, model: VisionTransformer, support_images: np.ndarray, support_labels: np.ndarray,
                 test_images: np.ndarray, test_labels: np.ndarray, *, shots: Sequence[int] = SHOTS,
                 l2_reg: float = L2_REG, batch_size: int = 64, prefix: str = 'fewshot'):
        self.shots = sorted(shots)
        self.train_images, self.train_labels = np.asarray(support_images), np.asarray(support_labels)
        self.test_images, self.test_labels = np.asarray(test_images), np.asarray(test_labels)
        self.l2_reg, self.prefix = l2_reg, prefix
        self.represent = make_representation_fn(model, batch_size)

    @classmethod
    def from_config(cls, config: Any, model: VisionTransformer, *, shots: Sequence[int] = SHOTS,
                    max_eval: int = 2_000, l2_reg: float = L2_REG, seed: int = 0) -> FewShotEvaluator:
        """The evaluator of `config.dataset` (any source, eval preprocessing at `config.pp.crop`):
        max(shots) training images per class (`support_set`) and the first `max_eval` test images."""
        support_x, support_y = support_set(config, max(shots), seed)
        test = list(itertools.islice(input_pipeline.eval_examples(config, 'test'), max_eval))
        if not test:
            raise DataError(f'few-shot data set {config_util.get(config, "dataset")!r}: the test split is '
                            'empty')
        test_x, test_y = np.stack([x for x, _ in test]), np.array([y for _, y in test])
        return cls(model, support_x, support_y, test_x, test_y, shots=shots, l2_reg=l2_reg)

    def __call__(self, params: Any) -> dict[str, float]:
        params = params.get('params', params) if hasattr(params, 'get') else params
        acc = support_accuracies(self.represent(params, self.train_images), self.train_labels,
                                 self.represent(params, self.test_images), self.test_labels,
                                 self.shots, self.l2_reg)
        return {f'{self.prefix}/{n}shot': a for n, a in acc.items()}


# --- Data: any source of vit_jax.input_pipeline, eval-preprocessed (no augmentation).

def support_set(config: Any, shots: int, seed: int = 0, limit: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of `sample_shots` on the training split of `config.dataset` (only those decoded).

    `limit`: draw from the first `limit` training examples only (a quick look at a huge data set).
    """
    labels = input_pipeline.split_labels(config, 'train')[:limit]
    if not len(labels):
        raise DataError(f'the training split of {config_util.get(config, "dataset")!r} has no examples')
    idx = sample_shots(labels, shots, seed)
    where = np.argsort(idx)                        # eval_examples yields in stored order
    images = np.empty((len(idx),), object)
    examples = input_pipeline.eval_examples(config, 'train', np.sort(idx))
    for slot, (image, _) in zip(where, examples, strict=True):
        images[slot] = image
    return np.stack(list(images)), labels[idx]


def embed(represent: Callable[[Any, np.ndarray], np.ndarray], params: Any,
          examples: Iterable[tuple[np.ndarray, int]], batch_size: int, limit: int | None = None,
          where: str = 'the test split') -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of up to `limit` (image, label) examples, embedded batch by batch."""
    from tqdm import tqdm
    feats, labels, batch = [], [], []
    bounds = [n for n in (len(examples) if hasattr(examples, '__len__') else None, limit) if n is not None]
    total = min(bounds, default=None)   # the bar counts what will be embedded
    for image, label in tqdm(itertools.islice(examples, limit), desc='embedding', unit='img',
                             file=sys.stderr, leave=False, total=total):
        batch.append(image)
        labels.append(label)
        if len(batch) == batch_size:
            feats.append(represent(params, np.stack(batch)))
            batch = []
    if batch:
        feats.append(represent(params, np.stack(batch)))
    if not feats:
        raise DataError(f'{where} has no examples')
    return np.concatenate(feats), np.asarray(labels)


def _parser() -> argparse.ArgumentParser:
    parser = cli.argument_parser('vit-fewshot', __doc__.split('\n\n')[0])
    facts.add_checkpoint_args(parser)
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument('--dataset', help="tfds name (e.g. cifar10), 'digits', a folder or a CSV file, as "
                                        'config.dataset of vit-train')
    data.add_argument('--folder', help='same as --dataset: root/{train,test}/<class>/<image>')
    parser.add_argument('--data-dir', default=None, help='tfds data_dir')
    parser.add_argument('--manual-dir', default=None, help='tfds manual download directory')
    parser.add_argument('--train-split', default=None, help='tfds split [the data set preset, else train]')
    parser.add_argument('--test-split', default=None, help='tfds split [the data set preset, else test]')
    parser.add_argument('--shots', type=cli.positive_int, nargs='+', default=list(SHOTS),
                        help='examples per class')
    parser.add_argument('--max-train', type=cli.positive_int, default=None,
                        help='draw the support set from the first this many training examples only')
    parser.add_argument('--max-test', type=cli.positive_int, default=10000,
                        help='evaluate on at most this many')
    parser.add_argument('--l2-reg', type=cli.non_negative_float, default=L2_REG,
                        help='ridge regularisation of the closed-form least squares')
    parser.add_argument('--seed', type=int, default=0, help='of the support set sample')
    parser.add_argument('--batch-size', type=cli.positive_int, default=64, help='images per forward pass')
    parser.add_argument('--json', action='store_true', help='print {shots: accuracy} as JSON')
    cli.add_max_pixels_arg(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; user errors raise (ValueError / KeyError / OSError), `run` turns them into exit 2."""
    args = _parser().parse_args(argv)
    loaded = loader.load_model(args.checkpoint, facts.from_args(args))
    size = loaded.image_size
    dataset = args.dataset or args.folder
    config = (common.with_dataset(common.get_config(), dataset) if dataset in common.DATASET_PRESETS
              else common.get_config())
    config.dataset = dataset
    config.pp.crop = size   # eval preprocessing at the model's resolution: a whole-image resize
    config.pp.eval_crop = 'resize'
    config.pp.max_image_pixels = args.max_image_pixels
    config.update(dict(tfds_data_dir=args.data_dir, tfds_manual_dir=args.manual_dir))
    for key, value in (('train', args.train_split), ('test', args.test_split)):
        if value:
            config.pp[key] = value
    train_x, train_y = support_set(config, max(args.shots), args.seed, args.max_train)
    represent = make_representation_fn(loaded.model, args.batch_size)
    test_f, test_y = embed(represent, loaded.params, input_pipeline.eval_examples(config, 'test'),
                           args.batch_size, args.max_test, f'the test split of {config.dataset!r}')
    print(f'{len(train_x)} support / {len(test_f)} test images, {len(np.unique(train_y))} classes, '
          f'{size} px', file=sys.stderr)
    acc = support_accuracies(represent(loaded.params, train_x), train_y, test_f, test_y,
                             shots=args.shots, l2_reg=args.l2_reg)
    if args.json:
        print(json.dumps({str(k): v for k, v in acc.items()}))
    else:
        for n, a in acc.items():
            print(f'{n:3d}-shot accuracy: {a:.2%}')
    return 0


def run(argv: Sequence[str] | None = None) -> None:
    """Console entry point (`vit-fewshot`, `python -m vit_jax.fewshot`)."""
    sys.exit(cli.run_cli('vit-fewshot', lambda: main(argv)))


if __name__ == '__main__':
    run()
