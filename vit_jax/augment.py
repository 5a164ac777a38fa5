"""Data augmentation for the AugReg recipes: RandAugment, Mixup / CutMix, in TensorFlow.

They run inside the tf.data pipeline (`vit_jax.input_pipeline`), so they use stateless random ops:
every draw is a function of an explicit `seed` [2], which makes a resumed run see the same data.

RandAugment follows the TPU / big_vision implementation (`distort_image_with_randaugment`):
`num_layers` times, one of 16 operations picked uniformly, applied with a probability drawn from
U(0.2, 0.8), at strength `magnitude / 10` of its range (AugReg uses magnitudes 0-20; above 10 the
ranges extrapolate as in the original). Images are uint8 [H, W, 3]; affine operations fill with 128.

Mixup / CutMix act on a batch (images in [-1, 1], float targets): each batch is mixed with its
reverse, lambda ~ Beta(alpha, alpha); CutMix pastes a box of area (1 - lambda) and sets lambda to
the exact pasted fraction. Targets are mixed with the same lambda, so each row still sums to 1.
"""

from __future__ import annotations

import math

from vit_jax.tflib import tf

FILL = 128
MAX_LEVEL = 10.0
TRANSLATE_CONST = 100.0
CUTOUT_CONST = 40.0


def _split(seed: tf.Tensor, n: int) -> tf.Tensor:
    return tf.random.experimental.stateless_split(seed, n)


def _uniform(seed: tf.Tensor, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed=seed, minval=low, maxval=high)


def _signed(value: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """+value or -value with equal probability."""
    return tf.where(_uniform(seed) < 0.5, -value, value)


# --- pixel operations (uint8 [H, W, 3] in and out)


def blend(image1: tf.Tensor, image2: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """image1 + factor * (image2 - image1), clipped to [0, 255] (factor > 1 extrapolates)."""
    a, b = tf.cast(image1, tf.float32), tf.cast(image2, tf.float32)
    return tf.cast(tf.clip_by_value(a + factor * (b - a), 0.0, 255.0), tf.uint8)


def _grey(image: tf.Tensor) -> tf.Tensor:
    return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def color(image, factor):
    return blend(_grey(image), image, factor)


def contrast(image, factor):
    mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))
    return blend(tf.fill(tf.shape(image), tf.cast(mean, tf.uint8)), image, factor)


def brightness(image, factor):
    return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
    """Blend with a 3x3 smoothed copy (border pixels left as they are)."""
    x = tf.cast(image, tf.float32)[None]
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding='VALID')[0]
    smooth = tf.cast(tf.clip_by_value(tf.round(smooth), 0, 255), tf.uint8)
    mask = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(mask, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
    return blend(degenerate, image, factor)


def posterize(image, bits):
    shift = tf.cast(8 - bits, tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, threshold):
    return tf.where(tf.cast(image, tf.int32) < tf.cast(threshold, tf.int32), image, 255 - image)


def solarize_add(image, addition, threshold=128):
    added = tf.clip_by_value(tf.cast(image, tf.int32) + tf.cast(addition, tf.int32), 0, 255)
    added = tf.cast(added, tf.uint8)
    return tf.where(image < threshold, added, image)


def invert(image):
    return 255 - image


def autocontrast(image):
    """Stretch each channel to [0, 255]; constant channels are left alone."""
    x = tf.cast(image, tf.float32)
    lo, hi = tf.reduce_min(x, [0, 1]), tf.reduce_max(x, [0, 1])
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1e-6), 1.0)
    offset = tf.where(hi > lo, lo, 0.0)
    return tf.cast(tf.clip_by_value((x - offset) * scale, 0, 255), tf.uint8)


def equalize(image):
    """Histogram equalisation per channel (PIL's ImageOps.equalize)."""
    def channel(c):
        im = tf.cast(image[:, :, c], tf.int32)
        histo = tf.histogram_fixed_width(im, [0, 255], nbins=256)
        nonzero = tf.reshape(tf.gather(histo, tf.where(histo != 0)), [-1])
        step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
        lut = (tf.cumsum(histo) + step // 2) // tf.maximum(step, 1)
        lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
        return tf.where(step == 0, im, tf.gather(lut, im))
    return tf.cast(tf.stack([channel(c) for c in range(3)], -1), tf.uint8)


def _transform(image, transform):
    """Projective transform (output -> input coordinates, 8 numbers), nearest, filled with FILL."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(tf.reshape(transform, [1, 8]), tf.float32),
        output_shape=tf.shape(image)[:2], fill_value=float(FILL), interpolation='NEAREST',
        fill_mode='CONSTANT')
    return out[0]


def rotate(image, degrees):
    h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    a = degrees * math.pi / 180.0
    cos, sin = tf.cos(a), tf.sin(a)
    dx = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
    dy = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
    return _transform(image, tf.stack([cos, -sin, dx, sin, cos, dy, 0.0, 0.0]))


def shear_x(image, level):
    return _transform(image, tf.stack([1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def shear_y(image, level):
    return _transform(image, tf.stack([1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0]))


def translate_x(image, pixels):
    return _transform(image, tf.stack([1.0, 0.0, -pixels, 0.0, 1.0, 0.0, 0.0, 0.0]))


def translate_y(image, pixels):
    return _transform(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, -pixels, 0.0, 0.0]))


def cutout(image, pad_size, seed):
    """A (2 * pad_size)-square around a random centre set to FILL."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    s = _split(seed, 2)
    cy = tf.random.stateless_uniform([], seed=s[0], minval=0, maxval=h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], seed=s[1], minval=0, maxval=w, dtype=tf.int32)
    ys, xs = tf.range(h)[:, None], tf.range(w)[None, :]
    box = (tf.abs(ys - cy) < pad_size) & (tf.abs(xs - cx) < pad_size)
    return tf.where(box[..., None], tf.cast(FILL, image.dtype), image)


def _ops(magnitude: float) -> list:
    """The 16 RandAugment operations as `f(image, seed)` at `magnitude` (original level mapping)."""
    m = magnitude / MAX_LEVEL
    enhance = m * 1.8 + 0.1
    return [
        lambda im, s: autocontrast(im),
        lambda im, s: equalize(im),
        lambda im, s: invert(im),
        lambda im, s: rotate(im, _signed(m * 30.0, s)),
        lambda im, s: posterize(im, int(m * 4)) if int(m * 4) <= 8 else im,
        lambda im, s: solarize(im, int(m * 256)),
        lambda im, s: color(im, enhance),
        lambda im, s: contrast(im, enhance),
        lambda im, s: brightness(im, enhance),
        lambda im, s: sharpness(im, enhance),
        lambda im, s: shear_x(im, _signed(m * 0.3, s)),
        lambda im, s: shear_y(im, _signed(m * 0.3, s)),
        lambda im, s: translate_x(im, _signed(m * TRANSLATE_CONST, s)),
        lambda im, s: translate_y(im, _signed(m * TRANSLATE_CONST, s)),
        lambda im, s: cutout(im, int(m * CUTOUT_CONST), s),
        lambda im, s: solarize_add(im, int(m * 110)),
    ]


OP_NAMES = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'Color',
            'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Cutout',
            'SolarizeAdd')


def randaugment(image: tf.Tensor, seed: tf.Tensor, num_layers: int, magnitude: float) -> tf.Tensor:
    """RandAugment on a uint8 [H, W, 3] image; deterministic in `seed` [2]."""
    ops = _ops(magnitude)
    for layer_seed in tf.unstack(_split(seed, num_layers)):
        image = _randaugment_layer(image, layer_seed, ops)
    return image


def _randaugment_layer(image: tf.Tensor, seed: tf.Tensor, ops: list) -> tf.Tensor:
    """One uniformly chosen operation, applied with a probability drawn from U(0.2, 0.8)."""
    s = _split(seed, 4)
    index = tf.random.stateless_uniform([], seed=s[0], minval=0, maxval=len(ops), dtype=tf.int32)
    prob = _uniform(s[1], 0.2, 0.8)
    branches = [lambda op=op: tf.ensure_shape(op(image, s[2]), image.shape) for op in ops]
    return tf.cond(_uniform(s[3]) < prob, lambda: tf.switch_case(index, branches), lambda: image)


# --- batch mixing


def _beta(seed: tf.Tensor, alpha: float) -> tf.Tensor:
    s = _split(seed, 2)
    a = tf.random.stateless_gamma([], seed=s[0], alpha=alpha)
    b = tf.random.stateless_gamma([], seed=s[1], alpha=alpha)
    return a / tf.maximum(a + b, 1e-12)


def _cutmix_box(seed: tf.Tensor, lam: tf.Tensor, height, width) -> tf.Tensor:
    """Bool [H, W] box of about (1 - lam) of the area at a uniform random centre (clipped)."""
    ratio = tf.sqrt(1.0 - lam)
    ch, cw = ratio * tf.cast(height, tf.float32), ratio * tf.cast(width, tf.float32)
    s = _split(seed, 2)
    cy = _uniform(s[0]) * tf.cast(height, tf.float32)
    cx = _uniform(s[1]) * tf.cast(width, tf.float32)
    ys = tf.cast(tf.range(height), tf.float32)[:, None] + 0.5
    xs = tf.cast(tf.range(width), tf.float32)[None, :] + 0.5
    return (tf.abs(ys - cy) <= ch / 2) & (tf.abs(xs - cx) <= cw / 2)


def mix_batch(batch: dict[str, tf.Tensor], seed: tf.Tensor, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0, switch_prob: float = 0.5, prob: float = 1.0
              ) -> dict[str, tf.Tensor]:
    """Mixup or CutMix of a batch with its reverse; with probability `prob`, else unchanged.

    With both alphas > 0, CutMix is chosen with probability `switch_prob`.
    """
    s = _split(seed, 5)
    images, labels = batch['image'], batch['label']
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or switch_prob >= 1)
    if cutmix_alpha > 0 and mixup_alpha > 0 and 0 < switch_prob < 1:
        use_cutmix = _uniform(s[0]) < switch_prob
    use_cutmix = tf.convert_to_tensor(use_cutmix)
    lam_mix = _beta(s[1], mixup_alpha) if mixup_alpha > 0 else tf.constant(1.0)
    lam_cut = _beta(s[2], cutmix_alpha) if cutmix_alpha > 0 else tf.constant(1.0)
    box = _cutmix_box(s[3], lam_cut, tf.shape(images)[1], tf.shape(images)[2])
    lam_box = 1.0 - tf.reduce_mean(tf.cast(box, tf.float32))
    apply = _uniform(s[4]) < prob
    lam = tf.where(apply, tf.where(use_cutmix, lam_box, lam_mix), 1.0)
    other_labels = tf.reverse(labels, [0])

    def mix():  # only the chosen one of the three runs: these are whole-batch passes
        other = tf.reverse(images, [0])
        inside = tf.cast(box, images.dtype)[None, :, :, None]  # 0/1: the products are exact
        return tf.cond(use_cutmix, lambda: images * (1.0 - inside) + other * inside,
                       lambda: lam * images + (1.0 - lam) * other)

    mixed = tf.cond(apply, mix, lambda: images)
    return {**batch, 'image': mixed, 'label': lam * labels + (1.0 - lam) * other_labels}
