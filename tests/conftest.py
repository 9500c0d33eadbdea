"""Shared fixtures: a small prepared default corpus, Streaming shared-memory hygiene, a loopback S3 endpoint."""

from __future__ import annotations

import contextlib
import os

import pytest

from reweigh.integrations.extras import MissingExtra, missing_modules, require

WITHOUT_COMPOSER = bool(missing_modules('composer'))
"""Whether this environment lacks reweigh[composer] (the today environment: scripts/setup_today.sh)."""

NEED_COMPOSER = (
    'test_accumulation.py', 'test_config.py', 'test_curate.py', 'test_disk.py', 'test_distributed.py',
    'test_fused_loss.py', 'test_gpu.py', 'test_history.py', 'test_metrics_log.py', 'test_mixing.py', 'test_no_sync.py',
    'test_nodes.py', 'test_outage.py',
    'test_pipeline_docstrings.py', 'test_pipeline_prepare.py', 'test_pipeline_remote.py', 'test_pipeline_stream.py',
    'test_precision.py', 'test_resume.py', 'test_run_folder.py', 'test_security.py', 'test_shared_memory.py',
    'test_sharded.py', 'test_spark.py',
    'test_sweep.py', 'test_train_cli.py', 'test_trainer.py',
)
"""The test files that need Composer or Streaming throughout; without them they are not collected, and single tests
elsewhere that need them carry ``@pytest.mark.composer`` and are skipped. Every other test runs in every
environment."""

collect_ignore = list(NEED_COMPOSER) if WITHOUT_COMPOSER else []


def pytest_sessionstart(session: pytest.Session) -> None:
    """``REWEIGH_REQUIRE_EXTRAS=hf,torchtitan`` (as .ci/run sets per environment): fail at once where one of these
    extras is missing, instead of skipping its tests."""
    for extra in filter(None, os.environ.get('REWEIGH_REQUIRE_EXTRAS', '').split(',')):
        try:
            require(extra, 'REWEIGH_REQUIRE_EXTRAS')
        except MissingExtra as e:
            pytest.exit(str(e), returncode=3)


def pytest_report_header(config: pytest.Config) -> str | None:
    if WITHOUT_COMPOSER:
        return (f'reweigh: no Composer in this environment: {len(NEED_COMPOSER)} test files and the tests marked '
                f'"composer" that need it are left out (tests/conftest.py)')
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if WITHOUT_COMPOSER:
        skip = pytest.mark.skip(reason="needs reweigh[composer], which this environment does not install")
        for item in items:
            if item.get_closest_marker('composer'):
                item.add_marker(skip)

SMALL = dict(max_bytes_per_domain=40_000, vocab_size=512, seq_len=64, shard_size_limit=1 << 13, progress=False)
"""Settings of the session's small default dataset: several shards per stream, ~1000 sequences in all."""


@pytest.fixture(scope='session')
def streaming_shm():
    """Remove the Streaming shared memory that earlier, crashed runs left in ``/dev/shm``, once per session.

    Every segment named as Streaming names them goes (Streaming's ``clean_stale_shared_memory`` stops at the first
    free prefix, and leaves those above it): each dataset built later would attach to them, and hold a descriptor
    for each, until the session ends. So two sessions of these tests must not run on one machine at the same time.
    """
    import re

    from streaming.base.constant import SHM_TO_CLEAN

    stale = re.compile(rf'^\d{{6}}_({"|".join(SHM_TO_CLEAN)})$')
    if os.path.isdir('/dev/shm'):
        for name in os.listdir('/dev/shm'):
            if stale.match(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join('/dev/shm', name))
    yield


@pytest.fixture(autouse=True)
def datasets_closed():
    """Every Streaming dataset a test builds gives its shared memory back when the test ends, as a run of
    ``reweigh train`` does, instead of when the session ends: kept, they cost each later dataset a file descriptor
    per segment of theirs, and the suite runs out of descriptors (pipeline/shared_memory.py)."""
    if WITHOUT_COMPOSER:  # nor Streaming
        yield
        return
    from reweigh.pipeline.shared_memory import closing_datasets

    with closing_datasets():
        yield


@pytest.fixture(scope='session')
def small_dataset(tmp_path_factory):
    """A small default-corpus dataset, prepared once per session; treat it as read-only."""
    from reweigh.pipeline import prepare_default_corpus

    root = tmp_path_factory.mktemp('small-default') / 'data'
    result = prepare_default_corpus(root, **SMALL)
    return root, result


@pytest.fixture(scope='session')
def s3_endpoint():
    """URL of a loopback moto S3 server with bucket ``reweigh``, for the session."""
    pytest.importorskip('moto')
    from s3_emulator import s3_emulator

    with s3_emulator(buckets=['reweigh']) as url:
        yield url


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """Point S3 clients (Streaming's, boto3) at the emulator for one test; yields the endpoint URL."""
    from s3_emulator import emulator_env

    for key in ('AWS_PROFILE', 'AWS_SESSION_TOKEN', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE'):
        monkeypatch.delenv(key, raising=False)
    for key, value in emulator_env(s3_endpoint).items():
        monkeypatch.setenv(key, value)
    return s3_endpoint


@pytest.fixture(scope='session')
def gcs_emulator_env(tmp_path_factory):
    """A loopback GCS emulator with bucket ``reweigh`` for the session; yields the environment for it."""
    pytest.importorskip('gcp_storage_emulator')
    pytest.importorskip('google.cloud.storage')  # the client the gs:// tests use (not in every environment)
    from gcs_emulator import gcs_emulator

    with gcs_emulator('reweigh', tmp_path_factory.mktemp('gcs')) as env:
        yield env


@pytest.fixture
def gcs_env(gcs_emulator_env, monkeypatch):
    """Point Google's Python clients (Streaming's, Composer's) at the emulator for one test."""
    for key in ('GCS_KEY', 'GCS_SECRET', 'CLOUDSDK_CONFIG'):
        monkeypatch.delenv(key, raising=False)
    for key, value in gcs_emulator_env.items():
        monkeypatch.setenv(key, value)
    return gcs_emulator_env
