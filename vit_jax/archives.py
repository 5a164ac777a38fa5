"""Zip archives from files we did not write (`.npz` checkpoints, `vit-export` files), opened safely.

Everything is checked from the zip directory and the `.npy` headers before a byte is inflated,
so a hostile file is refused in milliseconds with memory bounded by its directory:

- inflation: all entries together may not expand to more than `max(INFLATE_FLOOR, INFLATE_RATIO
  x the bytes stored)`. Published checkpoints are stored uncompressed (ratio 1); `np.savez_compressed`
  files of real weights compress ~1.1x, and even an all-zero head stays under the floor. A zip bomb
  (deflate reaches ~1000x) is refused. `zipfile` never inflates past an entry's declared size, so
  the declared sizes bound the memory.
- `.npy` entries: the header's dtype and shape must account for exactly the entry's bytes (a
  header declaring a huge shape over a few bytes is refused before numpy allocates it), and no
  entry may hold Python objects (pickles).
"""

from __future__ import annotations

import math
import zipfile

import numpy as np

from vit_jax.errors import CheckpointError

INFLATE_RATIO = 100
INFLATE_FLOOR = 256 << 20
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}


def check_zip(zf: zipfile.ZipFile, source: str) -> None:
    """CheckpointError naming `source` if the archive would inflate beyond the bounds above."""
    infos = zf.infolist()
    stored = sum(i.compress_size for i in infos)
    inflated = sum(i.file_size for i in infos)
    if inflated > max(INFLATE_FLOOR, INFLATE_RATIO * stored):
        worst = max(infos, key=lambda i: i.file_size)
        raise CheckpointError(
            f'{source}: refusing to inflate {inflated:,} bytes from {stored:,} stored '
            f'(largest entry {worst.filename!r}: {worst.file_size:,} bytes); a zip bomb or a corrupt file')
    for info in infos:
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise CheckpointError(f'{source}: corrupt zip entry {info.filename!r} (stored '
                                  f'{info.compress_size:,} bytes but declares {info.file_size:,})')


def npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the `.npy` entry `info`, checked against the bytes the entry holds."""
    key = info.filename.removesuffix('.npy')
    try:
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            reader = _NPY_HEADER_READERS.get(version)
            if reader is None:
                raise CheckpointError(f'{source}: array {key!r} has unsupported .npy version {version}')
            shape, _, dtype = reader(f)
            header = f.tell()
    except CheckpointError:
        raise
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f'{source}: array {key!r} has a corrupt .npy header ({e})') from None
    if dtype.hasobject:
        raise CheckpointError(f'{source}: array {key!r} holds pickled Python objects; refusing to load it '
                              '(unpickling can run code)')
    declared = math.prod(int(n) for n in shape) * dtype.itemsize
    held = info.file_size - header
    if declared != held:
        raise CheckpointError(f'{source}: array {key!r} declares shape {tuple(shape)} {dtype} '
                              f'({declared:,} bytes) but holds {held:,} bytes')
    return tuple(shape), dtype


def check_npz(zf: zipfile.ZipFile, source: str) -> None:
    """`check_zip`, then every `.npy` entry's header (see the module doc)."""
    check_zip(zf, source)
    for info in zf.infolist():
        if info.filename.endswith('.npy'):
            npy_header(zf, info, source)
