"""vit_jax.checkpoint.hub: catalogue names, AugReg selection, verified, cached and resumable downloads.

Downloads run against a local HTTP server on 127.0.0.1 that behaves, per file name, like Cloud
Storage (Content-Length + x-goog-hash), a generic server (Content-Length only), a broken one
(truncated body, wrong hash, 416 on any Range, no length and no hash) or a chunked one.
"""

import base64
import csv
import hashlib
import http.server
import json
import os
import socket
import threading
import types

import pytest

from vit_jax.checkpoint import download, hub
from vit_jax.errors import CheckpointError


def _name(model, ds, aug):
    return f'{model}-{ds}-300ep-lr_0.001-aug_{aug}-wd_0.1-do_0.0-sd_0.0'


AUGREG_ROWS = [
    # name, ds, final_val, adapt_ds, adapt_resolution, adapt_final_val, filename
    ('B/16', 'i21k', 0.47, 'imagenet2012', 224, 0.80, _name('B_16', 'i21k', 'none')),
    ('B/16', 'i21k', 0.49, 'imagenet2012', 224, 0.81, _name('B_16', 'i21k', 'medium1')),
    ('B/16', 'i21k', 0.49, 'imagenet2012', 384, 0.85, _name('B_16', 'i21k', 'medium1')),
    ('B/16', 'i21k', 0.48, 'cifar100', 224, 0.95, _name('B_16', 'i21k', 'light1')),
    ('B/16', 'i21k', 0.48, 'imagenet2012', 384, 0.86, _name('B_16', 'i21k', 'light1')),
    ('B/16', 'i1k', 0.90, 'imagenet2012', 224, 0.90, _name('B_16', 'i1k', 'strong2')),
    ('B/8', 'i21k', 0.60, 'imagenet2012', 224, 0.88, _name('B_8', 'i21k', 'medium2')),
    ('R26+S/32', 'i21k', 0.44, 'imagenet2012', 224, 0.79, _name('R26_S_32', 'i21k', 'light0')),
]


@pytest.fixture
def index(tmp_path):
    path = tmp_path / 'index.csv'
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=hub.AUGREG_COLUMNS)
        writer.writeheader()
        for name, ds, final_val, adapt_ds, res, adapt_val, filename in AUGREG_ROWS:
            row = dict.fromkeys(hub.AUGREG_COLUMNS, '0')
            adapt = f'{filename}--{adapt_ds}-steps_20k-lr_0.01-res_{res}'
            row.update(name=name, ds=ds, final_val=final_val, adapt_ds=adapt_ds, adapt_resolution=res,
                       adapt_final_val=adapt_val, filename=filename, adapt_filename=adapt)
            writer.writerow(row)
    return str(path)


def test_catalogue_urls(monkeypatch):
    monkeypatch.delenv('VIT_JAX_HUB_URL', raising=False)
    assert hub.url_for('ViT-B_16') == 'gs://vit_models/imagenet21k/ViT-B_16.npz'
    assert hub.url_for('imagenet21k/R50+ViT-B_16') == 'gs://vit_models/imagenet21k/R50+ViT-B_16.npz'
    assert hub.url_for('imagenet21k+imagenet2012/ViT-L_16-224') == \
        'gs://vit_models/imagenet21k+imagenet2012/ViT-L_16-224.npz'
    assert hub.https_url(hub.url_for('ViT-B_16')) == \
        'https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz'
    assert hub.url_for('ViT-B_99') is None
    # AugReg keys as in the original hub (no ViT-L_32, R50+ViT-B_16, ViT-H_14 in the AugReg release;
    # no 'testing-unpooled', 'LiT-...' or '-gap-norep' keys, which no AugReg filename starts with).
    assert hub.AUGREG_MODELS == {
        'Ti_16': 'ViT-Ti_16', 'S_16': 'ViT-S_16', 'S_32': 'ViT-S_32', 'B_8': 'ViT-B_8', 'B_16': 'ViT-B_16',
        'B_32': 'ViT-B_32', 'L_16': 'ViT-L_16', 'R_Ti_16': 'R+ViT-Ti_16', 'R26_S_32': 'R26+ViT-S_32',
        'R26_B_32': 'R26+ViT-B_32', 'R50_L_32': 'R50+ViT-L_32'}


def test_mirror_replaces_the_public_host_and_shares_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('VIT_JAX_CACHE', str(tmp_path))
    monkeypatch.delenv('VIT_JAX_HUB_URL', raising=False)
    default = hub.cache_path(hub.url_for('ViT-B_16'))
    monkeypatch.setenv('VIT_JAX_HUB_URL', 'http://mirror.example:8080/gcs/')
    assert hub.https_url('gs://vit_models/imagenet21k/ViT-B_16.npz') == \
        'http://mirror.example:8080/gcs/vit_models/imagenet21k/ViT-B_16.npz'
    assert hub.cache_path(hub.url_for('ViT-B_16')) == default == \
        str(tmp_path / 'vit_models' / 'imagenet21k' / 'ViT-B_16.npz')
    assert 'http://mirror.example:8080/gcs/vit_models/augreg/index.csv' in hub.list_names()


def test_augreg_selection_as_the_original(index):
    rows = hub.read_augreg_index(index)
    assert isinstance(rows[0]['final_val'], float)
    # Original rule: the i21k pre-training with the best final upstream validation accuracy
    # (not the i1k one, which has a higher number on another data set).
    best = hub.select_augreg(rows, 'B_16')
    assert best['filename'] == _name('B_16', 'i21k', 'medium1')
    # Fine-tunes: filter by adaptation data set (and resolution), best adapt_final_val.
    assert hub.select_augreg(rows, 'B_16', adapt_ds='imagenet2012')['adapt_final_val'] == 0.86
    at_224 = hub.select_augreg(rows, 'B_16', adapt_ds='imagenet2012', adapt_resolution=224)
    assert at_224['adapt_final_val'] == 0.81
    assert hub.select_augreg(rows, 'B_16', ds='i1k')['filename'].startswith('B_16-i1k')
    with pytest.raises(CheckpointError, match="model='L_16'"):
        hub.select_augreg(rows, 'L_16')
    # Names resolve to URLs through the index.
    assert hub.url_for('augreg/B_16', index=index) == f'gs://vit_models/augreg/{best["filename"]}.npz'
    assert hub.url_for('R26_S_32', index=index).startswith('gs://vit_models/augreg/R26_S_32-i21k-')
    name = _name('B_8', 'i21k', 'medium2') + '--imagenet2012-steps_20k-lr_0.01-res_224'
    assert hub.url_for(name + '.npz') == f'gs://vit_models/augreg/{name}.npz' == hub.url_for('augreg/' + name)


def test_augreg_index_missing_columns(tmp_path):
    (tmp_path / 'bad.csv').write_text('name,ds\nB/16,i21k\n')
    with pytest.raises(CheckpointError, match='not an AugReg index'):
        hub.read_augreg_index(str(tmp_path / 'bad.csv'))


# --- A local server ---------------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 40  # 10 KiB


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bit by bit: what Cloud Storage reports, without google_crc32c."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


MD5 = _b64(hashlib.md5(PAYLOAD).digest())
CRC32C = _b64(_crc32c(PAYLOAD).to_bytes(4, 'big'))
WRONG_MD5 = _b64(hashlib.md5(b'something else').digest())
WRONG_CRC32C = _b64(_crc32c(b'something else').to_bytes(4, 'big'))

# File stem -> behaviour (see _Handler._serve).
KINDS = ('ckpt', 'plain', 'truncated', 'nolength', 'wronghash', 'wrongcrc', 'range416', 'chunked', 'crconly')


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    requests: list = []  # (method, path, Range header) of every request
    honour_range = True

    def do_GET(self):  # noqa: N802 (http.server's name)
        self._serve(body=True)

    def do_HEAD(self):  # noqa: N802
        self._serve(body=False)

    def _serve(self, body):
        rng = self.headers.get('Range')
        type(self).requests.append((self.command, self.path, rng))
        self.close_connection = True
        stem = self.path.rsplit('/', 1)[-1].removesuffix('.npz')
        kind = 'ckpt' if stem == 'ViT-B_16' else stem
        if kind not in KINDS:
            self.send_error(404, 'Not Found')
            return
        start = int(rng.split('=')[1].rstrip('-')) if rng and self.honour_range else 0
        if kind == 'range416' and rng or start >= len(PAYLOAD) > 0 and rng:
            self.send_response(416)
            self.send_header('Content-Range', f'bytes */{len(PAYLOAD)}')
            self.send_header('Content-Length', '0')
            self.send_header('Connection', 'close')
            self.end_headers()
            return
        data = PAYLOAD[start:]
        if kind == 'nolength':  # HTTP/1.0 style: no length, no hash, the body ends when the connection does.
            self.protocol_version = 'HTTP/1.0'
        self.send_response(206 if start else 200)
        self.send_header('Connection', 'close')
        if start:
            self.send_header('Content-Range', f'bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}')
        if kind in ('ckpt', 'truncated', 'range416', 'chunked', 'wronghash', 'wrongcrc'):
            self.send_header('x-goog-hash', f'crc32c={WRONG_CRC32C if kind == "wrongcrc" else CRC32C}')
            self.send_header('x-goog-hash', f'md5={WRONG_MD5 if kind == "wronghash" else MD5}')
        if kind == 'crconly':
            self.send_header('x-goog-hash', f'crc32c={CRC32C}')
        if kind in ('ckpt', 'truncated', 'range416', 'wronghash', 'wrongcrc'):
            self.send_header('x-goog-stored-content-length', str(len(PAYLOAD)))
        if kind in ('chunked', 'crconly'):
            self.send_header('Transfer-Encoding', 'chunked')
        elif kind != 'nolength':
            self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if not body:
            return
        if kind == 'truncated' and not rng:  # Close half-way through a whole-object response.
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        elif kind in ('chunked', 'crconly'):
            for i in range(0, len(data), 3000):
                chunk = data[i:i + 3000]
                self.wfile.write(f'{len(chunk):x}\r\n'.encode() + chunk + b'\r\n')
            self.wfile.write(b'0\r\n\r\n')
        else:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.requests, _Handler.honour_range = [], True
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{httpd.server_address[1]}'
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def mirror(server, tmp_path, monkeypatch):
    """The local server as the public-bucket host; a fresh cache."""
    monkeypatch.setenv('VIT_JAX_HUB_URL', server)
    monkeypatch.setenv('VIT_JAX_CACHE', str(tmp_path / 'cache'))
    return server


def _closed_port_url():
    closed = socket.socket()
    closed.bind(('127.0.0.1', 0))
    port = closed.getsockname()[1]
    closed.close()  # Nothing listens there: what an offline machine sees.
    return f'http://127.0.0.1:{port}'


def _record(path):
    with open(hub.record_path(path)) as f:
        return json.load(f)


def _requests():
    return [(method, rng) for method, _, rng in _Handler.requests]


# --- Resolving and reusing ----------------------------------------------------------------------

def test_resolve_local_cached_and_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv('VIT_JAX_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('VIT_JAX_HUB_URL', _closed_port_url())
    local = tmp_path / 'mine.npz'
    local.write_bytes(b'x')
    assert hub.resolve(str(local)) == str(local)
    cached = hub.cache_path(hub.url_for('ViT-B_16'))
    assert cached == str(tmp_path / 'cache' / 'vit_models' / 'imagenet21k' / 'ViT-B_16.npz')
    os.makedirs(os.path.dirname(cached))
    with open(cached, 'wb') as f:
        f.write(b'cached')
    record = {'url': 'https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz', 'size': 6,
              'md5': _b64(hashlib.md5(b'cached').digest())}
    with open(cached + '.verified.json', 'w') as f:
        json.dump(record, f)
    assert hub.resolve('ViT-B_16') == cached  # No network: the verified cache answers.
    assert hub.resolve('gs://my-bucket/x.npz') == 'gs://my-bucket/x.npz'  # Read through vit_jax.paths.
    with pytest.raises(FileNotFoundError, match='not a known checkpoint name'):
        hub.resolve(str(tmp_path / 'nope.npz'))


def test_verified_download_is_recorded_and_reused_without_requests(mirror):
    path = hub.resolve('ViT-B_16', progress=False)
    assert path == hub.cache_path('gs://vit_models/imagenet21k/ViT-B_16.npz')
    assert open(path, 'rb').read() == PAYLOAD and not os.path.exists(path + '.part')
    assert _requests() == [('GET', None)]
    expected = {'url': f'{mirror}/vit_models/imagenet21k/ViT-B_16.npz', 'size': len(PAYLOAD), 'md5': MD5}
    if download.google_crc32c is not None:
        expected['crc32c'] = CRC32C
    assert _record(path) == expected
    assert hub.resolve('ViT-B_16', progress=False) == path
    assert hub.resolve(f'{mirror}/vit_models/imagenet21k/ViT-B_16.npz', progress=False) == path
    assert len(_Handler.requests) == 1  # Reused: no second request.


def test_truncated_download_is_kept_for_resume_and_never_promoted(mirror):
    url = 'gs://vit_models/truncated.npz'
    dst = hub.cache_path(url)
    with pytest.raises(hub.DownloadError, match=r'got 5120 of 10240 bytes; run again to resume'):
        hub.resolve(url, progress=False)
    assert not os.path.exists(dst) and not os.path.exists(hub.record_path(dst))
    assert os.path.getsize(dst + '.part') == len(PAYLOAD) // 2
    assert hub.resolve(url, progress=False) == dst
    assert _requests() == [('GET', None), ('GET', 'bytes=5120-')]
    assert open(dst, 'rb').read() == PAYLOAD and _record(dst)['md5'] == MD5
    assert not os.path.exists(dst + '.part')


def test_download_without_length_or_hash_is_refused(mirror):
    url = f'{mirror}/vit_models/nolength.npz'
    dst = hub.cache_path(url)
    with pytest.raises(hub.DownloadError) as e:
        hub.resolve(url, progress=False)
    assert str(e.value).startswith(f'the server did not report size or hash for {url}')
    assert 'download it yourself and pass the path' in str(e.value) and '\n' not in str(e.value)
    assert _requests() == [('GET', None)]  # The body was read (close-delimited), then refused.
    assert not os.path.exists(dst) and not os.path.exists(dst + '.part')


def test_wrong_hash_is_refused_and_the_part_deleted(mirror):
    url = f'{mirror}/vit_models/wronghash.npz'
    dst = hub.cache_path(url)
    with pytest.raises(hub.DownloadError) as e:
        hub.resolve(url, progress=False)
    msg = str(e.value)
    assert url in msg and f'md5 {WRONG_MD5} expected, got {MD5}' in msg and '\n' not in msg
    assert not os.path.exists(dst) and not os.path.exists(dst + '.part')


def test_416_with_a_complete_part_promotes_it_after_verification(mirror):
    url = f'{mirror}/vit_models/range416.npz'
    dst = hub.cache_path(url)
    os.makedirs(os.path.dirname(dst))
    with open(dst + '.part', 'wb') as f:
        f.write(PAYLOAD)
    assert hub.resolve(url, progress=False) == dst
    assert _requests() == [('GET', 'bytes=10240-'), ('HEAD', None)]  # No body transferred again.
    assert open(dst, 'rb').read() == PAYLOAD and _record(dst)['size'] == len(PAYLOAD)


@pytest.mark.parametrize('part', [PAYLOAD[:-1] + b'!', PAYLOAD + b'extra'], ids=['corrupt', 'too-long'])
def test_416_with_a_bad_part_downloads_again(mirror, part):
    url = f'{mirror}/vit_models/range416.npz'
    dst = hub.cache_path(url)
    os.makedirs(os.path.dirname(dst))
    with open(dst + '.part', 'wb') as f:
        f.write(part)
    assert hub.resolve(url, progress=False) == dst
    assert _requests() == [('GET', f'bytes={len(part)}-'), ('HEAD', None), ('GET', None)]
    assert open(dst, 'rb').read() == PAYLOAD and _record(dst)['md5'] == MD5


def test_chunked_download_is_verified_by_its_hash(mirror):
    url = f'{mirror}/vit_models/chunked.npz'
    path = hub.resolve(url, progress=False)
    assert open(path, 'rb').read() == PAYLOAD
    assert _record(path)['md5'] == MD5 and _record(path)['size'] == len(PAYLOAD)


def test_generic_server_is_verified_by_size(mirror):
    path = hub.resolve(f'{mirror}/vit_models/plain.npz', progress=False)
    assert open(path, 'rb').read() == PAYLOAD
    assert _record(path) == {'url': f'{mirror}/vit_models/plain.npz', 'size': len(PAYLOAD)}


def test_crc32c_is_checked_when_google_crc32c_is_installed(mirror, monkeypatch):
    class Checksum:  # google_crc32c's interface; bit-by-bit CRC-32C (whole data at digest time).
        def __init__(self, data=b''):
            self.data = bytearray(data)

        def update(self, data):
            self.data += data

        def digest(self):
            return _crc32c(bytes(self.data)).to_bytes(4, 'big')

    monkeypatch.setattr(download, 'google_crc32c', types.SimpleNamespace(Checksum=Checksum))
    assert _record(hub.resolve(f'{mirror}/vit_models/ckpt.npz', progress=False))['crc32c'] == CRC32C
    assert _record(hub.resolve(f'{mirror}/vit_models/crconly.npz', progress=False)) == {
        'url': f'{mirror}/vit_models/crconly.npz', 'size': len(PAYLOAD), 'crc32c': CRC32C}
    with pytest.raises(hub.DownloadError, match=f'crc32c {WRONG_CRC32C} expected, got {CRC32C}'):
        hub.resolve(f'{mirror}/vit_models/wrongcrc.npz', progress=False)

    # Without google_crc32c, a crc32c alone (no length, no md5) cannot verify anything: neither a
    # new download nor the file recorded above (a cache shared with a machine that has the package).
    monkeypatch.setattr(download, 'google_crc32c', None)
    with pytest.raises(hub.DownloadError, match='did not report size or hash .* google-crc32c is not inst'):
        hub.resolve(f'{mirror}/other/crconly.npz', progress=False)
    with pytest.raises(hub.DownloadError, match='was verified by crc32c, which cannot be checked here .* '
                       'reports neither size nor hash'):
        hub.resolve(f'{mirror}/vit_models/crconly.npz', progress=False)


def test_a_wrong_file_at_the_cache_path_is_not_used(mirror, monkeypatch):
    url = 'gs://vit_models/imagenet21k/ViT-B_16.npz'
    dst = hub.cache_path(url)
    os.makedirs(os.path.dirname(dst))
    with open(dst, 'wb') as f:  # Someone else's file, no verification record.
        f.write(b'not the checkpoint')

    monkeypatch.setenv('VIT_JAX_HUB_URL', _closed_port_url())
    with pytest.raises(hub.DownloadError) as e:  # Cannot be checked: refused, left alone.
        hub.resolve(url, progress=False)
    msg = str(e.value)
    assert msg.startswith(f'cached file {dst} has no verification record ViT-B_16.npz.verified.json')
    assert msg.endswith('delete it to download it again, or pass a local path explicitly')
    assert open(dst, 'rb').read() == b'not the checkpoint'

    monkeypatch.setenv('VIT_JAX_HUB_URL', mirror)  # Checked against the server: replaced.
    assert hub.resolve(url, progress=False) == dst and open(dst, 'rb').read() == PAYLOAD
    assert _requests() == [('HEAD', None), ('GET', None)]
    assert _record(dst)['md5'] == MD5


def test_the_right_file_without_a_record_is_verified_with_a_head_request(mirror):
    url = 'gs://vit_models/imagenet21k/ViT-B_16.npz'
    dst = hub.cache_path(url)
    os.makedirs(os.path.dirname(dst))
    with open(dst, 'wb') as f:  # E.g. copied in by hand, or a crash between rename and record.
        f.write(PAYLOAD)
    assert hub.resolve(url, progress=False) == dst
    assert _requests() == [('HEAD', None)] and _record(dst)['md5'] == MD5


def test_a_cached_file_modified_after_download_is_detected(mirror, monkeypatch):
    url = 'gs://vit_models/imagenet21k/ViT-B_16.npz'
    dst = hub.resolve(url, progress=False)
    with open(dst, 'r+b') as f:  # Same size, one byte changed: only the full hash notices.
        f.seek(5000)
        f.write(b'\xff')

    monkeypatch.setenv('VIT_JAX_HUB_URL', _closed_port_url())
    with pytest.raises(hub.DownloadError) as e:
        hub.resolve(url, progress=False)
    assert str(e.value).startswith(f'cached file {dst} does not match its verification record (md5 {MD5} '
                                   'expected, got ')
    assert 'Connection refused' in str(e.value)

    monkeypatch.setenv('VIT_JAX_HUB_URL', mirror)
    assert hub.resolve(url, progress=False) == dst and open(dst, 'rb').read() == PAYLOAD
    assert _requests() == [('GET', None), ('HEAD', None), ('GET', None)]


# --- download() ---------------------------------------------------------------------------------

def test_download_and_resume(server, tmp_path):
    dst = str(tmp_path / 'a' / 'ckpt.npz')
    assert hub.download(f'{server}/vit_models/ckpt.npz', dst, progress=False, timeout=5) == dst
    assert open(dst, 'rb').read() == PAYLOAD and _requests() == [('GET', None)]
    assert _record(dst)['size'] == len(PAYLOAD)

    # A partial file is resumed with a Range request: only the rest is transferred.
    dst = str(tmp_path / 'b' / 'ckpt.npz')
    os.makedirs(os.path.dirname(dst))
    with open(dst + '.part', 'wb') as f:
        f.write(PAYLOAD[:3000])
    hub.download(f'{server}/vit_models/ckpt.npz', dst, progress=False, timeout=5)
    assert open(dst, 'rb').read() == PAYLOAD and _requests()[-1] == ('GET', 'bytes=3000-')
    assert not os.path.exists(dst + '.part')


def test_a_resumed_part_from_another_file_is_downloaded_again(server, tmp_path):
    dst = str(tmp_path / 'ckpt.npz')
    with open(dst + '.part', 'wb') as f:
        f.write(b'\0' * 3000)  # The right length so far, the wrong bytes: only the hash tells.
    hub.download(f'{server}/vit_models/ckpt.npz', dst, progress=False, timeout=5)
    assert open(dst, 'rb').read() == PAYLOAD and _requests() == [('GET', 'bytes=3000-'), ('GET', None)]


def test_download_server_without_range_support_restarts(server, tmp_path):
    _Handler.honour_range = False
    dst = str(tmp_path / 'ckpt.npz')
    with open(dst + '.part', 'wb') as f:
        f.write(b'stale bytes')
    hub.download(f'{server}/vit_models/ckpt.npz', dst, progress=False, timeout=5)
    assert open(dst, 'rb').read() == PAYLOAD


def test_downloads_land_on_local_disk():
    with pytest.raises(hub.DownloadError, match='gs://bucket/cache/x.npz: downloads land on local disk'):
        hub.download('gs://vit_models/x.npz', 'gs://bucket/cache/x.npz')


def test_offline_errors_name_the_url_and_the_local_alternative(server, tmp_path):
    with pytest.raises(hub.DownloadError) as e:
        hub.download(f'{server}/vit_models/missing.npz', str(tmp_path / 'x.npz'), progress=False, timeout=5)
    assert 'HTTP 404' in str(e.value) and f'{server}/vit_models/missing.npz' in str(e.value)

    url = f'{_closed_port_url()}/vit_models/ViT-B_16.npz'
    with pytest.raises(hub.DownloadError) as e:
        hub.download(url, str(tmp_path / 'y.npz'), progress=False, timeout=5)
    msg = str(e.value)
    assert url in msg and '--config.pretrained_path=/path/to/ViT-B_16.npz' in msg and '\n' not in msg
    assert 'Connection refused' in msg
    assert os.listdir(tmp_path) == []


def test_a_silent_server_times_out(tmp_path):
    with socket.socket() as silent:  # Accepts connections (backlog) and never answers.
        silent.bind(('127.0.0.1', 0))
        silent.listen()
        url = f'http://127.0.0.1:{silent.getsockname()[1]}/vit_models/ViT-B_16.npz'
        with pytest.raises(hub.DownloadError, match=f'could not download {url} .*timed out.*pretrained_path'):
            hub.download(url, str(tmp_path / 'x.npz'), progress=False, timeout=0.2)
    assert os.listdir(tmp_path) == []
