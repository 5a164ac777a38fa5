"""LiT preprocessing: the original's `vit_jax/preprocess.py` (tokenizers and image resizing).

- `BertTokenizer(vocab_path, max_len)`: the LiT BERT towers' WordPiece, as the original's
  `tensorflow_text.BertTokenizer(vocab, lower_case=True)`: NFKC case folding (default-ignorable
  characters dropped), accents stripped (NFD, marks removed), control and format characters made
  spaces, split on whitespace, punctuation and CJK ideographs, then greedy longest-match WordPiece
  (`##` continuations; a word of over 100 bytes or with no match is `[UNK]`, which is the id after
  the vocabulary when the vocabulary has no `[UNK]`). Then `[CLS]` first, at most `max_len - 1`
  word pieces, zero padding (the model masks token 0). Splitting and WordPiece are the Hugging
  Face `tokenizers` library's; the folding is Python's `unicodedata` (tensorflow_text is not a
  dependency: the tests check this tokenizer against it).
- `SentencepieceTokenizer(vocab_path, max_len)`: the small text towers' SentencePiece model with
  `</s>` appended, cut to `max_len - 1` pieces and padded with `</s>`, so the last token is always
  `</s>` (the tower reads the last token). SigLIP's (`canonical='transformers'` or `'big_vision'`)
  first canonicalises the text as transformers' `SiglipTokenizer` or big_vision's zero-shot evaluator
  does (`canonicalize`), and may name another end or padding piece (a tokenizer_config.json's
  `eos_token`, `pad_token`).
- `PreprocessImages(size, crop)`: bilinear resize to `size` x `size` (or, with `crop`, of the
  shorter side to `size` and the central square), truncated to uint8, then [-1, 1] as x / 255 * 2 - 1.
- `get_pp(...)`: a `tf.data` map function for {'image', 'text'} features (text -> 'tokens').

Vocabulary files are read through `vit_jax.paths` (local or gs://).
"""

from __future__ import annotations

import dataclasses
import re
import string
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import sentencepiece
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from vit_jax import paths
from vit_jax.errors import DataError
from vit_jax.tflib import tf

TOKENIZERS = ('bert', 'sentencepiece')
MAX_BYTES_PER_WORD = 100   # tensorflow_text's WordpieceTokenizer default: longer words are [UNK]
UNK = '[UNK]'
# tensorflow_text BertTokenizer's split (RE2 patterns): whitespace, dropped (RE2's \s is ASCII only:
# U+2028 or U+3000 are not, though NFKC makes U+3000 and U+00A0 spaces); ASCII punctuation and
# symbols, Unicode punctuation and CJK ideographs, each kept as a token of its own.
_WHITESPACE = r'[\t\n\f\r ]+'
_KEEP_DELIMS = '|'.join([
    r'[!-/]', r'[:-@]', r'[\[-`]', r'[{-~]', r'[\p{P}]',
    r'[\x{4E00}-\x{9FFF}]', r'[\x{3400}-\x{4DBF}]', r'[\x{20000}-\x{2A6DF}]', r'[\x{2A700}-\x{2B73F}]',
    r'[\x{2B740}-\x{2B81F}]', r'[\x{2B820}-\x{2CEAF}]', r'[\x{F900}-\x{FAFF}]', r'[\x{2F800}-\x{2FA1F}]'])
# Unicode Default_Ignorable_Code_Point, which ICU's NFKC_Casefold (tensorflow_text's case_fold_utf8)
# removes; Python's casefold() keeps them.
_IGNORABLE = re.compile(
    '[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f'
    '\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a'
    '\U000e0000-\U000e0fff]')


def _read(path: str, what: str) -> bytes:
    try:
        return paths.read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(2, f'no such {what} file', str(path)) from None


def fold(text: str) -> str:
    """BERT's lower-casing as tensorflow_text does it: NFKC case folding, accents stripped, control
    and format characters turned into spaces."""
    text = unicodedata.normalize('NFKC', unicodedata.normalize('NFKC', _IGNORABLE.sub('', text)).casefold())
    text = ''.join(c for c in unicodedata.normalize('NFD', text) if unicodedata.category(c) != 'Mn')
    return ''.join(' ' if unicodedata.category(c) in ('Cc', 'Cf') else c for c in text)


@dataclasses.dataclass(frozen=True)
class BertTokenizer:
    """WordPiece with `[CLS]` first and a fixed length (see the module doc); `__call__(texts)` -> int32
    [len(texts), max_len], `preprocess_tf(text)` inside a TensorFlow graph."""

    vocab_path: str
    max_len: int
    cls_token: int = dataclasses.field(init=False)
    unk_token: int = dataclasses.field(init=False)
    vocab_size: int = dataclasses.field(init=False)   # the largest id it gives, plus one
    _tokenizer: Any = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        if self.max_len < 2:
            raise ValueError(f'max_len={self.max_len} leaves no room for a word after [CLS]')
        data = _read(self.vocab_path, 'vocabulary')
        try:
            lines = data.decode('utf-8').split('\n')
        except UnicodeDecodeError as e:
            raise DataError(f'{self.vocab_path}: not a UTF-8 vocabulary file '
                            f'({e.reason} at byte {e.start})') from None
        if lines and lines[-1] == '':   # a final newline ends the last entry
            lines.pop()
        vocab = {}
        for i, token in enumerate(lines):
            if vocab.setdefault(token, i) != i:   # as tensorflow_text's lookup table, which refuses them
                raise DataError(f'{self.vocab_path}: line {i + 1} repeats the token {token!r} of line '
                                f'{vocab[token] + 1}')
        if '[CLS]' not in vocab:
            raise DataError(f'{self.vocab_path}: the vocabulary has no [CLS] token')
        vocab.setdefault(UNK, len(lines))   # tensorflow_text's out-of-vocabulary bucket
        tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=UNK, continuing_subword_prefix='##',
                                               max_input_chars_per_word=MAX_BYTES_PER_WORD))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_WHITESPACE), 'removed'),
            pre_tokenizers.Split(Regex(_KEEP_DELIMS), 'isolated')])
        object.__setattr__(self, 'cls_token', vocab['[CLS]'])
        object.__setattr__(self, '_tokenizer', tokenizer)
        object.__setattr__(self, 'unk_token', vocab[UNK])
        object.__setattr__(self, 'vocab_size', max(vocab.values()) + 1)

    def word_pieces(self, text: str) -> list[int]:
        """The WordPiece ids of one text (no [CLS], no padding)."""
        ids: list[int] = []
        for word, _ in self._tokenizer.pre_tokenizer.pre_tokenize_str(fold(text)):
            if len(word.encode('utf-8')) > MAX_BYTES_PER_WORD:   # tokenizers counts characters
                ids.append(self.unk_token)
            else:
                ids.extend(piece.id for piece in self._tokenizer.model.tokenize(word))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.max_len), np.int32)
        out[:, 0] = self.cls_token
        for row, text in zip(out, texts, strict=True):
            ids = self.word_pieces(_text(text))[:self.max_len - 1]
            row[1:1 + len(ids)] = ids
        return out

    def preprocess_tf(self, text: tf.Tensor) -> tf.Tensor:
        """Tokenizes one text (a scalar string tensor) inside a TensorFlow graph."""
        return _in_graph(self, text)


CANONICAL = ('transformers', 'big_vision')


def canonicalize(text: str, lower: bool = True, underscores: bool = False) -> str:
    """SigLIP's text canonicalisation, transformers' `SiglipTokenizer.canonicalize_text` (its '▁' typed
    as a space): lower-cased (when `lower`), ASCII punctuation removed, runs of white space one space,
    ends stripped; `underscores`: '_' a space first, as big_vision's `prompt_engineering._canonicalize`
    (whose evaluator canonicalises class names and prompts so)."""
    text = text.replace('\u2581', ' ')
    if underscores:
        text = text.replace('_', ' ')
    if lower:
        text = text.lower()
    text = text.translate(str.maketrans('', '', string.punctuation))
    return re.sub(r'\s+', ' ', text).strip()


@dataclasses.dataclass(frozen=True)
class SentencepieceTokenizer:
    """SentencePiece with a sticky end piece (see the module doc): `eos_piece` (default `</s>`) appended,
    padded with `pad_piece` (default: the end piece). `canonical` ('transformers' | 'big_vision'): SigLIP's
    text canonicalisation first (`canonicalize`, lower-casing when `lower`)."""

    vocab_path: str
    max_len: int
    canonical: str | None = None
    lower: bool = False
    eos_piece: str = '</s>'
    pad_piece: str | None = None
    eos_token: int = dataclasses.field(init=False)
    pad_token: int = dataclasses.field(init=False)
    vocab_size: int = dataclasses.field(init=False)
    _tokenizer: Any = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        if self.max_len < 2:
            raise ValueError(f'max_len={self.max_len} leaves no room for a piece before </s>')
        tokenizer = sentencepiece.SentencePieceProcessor()
        try:
            tokenizer.LoadFromSerializedProto(_read(self.vocab_path, 'SentencePiece model'))
        except (RuntimeError, TypeError) as e:
            raise DataError(f'{self.vocab_path}: not a SentencePiece model '
                            f'({" ".join(str(e).split())})') from None
        if self.canonical not in (None, *CANONICAL):
            raise ValueError(f'canonical={self.canonical!r} is not one of {CANONICAL}')
        for name, piece in (('end', self.eos_piece), ('padding', self.pad_piece or self.eos_piece)):
            if tokenizer.id_to_piece(tokenizer.piece_to_id(piece)) != piece:
                raise DataError(f'{self.vocab_path}: the SentencePiece model has no {piece} piece (the '
                                f'{name} token)')
        eos = tokenizer.piece_to_id(self.eos_piece)
        object.__setattr__(self, 'eos_token', eos)
        object.__setattr__(self, 'pad_token', tokenizer.piece_to_id(self.pad_piece or self.eos_piece))
        object.__setattr__(self, 'vocab_size', tokenizer.get_piece_size())
        object.__setattr__(self, '_tokenizer', tokenizer)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.full((len(texts), self.max_len), self.pad_token, np.int32)
        for row, text in zip(out, texts, strict=True):
            text = _text(text)
            if self.canonical:
                text = canonicalize(text, self.lower, underscores=self.canonical == 'big_vision')
            ids = self._tokenizer.encode(text)[:self.max_len - 1] + [self.eos_token]
            row[:len(ids)] = ids
        return out

    def preprocess_tf(self, text: tf.Tensor) -> tf.Tensor:
        """Tokenizes one text (a scalar string tensor) inside a TensorFlow graph."""
        return _in_graph(self, text)


def _text(text: Any) -> str:
    return text.decode('utf-8') if isinstance(text, bytes) else str(text)


def _in_graph(tokenizer: BertTokenizer | SentencepieceTokenizer, text: tf.Tensor) -> tf.Tensor:
    tokens = tf.numpy_function(lambda t: tokenizer([t])[0], [text], tf.int32, stateful=False)
    tokens.set_shape([tokenizer.max_len])
    return tokens


def get_tokenizer(tokenizer_name: str) -> type:
    """The tokenizer class of `pp.tokenizer_name` ('bert' or 'sentencepiece')."""
    classes = {'bert': BertTokenizer, 'sentencepiece': SentencepieceTokenizer}
    if tokenizer_name not in classes:
        raise ValueError(f'tokenizer_name={tokenizer_name!r} is unknown; expected one of {TOKENIZERS}')
    return classes[tokenizer_name]


@dataclasses.dataclass(frozen=True)
class PreprocessImages:
    """Resizes uint8 images to `size` (bilinear; `crop`: shorter side to `size`, then the central
    square), truncates to uint8 and maps to [-1, 1]; `__call__(images)` -> float32 [N, size, size, 3]."""

    size: int
    crop: bool = False

    def _resize_small(self, image: tf.Tensor) -> tf.Tensor:
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        ratio = tf.cast(self.size, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
        h = tf.cast(tf.round(tf.cast(h, tf.float32) * ratio), tf.int32)
        w = tf.cast(tf.round(tf.cast(w, tf.float32) * ratio), tf.int32)
        return tf.image.resize(image, (h, w), method='bilinear')

    def _crop(self, image: tf.Tensor) -> tf.Tensor:
        dy = (tf.shape(image)[0] - self.size) // 2
        dx = (tf.shape(image)[1] - self.size) // 2
        return tf.image.crop_to_bounding_box(image, dy, dx, self.size, self.size)

    def preprocess_tf(self, image: tf.Tensor) -> tf.Tensor:
        """One uint8 [H, W, 3] image inside a TensorFlow graph."""
        if image.dtype != tf.uint8:
            raise ValueError(f'images must be uint8, got {image.dtype.name}')
        if self.crop:
            image = self._crop(self._resize_small(image))
        else:
            image = tf.image.resize(image, size=[self.size, self.size], method='bilinear')
        image = tf.cast(tf.cast(image, tf.uint8), tf.float32) / 255
        return -1 + image * 2

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        return np.stack([self.preprocess_tf(tf.constant(image)).numpy() for image in images])


def get_pp(*, tokenizer_name: str, vocab_path: str, max_len: int, size: int, crop: bool = False
           ) -> Callable[[dict], dict]:
    """A `tf.data.Dataset.map` function: 'image' (uint8) is resized in place, 'text' tokenized into
    'tokens'; a feature that is missing is left alone."""
    tokenizer = get_tokenizer(tokenizer_name)(vocab_path=vocab_path, max_len=max_len)
    preprocess_images = PreprocessImages(size=size, crop=crop)

    def pp(features: dict) -> dict:
        features = {**features}
        if 'image' in features:
            features['image'] = preprocess_images.preprocess_tf(features['image'])
        if 'text' in features:
            features['tokens'] = tokenizer.preprocess_tf(features['text'])
        return features

    return pp
