"""LiT ("Locked-image text Tuning", Zhai et al. 2022): a ViT image tower and a text tower whose
L2-normalised embeddings meet, for zero-shot classification from class names.

The original's `vit_jax/models_lit.py` with its parameter trees, so the public LiT checkpoints
(gs://vit_models/lit/*.npz) load with no renaming: `img/...` is a `VisionTransformer`, `txt/...`
either `BertModel` (flaxformer's `BertEncoder` names, reproduced here in plain Flax: flaxformer is
not a dependency) or `TextTransformer` (token embedding, learned position embedding, the ViT
`Encoder`, last token), and `t` the log temperature.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.vit import Encoder, VisionTransformer

Array = jnp.ndarray

# flaxformer.architectures.bert.configs.{BertBaseConfig, BertLargeConfig} (BertEncoder fields).
BERT_CONFIGS = {
    'base': dict(hidden_size=768, intermediate_dim=3072, num_hidden_layers=12, num_attention_heads=12,
                 vocab_size=30522, max_length=512, num_segments=2),
    'large': dict(hidden_size=1024, intermediate_dim=4096, num_hidden_layers=24, num_attention_heads=16,
                  vocab_size=30522, max_length=512, num_segments=2),
}
TEXT_MODELS = ('bert', 'text_transformer')
_BERT_INIT = nn.initializers.truncated_normal(stddev=0.02)   # flaxformer's kernel and embedding init


def _dense(features: int, name: str) -> nn.Dense:
    """flaxformer's DenseGeneral with its 2-D kernel (head axes flattened): a plain Dense."""
    return nn.Dense(features, kernel_init=_BERT_INIT, bias_init=nn.initializers.zeros, name=name)


class BertEmbedder(nn.Module):
    """flaxformer's `MultiEmbed` of token, position and segment ids, summed (as its tree_reduce: by key)."""

    hidden_size: int
    vocab_size: int
    max_length: int
    num_segments: int

    @nn.compact
    def __call__(self, token_ids: Array, position_ids: Array, segment_ids: Array) -> Array:
        embed = lambda n, name: nn.Embed(n, self.hidden_size, embedding_init=_BERT_INIT, name=name)  # noqa: E731
        return (embed(self.max_length, 'embedders_position_ids')(position_ids)
                + embed(self.num_segments, 'embedders_segment_ids')(segment_ids)
                + embed(self.vocab_size, 'embedders_token_ids')(token_ids))


class BertAttention(nn.Module):
    """flaxformer's `MultiHeadDotProductAttention` as BERT configures it: biases, queries scaled by
    1/sqrt(head_dim), masked logits set to -1e10, no output projection (the block has it)."""

    num_heads: int

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        *batch, length, features = x.shape
        head_dim = features // self.num_heads
        split = lambda y: y.reshape(*batch, length, self.num_heads, head_dim)  # noqa: E731
        q, k, v = (split(_dense(features, name)(x)) for name in ('query', 'key', 'value'))
        q = q / jnp.sqrt(head_dim).astype(q.dtype)
        logits = jnp.einsum('...qhd,...khd->...hqk', q, k)
        logits = logits + jnp.where(mask > 0, 0.0, -1e10).astype(logits.dtype)
        weights = jax.nn.softmax(logits, axis=-1)
        return jnp.einsum('...hqk,...khd->...qhd', weights, v)   # [..., length, heads, head_dim]


class BertAttentionBlock(nn.Module):
    """flaxformer's `AttentionBlock`: LayerNorm(x + Dropout(Dense(Attention(x))))."""

    num_attention_heads: int
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-12

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
        y = BertAttention(self.num_attention_heads, name='attention_layer')(x, mask)
        y = _dense(x.shape[-1], 'dense_layer')(y.reshape(x.shape))
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        return nn.LayerNorm(epsilon=self.layer_norm_epsilon, name='layer_norm')(y + x)


class BertMlp(nn.Module):
    """flaxformer's `Mlp`: Dense then GELU (tanh approximation, Flax's default)."""

    intermediate_dim: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return nn.gelu(_dense(self.intermediate_dim, 'dense_layer')(x))


class BertMlpBlock(nn.Module):
    """flaxformer's `MlpBlock`: LayerNorm(x + Dropout(Dense(Mlp(x))))."""

    intermediate_dim: int
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-12

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        y = _dense(x.shape[-1], 'dense_layer')(BertMlp(self.intermediate_dim, name='mlp')(x))
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        return nn.LayerNorm(epsilon=self.layer_norm_epsilon, name='layer_norm')(y + x)


class BertLayer(nn.Module):
    """flaxformer's `EncoderLayer`: an attention block, then an MLP block (post-LayerNorm)."""

    intermediate_dim: int
    num_attention_heads: int
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-12

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
        x = BertAttentionBlock(self.num_attention_heads, self.dropout_rate, self.layer_norm_epsilon,
                               name='attention_block')(x, mask, deterministic)
        return BertMlpBlock(self.intermediate_dim, self.dropout_rate, self.layer_norm_epsilon,
                            name='mlp_block')(x, deterministic)


class BertLayerSequence(nn.Module):
    """flaxformer's `LayerSequence`: `num_layers` `BertLayer`s named `layers_{i}` (`layer`: their fields)."""

    num_layers: int
    layer: Mapping[str, Any]

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
        for i in range(self.num_layers):
            x = BertLayer(**self.layer, name=f'layers_{i}')(x, mask, deterministic)
        return x


class BertEncoderBlock(BertLayerSequence):
    """flaxformer's `EncoderBlock`: the level that holds the `layer_sequence`."""

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
        return BertLayerSequence(self.num_layers, self.layer, name='layer_sequence')(x, mask, deterministic)


class BertEncoder(nn.Module):
    """flaxformer's `BertEncoder` (its fields, parameter names and numerics): embeddings summed and
    LayerNorm'ed, then `num_hidden_layers` post-LayerNorm layers with a padding mask."""

    hidden_size: int
    intermediate_dim: int
    vocab_size: int
    max_length: int
    num_segments: int
    num_hidden_layers: int
    num_attention_heads: int
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-12

    @nn.compact
    def __call__(self, token_ids: Array, position_ids: Array, segment_ids: Array, input_mask: Array,
                 enable_dropout: bool = False) -> Array:
        x = BertEmbedder(self.hidden_size, self.vocab_size, self.max_length, self.num_segments,
                         name='embedder')(token_ids, position_ids, segment_ids)
        x = nn.LayerNorm(epsilon=self.layer_norm_epsilon, name='layer_norm')(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not enable_dropout)
        # flaxformer's make_attention_mask: query and key positions both real, [..., 1, len, len].
        mask = (input_mask[..., :, None] * input_mask[..., None, :])[..., None, :, :]
        layer = dict(intermediate_dim=self.intermediate_dim, num_attention_heads=self.num_attention_heads,
                     dropout_rate=self.dropout_rate, layer_norm_epsilon=self.layer_norm_epsilon)
        return BertEncoderBlock(self.num_hidden_layers, layer, name='encoder_block')(
            x, mask, not enable_dropout)


class BertModel(nn.Module):
    """BERT text tower: `BertEncoder`, the [CLS] (first) token, an optional `head` Dense.

    `config` is 'base' or 'large' (flaxformer's BertBaseConfig / BertLargeConfig, as the original),
    or a mapping of `BertEncoder` fields (a smaller BERT, e.g. for tests). Padding is token 0.
    """

    config: Any
    num_classes: int | None = None

    @nn.compact
    def __call__(self, tokens: Array) -> tuple[Array, dict]:
        if isinstance(self.config, str):
            if self.config not in BERT_CONFIGS:
                raise ValueError(f'text.config={self.config!r} is unknown; expected one of '
                                 f'{tuple(BERT_CONFIGS)} or a mapping of BertEncoder fields')
            fields = BERT_CONFIGS[self.config]
        elif isinstance(self.config, Mapping) or hasattr(self.config, 'items'):
            fields = dict(self.config.items())
        else:
            raise ValueError(f'text.config={self.config!r} is neither a BERT name nor a mapping')
        out = {}
        batch, length = tokens.shape
        x = out['transformed'] = BertEncoder(**fields, name='BertEncoder_0')(
            token_ids=tokens,
            position_ids=jnp.tile(jnp.arange(length, dtype=jnp.int32), [batch, 1]),
            segment_ids=jnp.zeros([batch, length], jnp.int32),
            input_mask=(tokens != 0).astype(jnp.int32))
        x = out['pre_logits'] = x[:, 0]
        if self.num_classes:
            x = out['logits'] = nn.Dense(self.num_classes, name='head')(x)
        return x, out


class TextTransformer(nn.Module):
    """The small text tower (LiT's, and big_vision's `text_transformer` of SigLIP): token embedding +
    learned position embedding, the ViT `Encoder` (pre-LayerNorm, no attention dropout), the *last*
    token (SentencePiece's sticky </s>), `head`. `layer_norm_eps` and `gelu_approximate` as the ViT's
    (big_vision's: Flax's defaults, 1e-6 and the tanh GELU)."""

    num_classes: int
    width: int = 512
    num_layers: int = 12
    mlp_dim: int = 2048
    num_heads: int = 8
    dropout_rate: float = 0.0
    vocab_size: int = 32_000
    layer_norm_eps: float = 1e-6
    gelu_approximate: bool = True

    @nn.compact
    def __call__(self, tokens: Array) -> tuple[Array, dict]:
        out = {}
        x = out['embedded'] = nn.Embed(num_embeddings=self.vocab_size, features=self.width,
                                       name='Embed_0')(tokens)
        _, length, width = x.shape
        x = x + self.param('pos_embedding', nn.initializers.normal(stddev=1 / jnp.sqrt(width)),
                           (1, length, width), x.dtype)
        x, _ = Encoder(num_layers=self.num_layers, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                       dropout_rate=self.dropout_rate, attention_dropout_rate=0.0,
                       add_position_embedding=False, layer_norm_eps=self.layer_norm_eps,
                       gelu_approximate=self.gelu_approximate, name='Encoder_0')(x, train=False)
        x = out['pre_logits'] = x[:, -1, :]
        x = out['logits'] = nn.Dense(self.num_classes, name='head')(x)
        return x, out


class LitModel(nn.Module):
    """A LiT or SigLIP model with the original's fields (and big_vision's two-tower ones).

    `image`: the ViT config of the image tower (its head has `out_dim[0]` outputs, or none);
    `text_model`: 'bert' or 'text_transformer'; `text`: that tower's fields (`config` for BERT);
    `pp`: `tokenizer_name` ('bert' | 'sentencepiece'), `max_len` (tokens per text) and `size`
    (image side), used by `vit_jax.preprocess`; `out_dim`: (image, text) head sizes, an int for
    both, None for no head; `model_name`: its `MODEL_CONFIGS` name.

    `temperature_init`, `bias_init`: big_vision's two-tower fields (only a fresh init reads their
    values); with a `bias_init` the model has the learned bias `b` of SigLIP ("Sigmoid Loss for
    Language Image Pre-Training", Zhai et al. 2023; big_vision's SigLIP configs: 10 and -10).

    `model.apply(variables, images=..., tokens=...)` -> `(zimg, ztxt, out)`: L2-normalised
    embeddings (None for an input not given) and `out` with `out['t']`, the learned temperature
    that scales the dot products, for a SigLIP model `out['b']`, the bias added to them, and the
    towers' intermediate values. `scores` turns them into probabilities: LiT's softmax over the texts,
    SigLIP's sigmoid of each image-text pair on its own.
    """

    image: Any
    text_model: str
    text: Any
    pp: Any
    out_dim: Any
    model_name: str | None = None
    temperature_init: float = 1.0
    bias_init: float | None = None

    @nn.compact
    def __call__(self, *, images: Array | None = None, tokens: Array | None = None
                 ) -> tuple[Array | None, Array | None, dict]:
        ztxt = zimg = None
        out = {}
        out_dims = (self.out_dim, self.out_dim) if isinstance(self.out_dim, int) else tuple(self.out_dim)

        if tokens is not None:
            if self.text_model not in TEXT_MODELS:
                raise ValueError(f'text_model={self.text_model!r} is unknown; expected one of {TEXT_MODELS}')
            tower = BertModel if self.text_model == 'bert' else TextTransformer
            ztxt, out_txt = tower(**{'num_classes': out_dims[1], **dict((self.text or {}).items())},
                                  name='txt')(tokens)
            out.update({f'txt/{k}': v for k, v in out_txt.items()})
            out['txt/norm'] = jnp.linalg.norm(ztxt, axis=1, keepdims=True)
            out['txt/normalized'] = ztxt = ztxt / (out['txt/norm'] + 1e-8)

        if images is not None:
            zimg = VisionTransformer(**{**dict(self.image.items()), 'num_classes': out_dims[0]},
                                     name='img')(images, train=False)
            out['img/norm'] = jnp.linalg.norm(zimg, axis=1, keepdims=True)
            out['img/normalized'] = zimg = zimg / (out['img/norm'] + 1e-8)

        t_init = jnp.log(self.temperature_init)
        t = self.param('t', lambda key, shape, dtype: t_init * jnp.ones(shape, dtype), (1,), jnp.float32)
        out['t'] = jnp.exp(t)
        if self.bias_init is not None:
            b_init = self.bias_init
            out['b'] = self.param('b', lambda key, shape, dtype: b_init * jnp.ones(shape, dtype), (1,),
                                  jnp.float32)
        return zimg, ztxt, out


def scores(logits: Array, sigmoid: bool) -> Array:
    """Zero-shot probabilities of image-text logits [images, texts]: SigLIP's sigmoid, each pair on its
    own (an image may match several texts, or none), or LiT's softmax over the texts (they sum to 1)."""
    return jax.nn.sigmoid(logits) if sigmoid else jax.nn.softmax(logits, axis=-1)
