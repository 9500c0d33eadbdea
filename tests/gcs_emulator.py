"""A loopback Google Cloud Storage endpoint for tests: ``gcp-storage-emulator`` plus a token server.

Google's clients (``google-cloud-storage``, as used by Streaming and Composer) go to
``STORAGE_EMULATOR_HOST`` when it is set, but still refresh the credentials that
``google.auth.default()`` finds. :func:`gcs_emulator` therefore also serves the OAuth token endpoint
and writes a service-account credentials file (a throwaway key) whose ``token_uri`` points at it, so every process
(including the ones Composer's uploader spawns) authenticates offline through the standard
``GOOGLE_APPLICATION_CREDENTIALS`` route. Nothing in it is a secret.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from s3_emulator import free_port

__all__ = ['gcs_emulator']


def _throwaway_key() -> str:
    """A fresh RSA key in PEM form: the credentials file must hold one, the token server ignores it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
    ).decode()


class _TokenHandler(http.server.BaseHTTPRequestHandler):

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get('Content-Length', 0)))
        body = json.dumps({'access_token': 'emulator', 'expires_in': 3600, 'token_type': 'Bearer'}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def gcs_emulator(bucket: str, workdir: Path) -> Iterator[dict[str, str]]:
    """Run the emulator with ``bucket`` and a token server; yield the environment that points clients at them."""
    from gcp_storage_emulator.server import create_server

    logging.getLogger('gcp_storage_emulator').setLevel(logging.ERROR)
    port = free_port()
    storage = create_server('127.0.0.1', port, in_memory=True, default_bucket=bucket)
    tokens = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _TokenHandler)
    credentials = workdir / 'gcs-emulator-credentials.json'
    credentials.write_text(json.dumps({
        'type': 'service_account', 'project_id': 'emulator', 'private_key_id': 'emulator',
        'private_key': _throwaway_key(), 'client_email': 'emulator@emulator.iam.gserviceaccount.com',
        'client_id': 'emulator', 'token_uri': f'http://127.0.0.1:{tokens.server_address[1]}/token',
    }))
    storage.start()
    thread = threading.Thread(target=tokens.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            'STORAGE_EMULATOR_HOST': f'http://127.0.0.1:{port}',
            'GOOGLE_APPLICATION_CREDENTIALS': str(credentials),
            'GOOGLE_CLOUD_PROJECT': 'emulator',
        }
    finally:
        tokens.shutdown()
        storage.stop()
