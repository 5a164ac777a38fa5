"""Image files: which files are images, finding them (local or gs://), and their encoded bytes.

Every reader of image files in vit_jax (training and eval on folders/CSVs, vit-predict,
vit-analyze, few-shot, zero-shot) takes the bytes from `encoded_bytes` and decodes them with
`vit_jax.preprocessing.decode`, so a file gives the same model input whichever entry point reads
it. Formats TensorFlow decodes natively are passed through untouched; the others that Pillow
reads (TIFF, PPM) and animated WebP (which TensorFlow refuses) are re-encoded losslessly as PNG on
the way in. The decisions, the same at every entry point: 16-bit images are scaled to 8 bits (not
clipped); grey, grey+alpha, palette (with or without transparency) and CMYK become RGB and alpha is
dropped (the colour under a transparent pixel is kept, as TensorFlow and Pillow do); animations give
their first frame; EXIF orientation is not applied (as tf.data / tfds pipelines, so training and
inference see the same pixels); 32-bit integer and floating-point images are refused.

Decompression bombs: a file that declares more than `max_pixels` pixels (default `MAX_PIXELS`,
Pillow's own bound, ~9459x9459) is refused from its header, before anything is decoded, on every
path: `check_image` (training's check of folders/CSVs), `check_encoded` (inference), `to_png`.
Raise the bound with `--max-image-pixels N` (vit-predict, vit-analyze, vit-zeroshot, vit-fewshot)
or `pp.max_image_pixels` (vit-train).
"""

from __future__ import annotations

import glob
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from vit_jax import paths
from vit_jax.errors import DataError

# What every image reader accepts: TensorFlow's native formats, plus TIFF / PPM through Pillow.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp', '.tif', '.tiff', '.ppm')
TF_FORMATS = ('JPEG', 'PNG', 'GIF', 'BMP', 'MPO', 'WEBP')   # Pillow's names of what tf.io decodes
PIL_ONLY_EXTENSIONS = ('.tif', '.tiff', '.ppm')
MAX_PIXELS = 89_478_485   # per image (per frame); PIL.Image.MAX_IMAGE_PIXELS's default: 1 GiB / 4 / 3


def is_image_file(name: str) -> bool:
    base = os.path.basename(name)
    return base.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith('.')


def _walk(root: str) -> Iterator[str]:
    """Files under `root`, sorted, each visited once (local: by real path, so symlink loops end)."""
    if paths.is_remote(root):
        for child in sorted(paths.listdir(root)):
            full = paths.join(root, child)
            if paths.is_dir(full):
                yield from _walk(full)
            else:
                yield full
        return
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for f in sorted(filenames):
            yield os.path.join(dirpath, f)


def image_files(folder: str) -> list[str]:
    """Image files under `folder` (recursive), sorted, without duplicates of the same real file."""
    found, seen = [], set()
    for f in _walk(folder):
        if not is_image_file(f):
            continue
        key = f if paths.is_remote(f) else os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            found.append(f)
    return found


def find_images(inputs: Sequence[str]) -> list[str]:
    """Expands files, folders (recursively) and globs, keeping input order; DataError if none."""
    found: list[str] = []
    for item in inputs:
        if paths.is_dir(item):
            matches = image_files(item)
        elif paths.exists(item):
            matches = [item]
        elif not paths.is_remote(item):
            pattern = os.path.expanduser(item)
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        else:
            matches = sorted(os.fspath(p) for p in paths.path(paths.parent(item)).glob(paths.name(item)))
        if not matches:
            raise DataError(f'no images found for {item!r}')
        found.extend(m for m in matches if m not in found)
    return found


def _animated_webp(data: bytes) -> bool:
    """An extended WebP (`VP8X` chunk) with its animation flag set."""
    return data[:4] == b'RIFF' and data[8:16] == b'WEBPVP8X' and len(data) > 20 and bool(data[20] & 0x02)


def encoded_bytes(path: str, max_pixels: int = MAX_PIXELS) -> bytes:
    """The bytes that `vit_jax.preprocessing.decode` turns into the image of file `path`."""
    data = paths.read_bytes(path)
    if path.lower().endswith(PIL_ONLY_EXTENSIONS) or _animated_webp(data):
        return to_png(data, path, max_pixels)
    return data


class _TooLarge(Exception):
    """An image that declares more pixels than the bound (its message says how many)."""


def _open(f: BinaryIO, max_pixels: int):
    """`PIL.Image.open` (the header only), refusing more than `max_pixels` pixels before any decoding.

    Pillow's own bound (`PIL.Image.MAX_IMAGE_PIXELS`, the same default) is raised, never lowered,
    to a larger `max_pixels`: the caller asked for such images.
    """
    from PIL import Image
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():   # Pillow warns between its bound and twice it: we decide here
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        try:
            im = Image.open(f)
        except Image.DecompressionBombError:   # above twice Pillow's bound: its message has no size
            raise _TooLarge(_too_large(_declared_size(f), max_pixels)) from None
    if im.width * im.height > max_pixels:
        im.close()
        raise _TooLarge(_too_large(im.size, max_pixels))
    return im


def _declared_size(f: BinaryIO) -> tuple[int, int]:
    """The size in the header of an image that `PIL.Image.open` refused as a bomb (its format's
    opener from Pillow's registry, which reads the header only)."""
    from PIL import Image
    f.seek(0)
    prefix = f.read(16)
    for name in Image.ID:
        opener, accept = Image.OPEN[name]
        found = accept is None or accept(prefix)
        if found and not isinstance(found, str):
            f.seek(0)
            try:
                return opener(f, '').size
            except Exception:  # noqa: BLE001, S112 - not this format: the next one (as Image.open)
                continue
    raise ValueError('no Pillow format reads the header it refused')   # not reached


def _too_large(size: tuple[int, int], max_pixels: int) -> str:
    width, height = size
    return (f'declares {width}x{height} pixels ({width * height:,}), more than '
            f'max_image_pixels={max_pixels:,} (a decompression bomb?); to read it, raise the bound '
            '(--max-image-pixels N, or pp.max_image_pixels in a training config)')


def to_png(data: bytes, source: str, max_pixels: int = MAX_PIXELS) -> bytes:
    """An image Pillow reads but TensorFlow does not, re-encoded as (lossless) PNG."""
    import numpy as np
    from PIL import Image
    try:
        with _open(io.BytesIO(data), max_pixels) as im:
            im.seek(0)
            if im.mode in ('I', 'F'):
                kind = '32-bit integer' if im.mode == 'I' else 'floating-point'
                raise DataError(f'{source}: {kind} images (mode {im.mode}) are not supported; save it with '
                                '8 or 16 bits per channel')
            if im.mode.startswith('I;16'):   # scaled to 8 bits as TensorFlow does, not clipped
                im = Image.fromarray((np.asarray(im).astype(np.uint32) * 255 // 65535).astype(np.uint8))
            out = io.BytesIO()
            im.convert('RGBA' if 'A' in im.getbands() else 'RGB').save(out, format='PNG')
    except DataError:
        raise
    except _TooLarge as e:
        raise DataError(f'{source}: {e}') from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad files
        raise DataError(f'{source}: unreadable image ({type(e).__name__}: {e})') from None
    return out.getvalue()


def check_image(path: str, max_pixels: int = MAX_PIXELS) -> str | None:
    """None if `path` is a readable image of a supported format within `max_pixels`, else why not, as
    'unreadable image (...)' or 'declares WxH pixels ...' (Pillow, JPEGs at 1/8)."""
    if path.lower().endswith(PIL_ONLY_EXTENSIONS):
        try:
            to_png(paths.read_bytes(path), path, max_pixels)
        except DataError as e:
            return str(e).removeprefix(f'{path}: ')
        return None
    try:
        with paths.open_read(path) as f:
            return _problem(f, max_pixels)
    except OSError as e:
        return f'unreadable image ({type(e).__name__}: {e})'


def check_encoded(data: bytes, max_pixels: int = MAX_PIXELS) -> str | None:
    """`check_image` of the bytes of `encoded_bytes`: None if TensorFlow decodes them whole, else why not."""
    return _problem(io.BytesIO(data), max_pixels)


def _problem(f: BinaryIO, max_pixels: int) -> str | None:
    from PIL import UnidentifiedImageError
    try:
        with _open(f, max_pixels) as im:
            if im.format not in TF_FORMATS:
                return f'unreadable image (unsupported format {im.format})'
            im.draft('RGB', (im.width // 8 + 1, im.height // 8 + 1))
            im.load()
    except _TooLarge as e:
        return str(e)
    except UnidentifiedImageError:   # its message names the file object
        return f'unreadable image (not an image of a supported format ({", ".join(IMAGE_EXTENSIONS)}))'
    except Exception as e:  # noqa: BLE001 - any failure means unreadable
        return f'unreadable image ({type(e).__name__}: {e})'
    return None
