"""Verified, resumable HTTP downloads and the records that let a cached file be reused.

`download(url, dst)` fetches into `dst + '.part'` (resumed with HTTP Range), checks it against the
size and hash the server reports (Cloud Storage's `x-goog-stored-content-length` and `x-goog-hash`,
else Content-Length) and only then renames it into place, recording what was checked in
`<file>.verified.json` (`record_path`). `check_cached` checks a file against its record (size and full
hash); `reverify` checks one that failed it against the server again. md5 is always checked; crc32c
only when the optional `google_crc32c` package is installed. Nothing here knows what the files are.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

from vit_jax import paths
from vit_jax.errors import DownloadError

try:  # Optional: Cloud Storage's crc32c (composite objects report no md5).
    import google_crc32c
except ImportError:  # pragma: no cover - depends on the environment
    google_crc32c = None

log = logging.getLogger(__name__)

RECORD_SUFFIX = '.verified.json'
# What an offline machine can do instead (appended to the error; {name}: the file's name).
OFFLINE_HINT = ''


def record_path(path: str) -> str:
    """The verification record of a cached file: `<file>.verified.json`."""
    return os.fspath(path) + RECORD_SUFFIX


# --- What the server reports, and checking files against it ---------------------------------

@dataclasses.dataclass(frozen=True)
class _Reported:
    """An object's size and hashes (base64, as the server sent them); None where not reported."""
    size: int | None = None
    md5: str | None = None
    crc32c: str | None = None

    def hashes(self) -> dict[str, str]:
        """The reported hashes this machine can compute (crc32c needs google_crc32c)."""
        out = {'md5': self.md5} if self.md5 else {}
        if self.crc32c and google_crc32c is not None:
            out['crc32c'] = self.crc32c
        return out

    def verifiable(self) -> bool:
        return self.size is not None or bool(self.hashes())

    def crc32c_note(self) -> str:
        """Why a reported crc32c was not enough ('' when it was not the reason)."""
        only = self.crc32c and not self.md5 and google_crc32c is None
        return ' (only a crc32c hash, and google-crc32c is not installed)' if only else ''


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _reported(headers: Any, *, status: int, have: int = 0) -> _Reported:
    """Size and hashes of the whole object from response headers (`have`: bytes before a 206)."""
    hashes = {}
    for value in headers.get_all('x-goog-hash') or ():
        for item in value.split(','):
            algorithm, sep, digest = item.strip().partition('=')
            if sep and algorithm.lower() in ('md5', 'crc32c'):
                hashes[algorithm.lower()] = digest.strip()
    size = _int(headers.get('x-goog-stored-content-length'))
    if size is None and status == 206:
        match = re.fullmatch(r'bytes\s+\d+-\d+/(\d+)', (headers.get('Content-Range') or '').strip())
        size = int(match[1]) if match else None
    if size is None and 'chunked' not in (headers.get('Transfer-Encoding') or '').lower():
        length = _int(headers.get('Content-Length'))
        size = None if length is None else length + (have if status == 206 else 0)
    return _Reported(size=size, md5=hashes.get('md5'), crc32c=hashes.get('crc32c'))


def _range_start(headers: Any) -> int | None:
    match = re.fullmatch(r'bytes\s+(\d+)-\d+/(\d+|\*)', (headers.get('Content-Range') or '').strip())
    return int(match[1]) if match else None


def _digests(path: str, algorithms: Iterable[str]) -> dict[str, bytes]:
    """The raw digests of a file, read once in 4 MiB blocks."""
    hashers: dict[str, Any] = {}
    for algorithm in algorithms:
        if algorithm == 'md5':
            hashers[algorithm] = hashlib.md5(usedforsecurity=False)
        elif algorithm == 'crc32c':
            hashers[algorithm] = google_crc32c.Checksum()
    if hashers:
        with paths.open_read(path) as f:
            while block := f.read(1 << 22):
                for hasher in hashers.values():
                    hasher.update(block)
    return {name: hasher.digest() for name, hasher in hashers.items()}


def _decode(digest: str) -> bytes | None:
    try:
        return base64.b64decode(digest, validate=True)
    except ValueError:
        return None


def _mismatch(path: str, expected: _Reported) -> str | None:
    """How the file at `path` differs from `expected` (None: size and every computable hash match)."""
    size = paths.size(path)
    if expected.size is not None and size != expected.size:
        return f'size {expected.size} bytes expected, got {size}'
    wanted = expected.hashes()
    got = _digests(path, wanted)
    for algorithm, digest in wanted.items():
        if _decode(digest) != got[algorithm]:
            return f'{algorithm} {digest} expected, got {base64.b64encode(got[algorithm]).decode()}'
    return None


def _write_record(path: str, url: str, expected: _Reported) -> None:
    """Records beside `path` what was verified: url, size and the checked hashes (base64)."""
    record: dict[str, Any] = {'url': url, 'size': paths.size(path), **expected.hashes()}
    paths.write_atomic(record_path(path), json.dumps(record, indent=1, sort_keys=True) + '\n')


def check_cached(path: str) -> str | None:
    """Why the cached file at `path` may not be used (None: it matches its verification record).

    Reads the whole file (size, then every recorded hash that can be computed here).
    """
    record_file = record_path(path)
    if not paths.exists(record_file):
        return f'has no verification record {paths.name(record_file)}'
    try:
        record = json.loads(paths.read_text(record_file))
        expected = _Reported(size=int(record['size']), md5=record.get('md5'), crc32c=record.get('crc32c'))
    except (ValueError, KeyError, TypeError) as e:
        return f'has an unreadable verification record {paths.name(record_file)} ({e!r})'
    if expected.crc32c_note():  # Its size alone is not the full check the record asks for.
        return f'was verified by crc32c, which cannot be checked here{expected.crc32c_note()}'
    problem = _mismatch(path, expected)
    return None if problem is None else f'does not match its verification record ({problem})'


# --- Downloads -------------------------------------------------------------------------------

class _Unreachable(Exception):
    """The server could not be asked (connection refused, timeout, HTTP error); args[0]: why."""


class _Restart(Exception):
    """The partial file cannot be continued: delete it and download from the start (once)."""


def _offline_error(url: str, reason: Any, hint: str) -> DownloadError:
    base = url.rsplit('/', 1)[-1] or 'file'
    return DownloadError(f'could not download {url} ({reason}); if this machine is offline, fetch the '
                         f'file elsewhere and pass its local path instead{hint.format(name=base)}')


def _open(url: str, *, timeout: float, start: int = 0, method: str = 'GET') -> Any:
    """An open HTTP response; HTTPError for HTTP error statuses, _Unreachable for everything else."""
    request = urllib.request.Request(url, headers={'Range': f'bytes={start}-'} if start else {},
                                     method=method)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:  # refused, DNS, timeouts, bad URL
        raise _Unreachable(getattr(e, 'reason', None) or e) from None


def _remote_info(url: str, timeout: float) -> _Reported:
    """The object's size and hashes: a HEAD request (a GET without Range if HEAD is not allowed)."""
    try:
        try:
            response = _open(url, timeout=timeout, method='HEAD')
        except urllib.error.HTTPError as e:
            if e.code not in (405, 501):
                raise
            response = _open(url, timeout=timeout)  # only the headers are read
    except urllib.error.HTTPError as e:
        raise _Unreachable(f'HTTP {e.code} {e.reason}') from None
    with response:
        return _reported(response.headers, status=response.status)


def _transfer(url: str, part: str, *, timeout: float, progress: bool, chunk_size: int,
              desc: str) -> tuple[_Reported, bool]:
    """Fetches `url` into `part` (continuing it with Range); returns (what was reported, resumed)."""
    have = paths.size(part) if paths.exists(part) else 0
    try:
        response = _open(url, timeout=timeout, start=have)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:
            raise _Unreachable(f'HTTP {e.code} {e.reason}') from None
        response = None
    if response is None:  # 416: the part is at or past the end; check it against the object.
        expected = _remote_info(url, timeout)
        if expected.size is not None and have < expected.size:
            raise _Restart(f'the server refused Range bytes={have}- of a {expected.size}-byte object')
        return expected, True
    with response:
        resumed = response.status == 206
        if resumed and _range_start(response.headers) != have:
            raise _Restart(f'asked for bytes {have}- and got Content-Range '
                           f'{response.headers.get("Content-Range")!r}')
        have = have if resumed else 0  # A 200 is the whole object: start the part again.
        expected = _reported(response.headers, status=response.status, have=have)
        try:
            with paths.path(part).open('ab' if have else 'wb') as f, tqdm(
                    total=expected.size, initial=have, unit='B', unit_scale=True, unit_divisor=1024,
                    desc=desc, disable=not progress) as bar:
                while chunk := response.read(chunk_size):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise _Unreachable(f'interrupted: {str(e) or type(e).__name__}; run again to resume') from None
    if resumed and not expected.hashes():  # Some servers send hashes only with whole objects.
        try:
            info = _remote_info(url, timeout)
        except _Unreachable:
            info = _Reported()
        expected = _Reported(size=expected.size if expected.size is not None else info.size,
                             md5=info.md5, crc32c=info.crc32c)
    return expected, resumed


def download(url: str, dst: str, *, progress: bool = True, timeout: float = 60.0, chunk_size: int = 1 << 20,
             offline_hint: str = OFFLINE_HINT, local_hint: str = 'give a local path') -> str:
    """Downloads `url` to the local file `dst`, verified, resuming `dst + '.part'` with HTTP Range.

    `dst` appears only once its size and hash match what the server reports, and is then
    recorded in `dst + '.verified.json'`. `timeout` bounds every connect and read (seconds).
    Raises DownloadError (one line naming the URL and the remedy) on any failure; a truncated
    transfer keeps its `.part` for the next call to resume.
    """
    if paths.is_remote(dst):
        raise DownloadError(f'{dst}: downloads land on local disk; {local_hint}')
    part = dst + '.part'
    paths.makedirs(paths.parent(dst))
    for attempt in range(2):
        try:
            expected, resumed = _transfer(url, part, timeout=timeout, progress=progress,
                                          chunk_size=chunk_size, desc=paths.name(dst))
        except _Unreachable as e:
            raise _offline_error(url, e.args[0], offline_hint) from None
        except _Restart as e:
            paths.remove(part)
            if attempt:
                raise DownloadError(f'could not download {url} ({e.args[0]}, twice); download it yourself '
                                    f'and pass its local path') from None
            log.warning('%s: %s; downloading it again from the start', url, e.args[0])
            continue
        if not expected.verifiable():
            paths.remove(part)
            raise DownloadError(f'the server did not report size or hash for {url}{expected.crc32c_note()}, '
                                f'so the download cannot be verified and was not used; download it yourself '
                                f'and pass the path')
        size = paths.size(part)
        if expected.size is not None and size < expected.size:  # Closed early: keep the part.
            raise _offline_error(url, f'got {size} of {expected.size} bytes; run again to resume',
                                 offline_hint)
        problem = _mismatch(part, expected)
        if problem is None:
            paths.remove(record_path(dst))
            paths.path(part).replace(dst)
            _write_record(dst, url, expected)
            return dst
        paths.remove(part)
        if resumed and attempt == 0:  # The earlier bytes may be from another version of the object.
            log.warning('%s: the resumed download does not match (%s); downloading it again', url, problem)
            continue
        raise DownloadError(f'downloaded {url} does not match what the server reported ({problem}); '
                            f'deleted the partial file: run again to download it afresh, or download it '
                            f'yourself and pass its local path')
    raise AssertionError('unreachable')  # pragma: no cover


def reverify(url: str, dst: str, problem: str, timeout: float) -> bool:
    """Checks a cached file that failed its record against the server: True if it is the object.

    If it is not, it is deleted (the caller downloads the object); if the server cannot tell,
    the file is refused.
    """
    fix = 'delete it to download it again, or pass a local path explicitly'
    try:
        expected = _remote_info(url, timeout)
    except _Unreachable as e:
        raise DownloadError(f'cached file {dst} {problem}, and it cannot be checked against {url} '
                            f'({e.args[0]}); {fix}') from None
    if not expected.verifiable():
        raise DownloadError(f'cached file {dst} {problem}, and {url} reports neither size nor hash to check '
                            f'it against{expected.crc32c_note()}; {fix}')
    mismatch = _mismatch(dst, expected)
    if mismatch is None:
        _write_record(dst, url, expected)
        return True
    log.warning('cached file %s is not %s (%s); downloading it again', dst, url, mismatch)
    paths.remove(record_path(dst))
    paths.remove(dst)
    return False

