"""`vit-zeroshot`: classify images with a LiT or SigLIP model from class names alone (no training).

    vit-zeroshot photos/ cat.jpg --checkpoint LiT-B16B --labels "cat,dog,airplane"
    vit-zeroshot img.jpg --checkpoint LiT-L16L --labels imagenet2012 --top-k 3 --json
    vit-zeroshot img.jpg --checkpoint my/LiT-B16B.npz --labels classes.txt --templates none
    vit-zeroshot img.jpg --checkpoint siglip-base-patch16-224/ --labels "a cat,a dog"
    vit-zeroshot img.jpg --checkpoint webli_en_b16_224_63724782.npz --vocab c4_en.model --labels ...

Each label becomes texts through prompt templates, whose text embeddings are averaged per label.
LiT (default templates: the LiT Colab's eight, e.g. 'itap of a {}.', '{}'): an image's probabilities
are softmax(t * image embedding . label embeddings), t the model's learned temperature; they sum to
1 over the labels. SigLIP (default template: the label itself, as big_vision's SigLIP demo; the mean
of several templates is renormalised, as big_vision's zero-shot evaluator): each label's probability
is sigmoid(t * image embedding . label embedding + b), b the learned bias, on its own — they are
independent and need not sum to 1. `--checkpoint` is a LiT catalogue name (`LiT-B16B`, `LiT-B16B_2`,
`LiT-L16L`, `LiT-L16S`, `LiT-L16Ti`: weights and vocabulary downloaded once, verified), a LiT or
big_vision SigLIP `.npz`, or a Hugging Face SiglipModel directory, local or in a bucket; its
vocabulary is `--vocab`, else the HF directory's spiece.model (and tokenizer_config.json), else the
`.txt` / `.model` beside the weights, else the public one of the named model; never guessed. Images
are preprocessed as LiT's and big_vision's (`vit_jax.preprocess`).

From Python: `zs = zeroshot.load('LiT-B16B'); zs.classify(images, ['cat', 'dog'])`, or
`zs.model.apply(zs.variables, images=..., tokens=zs.tokenizer(texts))` as in the original Colab.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import cli, images, labels, paths, preprocess, preprocessing
from vit_jax.checkpoint import arch, hf, hub, loader
from vit_jax.checkpoint.facts import Facts
from vit_jax.errors import CheckpointError, ConfigError
from vit_jax.models import LitModel, build_model
from vit_jax.models.lit import scores
from vit_jax.predict import format_text, score_files

# The LiT Colab's default prompts (the shortlist of the CLIP prompt-engineering notebook).
PROMPTS = ('itap of a {}.', 'a bad photo of the {}.', 'a origami {}.', 'a photo of the large {}.',
           'a {} in a video game.', 'art of the {}.', 'a photo of the small {}.', '{}')
TEMPLATE_SETS = {'lit': PROMPTS, 'none': ('{}',)}
SIGMOID_NOTE = ('sigmoid scores: each label\'s probability on its own (SigLIP); they need not sum to 1')


@dataclasses.dataclass
class ZeroShot:
    """A LiT or SigLIP model ready for zero-shot use: module, parameters, tokenizer."""

    model: LitModel
    params: Any
    tokenizer: preprocess.BertTokenizer | preprocess.SentencepieceTokenizer
    source: str

    def __post_init__(self):
        self._apply_images = jax.jit(lambda p, x: self.model.apply({'params': p}, images=x)[0])
        self._apply_tokens = jax.jit(lambda p, t: self.model.apply({'params': p}, tokens=t)[1])

    @property
    def variables(self) -> dict:
        """`{'params': ...}`, for `model.apply` (the original's `load_variables()`)."""
        return {'params': self.params}

    @property
    def image_size(self) -> int:
        return int(self.model.pp.size)

    @property
    def temperature(self) -> float:
        return float(np.exp(np.asarray(self.params['t'])[0]))

    @property
    def sigmoid(self) -> bool:
        """Whether the model scores each image-text pair with a sigmoid (SigLIP), not a softmax (LiT)."""
        return self.model.bias_init is not None

    @property
    def bias(self) -> float:
        """SigLIP's learned bias (0 for LiT, which has none)."""
        return float(np.asarray(self.params['b'])[0]) if self.sigmoid else 0.0

    @property
    def default_templates(self) -> tuple[str, ...]:
        """The label itself for SigLIP (big_vision's SigLIP demo), the LiT Colab's prompts for LiT."""
        return TEMPLATE_SETS['none'] if self.sigmoid else PROMPTS

    def image_preprocessing(self, crop: bool = False) -> preprocess.PreprocessImages:
        """uint8 images -> model inputs (the original's `get_image_preprocessing()`)."""
        return preprocess.PreprocessImages(size=self.image_size, crop=crop)

    def embed_images(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """L2-normalised embeddings [N, D] of preprocessed images [N, size, size, 3]."""
        images = np.asarray(images, np.float32)
        return _batched(lambda x: self._apply_images(self.params, x), images, batch_size)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """L2-normalised embeddings [N, D] of texts."""
        return _batched(lambda t: self._apply_tokens(self.params, t), self.tokenizer(list(texts)), batch_size)

    def label_embeddings(self, label_names: Sequence[str], templates: Sequence[str] | None = None
                         ) -> np.ndarray:
        """[labels, D]: per label, the mean embedding of its prompts (`templates`, default
        `default_templates`); LiT's as the LiT Colab (not renormalised), SigLIP's renormalised as
        big_vision's zero-shot evaluator (its bias is learned for unit embeddings)."""
        templates = self.default_templates if templates is None else templates
        check_labels(label_names)
        check_templates(templates)
        texts = [t.format(name) for name in label_names for t in templates]
        mean = self.embed_texts(texts).reshape(len(label_names), len(templates), -1).mean(axis=1)
        if self.sigmoid and len(templates) > 1:
            mean = mean / (np.linalg.norm(mean, axis=1, keepdims=True) + 1e-8)
        return mean

    def logits(self, image_embeddings: np.ndarray, label_embeddings: np.ndarray) -> np.ndarray:
        """t * image . label similarities [N, labels] (+ b for SigLIP): `scores` of them are the
        zero-shot probabilities."""
        return self.temperature * np.asarray(image_embeddings) @ np.asarray(label_embeddings).T + self.bias

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities of `logits`: SigLIP's sigmoid per label, LiT's softmax over the labels."""
        return np.asarray(scores(jnp.asarray(logits), self.sigmoid))

    def classify(self, images: np.ndarray, label_names: Sequence[str], templates: Sequence[str] | None = None
                 ) -> np.ndarray:
        """Zero-shot probabilities [N, labels] of preprocessed images (see `scores`)."""
        label_embeddings = self.label_embeddings(label_names, templates)
        return self.scores(self.logits(self.embed_images(images), label_embeddings))


def _batched(fn, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """`fn` over fixed-size batches (the last one padded), so that one shape compiles once."""
    out = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        n = len(batch)
        if n < batch_size and len(inputs) > batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, axis=0)])
        out.append(np.asarray(fn(batch))[:n])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def check_labels(label_names: Sequence[str]) -> None:
    """ConfigError unless there are at least 2 labels, all different (a label given twice, even in
    another case, would split its probability between the copies)."""
    if len(label_names) < 2:
        raise ConfigError(f'zero-shot classification needs at least 2 labels, got {len(label_names)}')
    seen: dict[str, str] = {}
    for name in label_names:
        key = ' '.join(name.split()).casefold()
        if key in seen:
            which = (f'label {name!r} is given twice' if seen[key] == name
                     else f'labels {seen[key]!r} and {name!r} differ only in case or spaces')
            raise ConfigError(f'{which}: a label given twice splits its probability between the copies')
        seen[key] = name


def check_templates(templates: Sequence[str]) -> None:
    """ConfigError unless every template holds exactly one '{}' (where the label goes)."""
    if not templates:
        raise ConfigError('no prompt templates')
    for t in templates:
        if t.count('{}') != 1 or t.replace('{}', '').count('{') or t.replace('{}', '').count('}'):
            raise ConfigError(f'prompt template {t!r} must contain exactly one {{}} (where the label goes) '
                              'and no other braces')


def vocab_path(found: loader.Checkpoint, source: str, vocab: str | None = None) -> str:
    """The vocabulary of a LiT checkpoint: `vocab`, else the file beside the weights with the
    tokenizer's suffix (`LiT-B16B.txt`, `LiT-L16S.model`), else the named model's public one."""
    if vocab is not None:
        return hub.resolve(vocab)
    suffix = hub.LIT_VOCAB_SUFFIXES[found.model_config.pp.tokenizer_name]
    beside = found.path.removesuffix('.npz') + suffix
    if paths.exists(beside):
        return beside
    name = found.model_config.get('model_name')
    if name in arch.lit_models():
        return hub.resolve(hub.lit_vocab_name(name))
    raise CheckpointError(f'{source}: no vocabulary: give --vocab FILE (a {suffix} file) or put '
                          f'{paths.name(beside)} beside the weights')


def tokenizer_for(found: loader.Checkpoint, source: str, vocab: str | None = None
                  ) -> preprocess.BertTokenizer | preprocess.SentencepieceTokenizer:
    """The tokenizer of an image-text checkpoint. LiT: its vocabulary (`vocab_path`). SigLIP: SentencePiece
    with the text canonicalised (`preprocess.canonicalize`) and a sticky end piece; an HF directory's
    as transformers' SiglipTokenizer, from its spiece.model (or `vocab`) and tokenizer_config.json, whose
    model_max_length must be the text tower's length; a big_vision file's from `vocab_path`, as its
    zero-shot evaluator (class names and prompts canonicalised, '_' a space) and `tokenize` op
    (lower-cased, padded with </s>: `pad_value=1`) do."""
    config = found.model_config
    max_len = int(config.pp.max_len)
    if not loader.is_siglip(config):
        return preprocess.get_tokenizer(config.pp.tokenizer_name)(
            vocab_path=vocab_path(found, source, vocab), max_len=max_len)
    if found.format != 'hf':
        return preprocess.SentencepieceTokenizer(vocab_path(found, source, vocab), max_len,
                                                 canonical='big_vision', lower=True)
    facts = hf.hf_siglip_tokenizer(found.path, None if vocab is None else hub.resolve(vocab))
    recorded = facts.pop('max_len')
    if recorded is not None and recorded != max_len:
        where = paths.join(paths.parent(hf.hf_files(found.path)[0]), 'tokenizer_config.json')
        raise CheckpointError(f'{where}: model_max_length={recorded} but the text tower\'s position '
                              f'embedding has {max_len} positions')
    return preprocess.SentencepieceTokenizer(max_len=max_len, canonical='transformers', **facts)


def load(checkpoint: str, *, vocab: str | None = None, model_name: str | None = None,
         text_heads: int | None = None, max_len: int | None = None) -> ZeroShot:
    """A LiT or SigLIP checkpoint (catalogue name, file, directory or URL) with its tokenizer (see
    `tokenizer_for`).

    `model_name` (a LiT MODEL_CONFIGS name) states the architecture of a file that is not named
    after it; `text_heads` and `max_len` state what a BERT text tower does not record.
    """
    found = loader.read(checkpoint, Facts(model_name=model_name, text_heads=text_heads, max_len=max_len))
    if found.model_config.get('text_model') is None:
        raise CheckpointError(f'{found.path} is not a LiT or SigLIP image-text model: use vit-predict')
    config = found.model_config
    tokenizer = tokenizer_for(found, str(checkpoint), vocab)
    embedded = _vocab_size(found.params)
    if tokenizer.vocab_size > embedded:   # larger ids would embed as NaN, silently
        raise CheckpointError(f'{tokenizer.vocab_path}: the vocabulary gives ids up to '
                              f'{tokenizer.vocab_size - 1} but the text tower embeds {embedded} tokens')
    params = jax.tree_util.tree_map(jnp.asarray, found.params)
    return ZeroShot(build_model(config, None), params, tokenizer, found.path)


def _vocab_size(params: dict) -> int:
    txt = params['txt']
    table = (txt['BertEncoder_0']['embedder']['embedders_token_ids'] if 'BertEncoder_0' in txt
             else txt['Embed_0'])
    return int(np.shape(table['embedding'])[0])


def classify_files(zs: ZeroShot, files: Sequence[str], label_names: Sequence[str], *,
                   templates: Sequence[str] | None = None, k: int = 5, batch_size: int = 32,
                   crop: bool = False, progress: bool = False, max_pixels: int = images.MAX_PIXELS) -> dict:
    """Zero-shot classifies image files; returns the `--json` document {results, skipped, ...}
    (`scoring`: 'sigmoid', independent probabilities, or 'softmax', summing to 1)."""
    templates = zs.default_templates if templates is None else tuple(templates)
    label_embeddings = zs.label_embeddings(label_names, templates)
    batches = functools.partial(preprocessing.image_batches, files, zs.image_size, batch_size,
                                prepare=zs.image_preprocessing(crop).preprocess_tf, max_pixels=max_pixels)
    score = lambda batch: zs.logits(zs.embed_images(batch, batch_size), label_embeddings)  # noqa: E731
    results, skipped = score_files(files, batches, score, k, label_names, progress,
                                   normalize=zs.scores)
    doc = {'checkpoint': zs.source, 'image_size': zs.image_size, 'labels': list(label_names),
           'templates': list(templates), 'scoring': 'sigmoid' if zs.sigmoid else 'softmax',
           'temperature': zs.temperature, 'results': results, 'skipped': skipped}
    if zs.sigmoid:
        doc['bias'] = zs.bias
    return doc


# --- CLI ------------------------------------------------------------------------------------

def read_labels(value: str) -> list[str]:
    """`--labels`: comma-separated names, a label set (imagenet2012, imagenet21k) or a file (one per line)."""
    if ',' in value:
        names = [n.strip() for n in value.split(',')]
    else:
        names = labels.load_labels(value)
    if any(not n for n in names):
        raise ConfigError(f'--labels {value!r} has an empty label')
    return names


def read_templates(value: str) -> tuple[str, ...]:
    """`--templates`: 'lit' (the Colab's eight), 'none' (the label alone) or a file, one per line."""
    if value in TEMPLATE_SETS:
        return TEMPLATE_SETS[value]
    if not paths.exists(value):
        raise ConfigError(f'--templates {value!r} is neither {" nor ".join(TEMPLATE_SETS)} nor a file')
    templates = tuple(line for line in paths.read_text(value).splitlines() if line.strip())
    try:
        check_templates(templates)
    except ConfigError as e:
        raise ConfigError(f'--templates {value}: {e}') from None
    return templates


def _parser() -> argparse.ArgumentParser:
    parser = cli.argument_parser('vit-zeroshot', __doc__.split('\n\n')[0])
    parser.add_argument('inputs', nargs='+', help='image files, folders (searched recursively) or globs')
    parser.add_argument('--checkpoint', required=True,
                        help='LiT catalogue name (LiT-B16B, LiT-B16B_2, LiT-L16L, LiT-L16S, LiT-L16Ti), '
                             'LiT or big_vision SigLIP .npz, Hugging Face SiglipModel directory, or a '
                             'bucket URL')
    parser.add_argument('--labels', required=True,
                        help='"cat,dog,..." | imagenet2012 | imagenet21k | a file with one label per line')
    parser.add_argument('--templates', default=None,
                        help="prompt templates: 'lit' (the LiT Colab's eight), 'none' (the label alone) or a "
                             "file with one template per line, '{}' where the label goes (default: 'lit' for "
                             "LiT, 'none' for SigLIP, as big_vision's SigLIP demo)")
    parser.add_argument('--vocab', default=None,
                        help='vocabulary (.txt WordPiece or .model SentencePiece; default: a Hugging Face '
                             "directory's spiece.model, else beside the weights, else the named model's "
                             'public one)')
    parser.add_argument('--model', default=None, metavar='NAME',
                        help='the LiT architecture by name, for a file not named after it')
    parser.add_argument('--text-heads', type=cli.positive_int, default=None,
                        help='attention heads of a BERT text tower (not recorded in the weights)')
    parser.add_argument('--max-len', type=cli.positive_int, default=None,
                        help='tokens per text of a BERT text tower (not recorded; the LiT models use 16)')
    parser.add_argument('--crop', action='store_true',
                        help='resize the shorter side and take the central square (default: resize the '
                             'whole image, as the LiT Colab)')
    parser.add_argument('--top-k', type=cli.positive_int, default=5, help='how many labels to show per image')
    parser.add_argument('--batch-size', type=cli.positive_int, default=32, help='images per forward pass')
    parser.add_argument('--json', action='store_true', help='print one JSON document to stdout')
    cli.add_max_pixels_arg(parser)
    parser.epilog = ('Probabilities: LiT scores with a softmax over the labels (they sum to 1);\n'
                     'SigLIP with a sigmoid per label, sigmoid(t * image . label + b): independent\n'
                     'probabilities that need not sum to 1.')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`vit-zeroshot`; returns 1 when no image could be read, raises on bad input."""
    args = _parser().parse_args(argv)
    label_names = read_labels(args.labels)
    check_labels(label_names)   # before the checkpoint is loaded
    templates = None if args.templates is None else read_templates(args.templates)
    files = images.find_images(args.inputs)
    zs = load(args.checkpoint, vocab=args.vocab, model_name=args.model, text_heads=args.text_heads,
              max_len=args.max_len)
    doc = classify_files(zs, files, label_names, templates=templates, k=args.top_k,
                         batch_size=args.batch_size, crop=args.crop, progress=len(files) > args.batch_size,
                         max_pixels=args.max_image_pixels)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f'({SIGMOID_NOTE})\n' + format_text(doc) if doc['scoring'] == 'sigmoid' else format_text(doc))
    if not doc['results']:
        print('vit-zeroshot: error: none of the images could be read', file=sys.stderr)
        return 1
    return 0


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`vit-zeroshot`): exit 2 with one line on bad input."""
    sys.exit(cli.run_cli('vit-zeroshot', lambda: main(argv)))


if __name__ == '__main__':
    run()
