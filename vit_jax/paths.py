"""Every file operation of vit_jax, local or remote (gs://...), through etils.epath.

Workdirs, checkpoints, exports, metrics, the download cache and image folders may be local
paths or bucket URLs; all of them are read and written here, so that one code path serves both.
Remote paths go through fsspec/gcsfs (`EPATH_USE_TF=false`, set below unless the user set it):
that client honours `STORAGE_EMULATOR_HOST`, and tf.io.gfile, epath's other backend, does not;
gcsfs's listing cache is off, since other processes write the same buckets.

Writes are atomic: a file appears complete or not at all (local: a temporary sibling, then
`os.replace`; buckets: one object upload, which is published only once complete), and a
directory is written beside its destination and swapped in whole. OS errors are re-raised with
the path in the message ("No space left on device: 'workdir/model.npz'").
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from typing import BinaryIO

from vit_jax.errors import DataError

os.environ.setdefault('EPATH_USE_TF', 'false')   # before epath picks a backend for gs:// paths

import fsspec  # noqa: E402
from etils import epath  # noqa: E402

# Other processes write the same bucket (a resumed run, the lock of another host): never answer
# from a cached directory listing, whose sizes would truncate a file that has grown since.
for _protocol in ('gs', 'gcs'):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault('use_listings_cache', False)

PathLike = str | os.PathLike
_REMOTE = re.compile(r'^[a-z][a-z0-9+.-]*://')


def is_remote(p: PathLike) -> bool:
    """True for URLs such as gs://bucket/run (never passed through os.path)."""
    return bool(_REMOTE.match(os.fspath(p)))


def path(p: PathLike) -> epath.Path:
    """An epath.Path; local paths get `~` expanded."""
    p = os.fspath(p)
    return epath.Path(p if is_remote(p) else os.path.expanduser(p))


def join(p: PathLike, *parts: str) -> str:
    """`p/part/...` as a string (a URL stays a URL)."""
    return os.fspath(path(p).joinpath(*parts))


def name(p: PathLike) -> str:
    return path(p).name


def parent(p: PathLike) -> str:
    return os.fspath(path(p).parent)


def path_error(p: PathLike, e: BaseException) -> OSError:
    """`e` as an OSError whose message names `p` (errno kept when there is one)."""
    if isinstance(e, OSError) and e.errno is not None:
        out = type(e)(e.errno, e.strerror or str(e), os.fspath(p))
    else:
        out = OSError(f'{os.fspath(p)}: {" ".join(str(e).split()) or type(e).__name__}')
    return out


@contextlib.contextmanager
def _naming(p: PathLike) -> Iterator[None]:
    """Re-raises OS errors (and remote clients' errors) with `p` in the message."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.filename is not None:
            raise
        raise path_error(p, e) from None


def exists(p: PathLike) -> bool:
    with _naming(p):
        return path(p).exists()


def is_dir(p: PathLike) -> bool:
    with _naming(p):
        return path(p).is_dir()


def is_file(p: PathLike) -> bool:
    with _naming(p):
        return path(p).is_file()


def size(p: PathLike) -> int:
    with _naming(p):
        return int(path(p).stat().length)


def listdir(p: PathLike) -> list[str]:
    """Sorted names in a directory."""
    with _naming(p):
        return sorted(child.name for child in path(p).iterdir())


def read_bytes(p: PathLike) -> bytes:
    with _naming(p):
        return path(p).read_bytes()


def read_text(p: PathLike) -> str:
    """A text file: UTF-8, or UTF-16 / UTF-8 with a byte-order mark (what Windows editors save);
    DataError naming the file otherwise."""
    data = read_bytes(p)
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), 'utf-8')
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise DataError(f'{os.fspath(p)}: not {encoding.upper()} text (byte {e.start}); save it as UTF-8'
                        ) from None


_BOMS = ((b'\xef\xbb\xbf', 'utf-8-sig'), (b'\xff\xfe', 'utf-16'), (b'\xfe\xff', 'utf-16'))


def open_read(p: PathLike) -> BinaryIO:
    """A seekable binary file object (local file, or a remote object read in ranges)."""
    with _naming(p):
        if is_remote(p):
            return path(p).open('rb')
        return open(path(p), 'rb')  # noqa: SIM115  (the caller closes it)


def makedirs(p: PathLike) -> None:
    with _naming(p):
        path(p).mkdir(parents=True, exist_ok=True)


def remove(p: PathLike, missing_ok: bool = True) -> None:
    with _naming(p):
        try:
            path(p).unlink()
        except FileNotFoundError:
            if not missing_ok:
                raise


def rmtree(p: PathLike) -> None:
    with _naming(p):
        if exists(p):
            path(p).rmtree()


def write_atomic(p: PathLike, data: bytes | str) -> str:
    """Writes `data` (str as UTF-8) so that `p` is complete or untouched, never half-written."""
    target = os.fspath(path(p))
    if isinstance(data, str):
        data = data.encode('utf-8')
    if is_remote(target):
        with _naming(target):
            path(target).write_bytes(data)   # an object is published only once complete
        return target
    directory = os.path.dirname(os.path.abspath(target))
    with _naming(target):
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f'.{os.path.basename(target)}.{uuid.uuid4().hex[:12]}.tmp')
        # Permissions as the user's umask allows, like any file they write (mkstemp would give 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, 'wb') as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
    return target


def append(p: PathLike, data: bytes | str) -> str:
    """Adds `data` at the end of the file `p` (created if missing), at the cost of `data`, not of
    the file: locally an append, fsynced (a crash can tear the last line, which readers drop); in a
    bucket, where an object cannot grow, the new bytes are uploaded as an object of their own and
    composed onto `p` by the server (GCS compose), then removed."""
    target = os.fspath(path(p))
    if isinstance(data, str):
        data = data.encode('utf-8')
    if not is_remote(target):
        with _naming(target):
            os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            with os.fdopen(fd, 'wb') as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        return target
    if not exists(target):
        return write_atomic(target, data)
    part = join(parent(target), f'.{name(target)}.part-{uuid.uuid4().hex[:12]}')
    write_atomic(part, data)
    try:
        with _naming(target):
            fs, _ = fsspec.core.url_to_fs(target)
            fs.merge(fs._strip_protocol(target), [fs._strip_protocol(target), fs._strip_protocol(part)])
    finally:
        remove(part)
    return target


def write_dir_atomic(p: PathLike, files: Mapping[str, bytes | str]) -> str:
    """Writes the directory `p` holding exactly `files` ({name: data}), swapped in whole.

    Locally the files are written to a temporary sibling directory, which then replaces `p`
    (the old directory, if any, is moved aside first and deleted last): a failure (full disk)
    leaves the old directory as it was. In a bucket every object is written under a temporary
    prefix first and then copied into place, and objects of the old directory that the new one
    does not have are removed.
    """
    target = os.fspath(path(p))
    if exists(target) and not is_dir(target):
        raise FileExistsError(17, 'exists and is not a directory', target)
    tmp = join(parent(target), f'.{name(target)}.tmp-{uuid.uuid4().hex[:8]}')
    try:
        for filename, data in files.items():
            write_atomic(join(tmp, filename), data)
        if is_remote(target):
            old = set(listdir(target)) if exists(target) else set()
            for filename in files:
                path(join(tmp, filename)).copy(path(join(target, filename)), overwrite=True)
            for filename in old - set(files):
                remove(join(target, filename))
        else:
            aside = None
            if os.path.exists(target):
                aside = f'{tmp}.old'
                os.rename(target, aside)
            os.rename(tmp, target)
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
    except OSError as e:   # named for the directory asked for, not the temporary one
        raise (type(e)(e.errno, e.strerror, target) if e.errno else path_error(target, e)) from None
    finally:
        rmtree(tmp)
    return target

