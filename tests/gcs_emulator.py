"""A loopback Google Cloud Storage endpoint for tests: ``gcp-storage-emulator`` plus a token server.

Google's clients (``google-cloud-storage``, as used by Streaming and Composer) go to
``STORAGE_EMULATOR_HOST`` when it is set, but still refresh the credentials that
``google.auth.default()`` finds. :func:`gcs_emulator` therefore also serves the OAuth token endpoint
and writes a service-account credentials file (a throwaway key) whose ``token_uri`` points at it, so every process
(including the ones Composer's uploader spawns) authenticates offline through the standard
``GOOGLE_APPLICATION_CREDENTIALS`` route. Nothing in it is a secret.

The emulator ignores generation preconditions, which reweigh's ``gs://`` run folder lease relies on;
:func:`_honour_generation_preconditions` teaches it ``ifGenerationMatch`` as GCS has it.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

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


_PRECONDITION_FAILED = 'At least one of the pre-conditions you specified did not hold.'
_patched = False


class _Clock:
    """``time`` as the emulator's object handlers see it, with ``time_ns()`` strictly increasing: it is the new object's
    generation, and two writes within one tick of the clock (or across a step back) would otherwise share one."""

    def __init__(self) -> None:
        self._last, self._lock = 0, threading.Lock()

    def time_ns(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _target(request: Any, storage: Any) -> tuple[str, str] | None:
    """The (bucket, object) that an upload or delete request writes, or None where it names none."""
    from gcp_storage_emulator.exceptions import NotFound

    if 'upload_id' in request.query:  # a resumable upload's chunk: the object was named when it began
        try:
            obj = storage.get_resumable_file_obj(request.query['upload_id'][0])
        except NotFound:
            return None
        return obj['bucket'], obj['name']
    bucket, data = request.params['bucket_name'], request.data  # read the body in any case, as a 412 leaves it
    if 'object_id' in request.params:
        return bucket, request.params['object_id']
    if 'name' in request.query:
        return bucket, request.query['name'][0]
    multipart = request.query.get('uploadType') == ['multipart'] and isinstance(data, dict)
    meta = data.get('meta') if multipart else data
    return (bucket, meta['name']) if isinstance(meta, dict) and meta.get('name') else None


def _checking_generation(handler: Callable[..., Any], deletes: bool) -> Callable[..., Any]:
    """``handler``, refusing with GCS's 412 where ``ifGenerationMatch`` does not hold: ``0`` wants no live object, any
    other value the live object's generation. A delete of an object that is not there is left to ``handler`` (404)."""
    from gcp_storage_emulator.exceptions import NotFound

    @functools.wraps(handler)
    def checked(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        wanted = request.query.get('ifGenerationMatch')
        target = _target(request, storage) if wanted else None
        if target is not None:
            try:
                live = int(storage.get_file_obj(*target)['generation'])
            except NotFound:
                live = None
            if not (deletes and live is None) and int(wanted[0]) != (live or 0):
                error = {'domain': 'global', 'reason': 'conditionNotMet', 'message': _PRECONDITION_FAILED,
                         'locationType': 'header', 'location': 'If-Match'}
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({'error': {'code': 412, 'message': _PRECONDITION_FAILED, 'errors': [error]}})
                return None
        return handler(request, response, storage, *args, **kwargs)

    return checked


def _honour_generation_preconditions() -> None:
    """Patch gcp-storage-emulator (once per process: its route table is module state) to check ``ifGenerationMatch`` on
    object uploads (media, multipart, resumable) and deletes as GCS does, and to give every write a new generation.

    Only the JSON API's object insert, resumable chunk and delete handlers are wrapped; ``ifGenerationNotMatch``, the
    metageneration preconditions, reads, copies, composes, batches and XML uploads stay as the emulator has them.
    Every request is served one at a time (the emulator's server is not threaded), so check and write are atomic.
    """
    global _patched
    if _patched:
        return
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    wrapped = {objects.insert: _checking_generation(objects.insert, deletes=False),
               objects.upload_partial: _checking_generation(objects.upload_partial, deletes=False),
               objects.delete: _checking_generation(objects.delete, deletes=True)}
    for _, handlers in server.HANDLERS:
        for method, handler in handlers.items():
            handlers[method] = wrapped.get(handler, handler)
    objects.insert = wrapped[objects.insert]  # the router's fallback for uploads posted without the /upload prefix
    objects.time = _Clock()  # only _make_object_resource reads it: time_ns(), the generation
    _patched = True


@contextlib.contextmanager
def gcs_emulator(bucket: str, workdir: Path) -> Iterator[dict[str, str]]:
    """Run the emulator with ``bucket`` and a token server; yield the environment that points clients at them."""
    from gcp_storage_emulator.server import create_server

    logging.getLogger('gcp_storage_emulator').setLevel(logging.ERROR)
    _honour_generation_preconditions()
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
