"""A loopback S3 endpoint (``moto``'s server) for tests and benchmarks of remote datasets; needs ``moto[server]``.

Streaming's and boto3's S3 clients reach it through ``S3_ENDPOINT_URL`` and dummy credentials, which
:func:`emulator_env` lists; set them only around the code that uses the emulator.

Example:
    >>> with s3_emulator(buckets=['demo']) as url:
    ...     url.startswith('http://127.0.0.1:')
    True
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator, Sequence

__all__ = ['emulator_env', 'free_port', 's3_emulator']

_DUMMY = 'testing'


def free_port() -> int:
    """A free TCP port on the loopback interface (for an emulator or a gloo rendezvous)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def emulator_env(endpoint_url: str) -> dict[str, str]:
    """Environment variables that point S3 clients at the emulator (dummy credentials, not secrets)."""
    return {'S3_ENDPOINT_URL': endpoint_url, 'AWS_ACCESS_KEY_ID': _DUMMY, 'AWS_SECRET_ACCESS_KEY': _DUMMY,
            'AWS_DEFAULT_REGION': 'us-east-1'}


@contextlib.contextmanager
def s3_emulator(buckets: Sequence[str] = ('reweigh',)) -> Iterator[str]:
    """Run ``moto.server.ThreadedMotoServer`` on a free loopback port with ``buckets`` created; yield its URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    logging.getLogger('werkzeug').setLevel(logging.ERROR)  # no request log
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
    server.start()
    url = f'http://127.0.0.1:{port}'
    try:
        client = boto3.client('s3', endpoint_url=url, aws_access_key_id=_DUMMY, aws_secret_access_key=_DUMMY,
                              region_name='us-east-1')
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield url
    finally:
        server.stop()
