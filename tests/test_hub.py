"""vit_jax.hub: catalogue names, AugReg selection, cached and resumable downloads (local server only)."""

import csv
import http.server
import os
import socket
import threading

import pytest

from vit_jax import hub


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


def test_catalogue_urls():
    assert hub.url_for('ViT-B_16') == 'gs://vit_models/imagenet21k/ViT-B_16.npz'
    assert hub.url_for('imagenet21k/R50+ViT-B_16') == 'gs://vit_models/imagenet21k/R50+ViT-B_16.npz'
    assert hub.url_for('imagenet21k+imagenet2012/ViT-L_16-224') == \
        'gs://vit_models/imagenet21k+imagenet2012/ViT-L_16-224.npz'
    assert hub.https_url(hub.url_for('ViT-B_16')) == \
        'https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz'
    assert hub.url_for('ViT-B_99') is None
    # AugReg keys as in the original (no ViT-L_32, R50+ViT-B_16, ViT-H_14 in the AugReg release).
    assert {'Ti_16', 'S_32', 'B_8', 'R_Ti_16', 'R26_B_32', 'R50_L_32'} <= set(hub.AUGREG_MODELS)
    assert not {'L_32', 'R50_B_16', 'H_14', 'testing'} & set(hub.AUGREG_MODELS)


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
    with pytest.raises(ValueError, match="model='L_16'"):
        hub.select_augreg(rows, 'L_16')
    # Names resolve to URLs through the index.
    assert hub.url_for('augreg/B_16', index=index) == f'gs://vit_models/augreg/{best["filename"]}.npz'
    assert hub.url_for('R26_S_32', index=index).startswith('gs://vit_models/augreg/R26_S_32-i21k-')
    name = _name('B_8', 'i21k', 'medium2') + '--imagenet2012-steps_20k-lr_0.01-res_224'
    assert hub.url_for(name + '.npz') == f'gs://vit_models/augreg/{name}.npz' == hub.url_for('augreg/' + name)


def test_augreg_index_missing_columns(tmp_path):
    (tmp_path / 'bad.csv').write_text('name,ds\nB/16,i21k\n')
    with pytest.raises(ValueError, match='not an AugReg index'):
        hub.read_augreg_index(str(tmp_path / 'bad.csv'))


def test_resolve_local_cached_and_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv('VIT_JAX_CACHE', str(tmp_path / 'cache'))
    local = tmp_path / 'mine.npz'
    local.write_bytes(b'x')
    assert hub.resolve(str(local)) == str(local)
    cached = hub.cache_path(hub.url_for('ViT-B_16'))
    assert cached == str(tmp_path / 'cache' / 'vit_models' / 'imagenet21k' / 'ViT-B_16.npz')
    os.makedirs(os.path.dirname(cached))
    with open(cached, 'wb') as f:
        f.write(b'cached')
    assert hub.resolve('ViT-B_16') == cached  # No network: the cache answers.
    assert hub.resolve('gs://my-bucket/x.npz') == 'gs://my-bucket/x.npz'  # Read remotely by checkpoint.load.
    with pytest.raises(FileNotFoundError, match='not a known checkpoint name'):
        hub.resolve(str(tmp_path / 'nope.npz'))


# --- Downloads against a local server ----------------------------------------------------------

PAYLOAD = bytes(range(256)) * 40  # 10 KiB


class _Handler(http.server.BaseHTTPRequestHandler):
    ranges: list = []
    honour_range = True
    truncate_once = False

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path != '/vit_models/ckpt.npz':
            self.send_error(404, 'Not Found')
            return
        header = self.headers.get('Range')
        type(self).ranges.append(header)
        start = int(header.split('=')[1].rstrip('-')) if header and self.honour_range else 0
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header('Content-Length', str(len(body)))
        if start:
            self.send_header('Content-Range', f'bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}')
        self.end_headers()
        if type(self).truncate_once:  # Drop the connection half-way, once.
            type(self).truncate_once = False
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.ranges, _Handler.honour_range, _Handler.truncate_once = [], True, False
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{httpd.server_address[1]}'
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_download_and_resume(server, tmp_path):
    dst = str(tmp_path / 'a' / 'ckpt.npz')
    assert hub.download(f'{server}/vit_models/ckpt.npz', dst, progress=False, timeout=5) == dst
    assert open(dst, 'rb').read() == PAYLOAD and _Handler.ranges == [None]

    # A partial file is resumed with a Range request: only the rest is transferred.
    dst = str(tmp_path / 'b' / 'ckpt.npz')
    os.makedirs(os.path.dirname(dst))
    with open(dst + '.part', 'wb') as f:
        f.write(PAYLOAD[:3000])
    hub.download(f'{server}/vit_models/ckpt.npz', dst, progress=False, timeout=5)
    assert open(dst, 'rb').read() == PAYLOAD and _Handler.ranges[-1] == 'bytes=3000-'
    assert not os.path.exists(dst + '.part')


def test_download_server_without_range_support_restarts(server, tmp_path):
    _Handler.honour_range = False
    dst = str(tmp_path / 'ckpt.npz')
    with open(dst + '.part', 'wb') as f:
        f.write(b'stale bytes')
    hub.download(f'{server}/vit_models/ckpt.npz', dst, progress=False, timeout=5)
    assert open(dst, 'rb').read() == PAYLOAD


def test_interrupted_download_resumes_on_the_next_call(server, tmp_path, monkeypatch):
    _Handler.truncate_once = True
    monkeypatch.setenv('VIT_JAX_CACHE', str(tmp_path / 'cache'))
    url = f'{server}/vit_models/ckpt.npz'
    with pytest.raises(hub.DownloadError, match='run again to resume'):
        hub.resolve(url, progress=False)
    dst = hub.cache_path(url)
    assert not os.path.exists(dst) and 0 < os.path.getsize(dst + '.part') < len(PAYLOAD)
    assert hub.resolve(url, progress=False) == dst
    assert open(dst, 'rb').read() == PAYLOAD and _Handler.ranges[-1].startswith('bytes=')


def test_offline_errors_name_the_url_and_the_local_alternative(server, tmp_path):
    with pytest.raises(hub.DownloadError) as e:
        hub.download(f'{server}/vit_models/missing.npz', str(tmp_path / 'x.npz'), progress=False, timeout=5)
    assert 'HTTP 404' in str(e.value) and f'{server}/vit_models/missing.npz' in str(e.value)

    closed = socket.socket()
    closed.bind(('127.0.0.1', 0))
    port = closed.getsockname()[1]
    closed.close()  # Nothing listens there: what an offline machine sees.
    url = f'http://127.0.0.1:{port}/vit_models/ViT-B_16.npz'
    with pytest.raises(hub.DownloadError) as e:
        hub.download(url, str(tmp_path / 'y.npz'), progress=False, timeout=5)
    msg = str(e.value)
    assert url in msg and '--config.pretrained_path=/path/to/ViT-B_16.npz' in msg and '\n' not in msg
    assert os.listdir(tmp_path) == []
