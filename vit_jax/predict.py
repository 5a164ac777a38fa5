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
import importlib.resources
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from vit_jax import convert, hub
from vit_jax.models import MODEL_CONFIGS, VisionTransformer, get_config

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm')
# Label lists shipped in vit_jax/data/ (see vit_jax/data/README.md for their provenance).
LABEL_SETS = {'imagenet2012': 'imagenet2012.txt', 'imagenet1k': 'imagenet2012.txt',
              'imagenet21k': 'imagenet21k.txt'}
_LABELS_BY_SIZE = {1000: 'imagenet2012', 21843: 'imagenet21k'}


@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference: module, parameters and what its inputs/outputs mean."""

    model: VisionTransformer
    params: Any
    image_size: int            # side of the square input the position embeddings were made for
    stride: int                # input pixels per token along each side (patch size x stem stride)
    class_names: list[str] | None
    source: str
    crop_fraction: float | None = None   # eval center crop of a training workdir (None: resize)

    @property
    def num_classes(self) -> int | None:
        return self.model.num_classes

    @property
    def num_prefix_tokens(self) -> int:
        """1 for a class token, else 0 (the tokens before the patch tokens)."""
        return 1 if self.model.classifier in ('token', 'token_unpooled') else 0

    @property
    def grid(self) -> int:
        return self.image_size // self.stride


# --- Labels -------------------------------------------------------------------------------

def read_label_file(path: str) -> list[str]:
    """One label per line (blank lines skipped)."""
    with open(path, encoding='utf-8') as f:
        return [line.strip() for line in f if line.strip()]


def load_labels(spec: str) -> list[str]:
    """A shipped label set ('imagenet2012', 'imagenet1k', 'imagenet21k') or a text file."""
    if spec in LABEL_SETS:
        res = importlib.resources.files('vit_jax') / 'data' / LABEL_SETS[spec]
        return [line.strip() for line in res.read_text(encoding='utf-8').splitlines() if line.strip()]
    if not os.path.isfile(spec):
        raise FileNotFoundError(f'--labels {spec!r} is neither a file nor one of {sorted(LABEL_SETS)}')
    return read_label_file(spec)


def default_labels(num_classes: int | None) -> list[str] | None:
    """The shipped list matching a head size (1000 -> ImageNet-1k, 21843 -> ImageNet-21k)."""
    name = _LABELS_BY_SIZE.get(num_classes or 0)
    return load_labels(name) if name else None


# --- Checkpoints ----------------------------------------------------------------------------

def is_training_workdir(path: str) -> bool:
    """A `vit-train` workdir: config.json with a "model" entry (a Hugging Face folder has none)."""
    config = os.path.join(path, 'config.json')
    if not (os.path.isdir(path) and os.path.isfile(config)):
        return False
    try:
        with open(config, encoding='utf-8') as f:
            return 'model' in json.load(f)
    except (OSError, ValueError):
        return False


def _eval_crop_fraction(config: dict) -> float | None:
    """The eval center-crop fraction a training config used (None: whole-image resize)."""
    pp = config.get('pp') or {}
    if pp.get('eval_crop') != 'center' or not pp.get('crop'):
        return None
    return float(pp['crop']) / float(pp.get('resize') or round(pp['crop'] * 8 / 7))


def _training_workdir(path: str) -> tuple[Any, Any, list[str] | None, float | None]:
    """(model_config, params, class_names, eval crop fraction) of a `vit-train` workdir."""
    from vit_jax.train import load_trained  # Orbax, Optax: imported only for workdirs
    with open(os.path.join(path, 'config.json'), encoding='utf-8') as f:
        crop_fraction = _eval_crop_fraction(json.load(f))
    model_config, _, params, class_names = load_trained(path)
    return model_config, params, list(class_names) if class_names else None, crop_fraction


def _unwrap_params(params: Any) -> dict:
    """Accepts `{'params': tree}` (Flax variables) as well as the tree itself."""
    params = dict(params)
    if set(params) == {'params'}:
        params = dict(params['params'])
    return params


# Training-time and hardware choices that a checkpoint's config may carry but inference
# should not inherit (a bf16 or cuDNN-attention run still predicts in float32 on any machine).
_TRAINING_FIELDS = ('dtype', 'param_dtype', 'remat', 'scan_layers', 'attention_impl')


def _model_config(config: Any) -> dict:
    """The VisionTransformer fields of a saved config, less `_TRAINING_FIELDS` (and extras)."""
    if isinstance(config, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
        config = config.to_dict()
    fields = set(VisionTransformer.__dataclass_fields__) - {'parent', 'name', 'num_classes'}
    return {k: v for k, v in dict(config).items() if k in fields and k not in _TRAINING_FIELDS}


def _token_stride(model: VisionTransformer) -> int:
    """Input pixels per token side, read off the model itself (hybrid stems downsample first)."""
    probe = max(256, 64 * int(model.patches['size'][0]))
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                            jax.ShapeDtypeStruct((1, probe, probe, 3), jnp.float32))
    tokens = shapes['params']['Transformer']['posembed_input']['pos_embedding'].shape[1]
    prefix = 1 if model.classifier in ('token', 'token_unpooled') else 0
    return probe // int(round((tokens - prefix) ** 0.5))


def build_model(model_config: Any, params: Any, source: str, class_names: list[str] | None = None
                ) -> LoadedModel:
    """Builds the module for `params` (head size and resolution read from the parameters)."""
    params = _unwrap_params(params)
    head = params.get('head')
    num_classes = int(np.shape(head['kernel'])[-1]) if head is not None else None
    config = _model_config(model_config)
    # A named config (--model) may differ from the file in its pre-logits layer or class token.
    if 'pre_logits' in params:
        config['representation_size'] = int(np.shape(params['pre_logits']['kernel'])[-1])
    else:
        config['representation_size'] = None
    if 'cls' not in params and config.get('classifier', 'token') in ('token', 'token_unpooled'):
        config['classifier'] = 'gap'
    config['scan_layers'] = 'encoderblock' in params.get('Transformer', {})   # the params' layout
    model = VisionTransformer(num_classes=num_classes, **config)
    if 'Transformer' not in params or 'posembed_input' not in params['Transformer']:
        raise ValueError(f'{source}: no Transformer/posembed_input/pos_embedding in the parameters')
    stride = _token_stride(model)
    tokens = np.shape(params['Transformer']['posembed_input']['pos_embedding'])[1]
    prefix = 1 if model.classifier in ('token', 'token_unpooled') else 0
    grid = int(round((tokens - prefix) ** 0.5))
    if grid * grid != tokens - prefix:
        raise ValueError(f'{source}: pos_embedding has {tokens} tokens, not a square grid '
                         f'(+{prefix} class token) for classifier={model.classifier!r}')
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise ValueError(f'{source}: {len(class_names)} class names for a {num_classes}-class head')
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return LoadedModel(model=model, params=params, image_size=grid * stride, stride=stride,
                       class_names=class_names, source=source)


def load_model(checkpoint: str, model_name: str | None = None) -> LoadedModel:
    """Loads a checkpoint given as a file, a training workdir or a catalogue name.

    The architecture is inferred from the parameters (`vit_jax.convert.load_checkpoint`);
    `model_name` (a `vit_jax.models.MODEL_CONFIGS` key) overrides it, keeping the file's
    LayerNorm epsilon and GELU form.
    """
    if model_name is not None and model_name not in MODEL_CONFIGS:
        raise ValueError(f'--model {model_name!r} is unknown; known models: {", ".join(MODEL_CONFIGS)}')
    class_names, crop_fraction = None, None
    if is_training_workdir(checkpoint):
        model_config, params, class_names, crop_fraction = _training_workdir(checkpoint)
    else:
        path = hub.resolve(checkpoint)  # local paths as they are; catalogue names downloaded once
        model_config, params = convert.load_checkpoint(path)
    if model_name is not None:
        named = get_config(model_name)
        for key in ('layer_norm_eps', 'gelu_approximate'):   # numerics the file's format implies
            if model_config.get(key) is not None:
                named[key] = model_config.get(key)
        model_config = named
    loaded = build_model(model_config, params, checkpoint, class_names)
    loaded.crop_fraction = crop_fraction
    return loaded


# --- Images ---------------------------------------------------------------------------------

def find_images(inputs: Sequence[str]) -> list[str]:
    """Expands files, folders (recursively, image extensions) and globs, keeping input order."""
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
    args = _parser().parse_args(argv)
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow decodes images: keep it quiet
    try:
        if args.top_k < 1 or args.batch_size < 1:
            raise ValueError('--top-k and --batch-size must be >= 1')
        paths = find_images(args.inputs)
        loaded = load_model(args.checkpoint, args.model)
        names = load_labels(args.labels) if args.labels else (
            loaded.class_names or default_labels(loaded.num_classes))
        doc = predict_files(loaded, paths, k=args.top_k, batch_size=args.batch_size,
                            crop_fraction=args.crop_fraction, class_names=names,
                            progress=len(paths) > args.batch_size)   # on stderr
    except (OSError, ValueError, KeyError) as e:
        print(f'vit-predict: error: {e}', file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=2) if args.json else format_text(doc))
    if not doc['results']:
        print('vit-predict: error: none of the images could be read', file=sys.stderr)
        return 1
    return 0


def run() -> None:
    """Console-script entry point (`vit-predict`)."""
    sys.exit(main())


if __name__ == '__main__':
    run()
