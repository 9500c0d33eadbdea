"""One run, one writer (reweigh.train.lease): a held lease refuses a second launch naming its holder; a lease left by
a dead process or not renewed in time is taken over; force takes it anyway; the holder renews it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from reweigh.train.lease import LeaseHeld, RunLease


def _leave_lease(folder, **holder):
    """A lease as a launch that was killed leaves it."""
    holder = {'host': socket.gethostname(), 'pid': os.getpid(), 'since': '2026-12-01T00:00:00+00:00',
              'token': 'old', **holder}
    (folder / 'lease.json').write_text(json.dumps(holder))
    return folder / 'lease.json'


def test_a_held_lease_refuses_a_second_launch_naming_the_holder(tmp_path):
    with RunLease(tmp_path) as first:
        with pytest.raises(LeaseHeld) as refused:
            RunLease(tmp_path).acquire()
        message = str(refused.value)
        assert f'host {socket.gethostname()}, pid {os.getpid()}, since {first.holder["since"]}' in message
        assert '--force' in message and '\n' not in message
        assert json.loads((tmp_path / 'lease.json').read_text())['token'] == first.holder['token']
    assert not (tmp_path / 'lease.json').exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind


def test_the_lease_of_a_process_that_is_gone_is_taken_over_at_once(tmp_path):
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True,
                          check=True)
    _leave_lease(tmp_path, pid=int(dead.stdout))
    with RunLease(tmp_path) as lease:
        assert json.loads((tmp_path / 'lease.json').read_text())['token'] == lease.holder['token']


def test_another_hosts_lease_is_taken_over_only_once_stale_or_forced(tmp_path):
    path = _leave_lease(tmp_path, host='node-17', pid=1)
    with pytest.raises(LeaseHeld, match='host node-17, pid 1'):
        RunLease(tmp_path, stale_after_s=600).acquire()
    old = time.time() - 601
    os.utime(path, (old, old))  # not renewed for longer than stale_after_s
    RunLease(tmp_path, stale_after_s=600).acquire().release()
    _leave_lease(tmp_path, host='node-17', pid=1)
    RunLease(tmp_path, force=True).acquire().release()


def test_the_holder_renews_its_lease_and_a_forced_takeover_stops_it(tmp_path):
    lease = RunLease(tmp_path, stale_after_s=5, heartbeat_s=0.1).acquire()
    old = time.time() - 60
    os.utime(tmp_path / 'lease.json', (old, old))
    time.sleep(0.5)
    assert time.time() - (tmp_path / 'lease.json').stat().st_mtime < 5  # renewed
    other = RunLease(tmp_path, force=True).acquire()
    time.sleep(0.3)
    lease.release()  # the first launch ends: it must not remove the lease it lost
    assert json.loads((tmp_path / 'lease.json').read_text())['token'] == other.holder['token']
    other.release()


def test_a_staleness_shorter_than_the_renewals_is_an_error():
    with pytest.raises(ValueError, match='lease.stale_after_s must be more than the 30 s between renewals'):
        RunLease('.', stale_after_s=10)


def _s3_bucket(endpoint):
    import boto3

    client = boto3.client('s3', endpoint_url=endpoint)
    return SimpleNamespace(
        put=lambda key, holder: client.put_object(Bucket='reweigh', Key=key, Body=json.dumps(holder).encode()),
        holder=lambda key: json.loads(client.get_object(Bucket='reweigh', Key=key)['Body'].read()),
        stamp=lambda key: client.head_object(Bucket='reweigh', Key=key)['LastModified'],
        keys=lambda prefix: [o['Key'] for o in client.list_objects_v2(Bucket='reweigh', Prefix=prefix).get('Contents', [])],
    )


def _gs_bucket(env):
    from google.cloud import storage

    bucket = storage.Client().bucket('reweigh')
    return SimpleNamespace(
        put=lambda key, holder: bucket.blob(key).upload_from_string(json.dumps(holder)),
        holder=lambda key: json.loads(bucket.blob(key).download_as_bytes()),
        stamp=lambda key: bucket.get_blob(key).updated,
        keys=lambda prefix: [blob.name for blob in bucket.list_blobs(prefix=prefix)],
    )


BUCKETS = {'s3': ('s3_env', _s3_bucket), 'gs': ('gcs_env', _gs_bucket)}
"""Each store whose run folders take a lease: the fixture pointing its clients at an emulator with bucket ``reweigh``,
and how the tests below write and look at that bucket directly."""


@pytest.fixture(params=sorted(BUCKETS))
def bucket(request):
    """``(scheme, bucket)`` for each store in :data:`BUCKETS`, its emulator running."""
    fixture, make = BUCKETS[request.param]
    return request.param, make(request.getfixturevalue(fixture))


def test_a_bucket_run_folder_lease_refuses_a_second_launch_and_is_taken_over_once_stale(bucket):
    """The remote run folder's lease (s3://, gs://): created only if absent, renewed and removed only if unchanged."""
    scheme, store = bucket
    folder, key = f'{scheme}://reweigh/runs/leased', 'runs/leased/lease.json'
    with RunLease(folder, stale_after_s=5, heartbeat_s=0.2) as first:
        with pytest.raises(LeaseHeld, match=f'run folder {folder} is being trained by another launch .host '):
            RunLease(folder).acquire()
        stamp = store.stamp(key)
        time.sleep(1.5)
        assert store.stamp(key) > stamp  # renewed
        assert store.holder(key)['token'] == first.holder['token']
    assert store.keys('runs/leased/') == []  # released

    store.put(key, {'host': 'node-17', 'pid': 1, 'since': 'x'})
    with pytest.raises(LeaseHeld, match='host node-17, pid 1'):
        RunLease(folder, stale_after_s=2, heartbeat_s=0.5).acquire()
    time.sleep(2.5)  # not renewed for longer than stale_after_s
    with RunLease(folder, stale_after_s=2, heartbeat_s=0.5) as taken:
        assert store.holder(key)['token'] == taken.holder['token']
        forced = RunLease(folder, force=True).acquire()
        time.sleep(1.0)  # the first holder's renewal finds the lease changed and stops
    assert store.holder(key)['token'] == forced.holder['token']  # the first did not remove it
    forced.release()


def test_a_bucket_lease_of_a_process_that_is_gone_on_this_host_is_taken_over_at_once(bucket):
    scheme, store = bucket
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True,
                          check=True)
    store.put('runs/gone/lease.json', {'host': socket.gethostname(), 'pid': int(dead.stdout), 'since': 'x', 'token': 'old'})
    with RunLease(f'{scheme}://reweigh/runs/gone') as lease:
        assert store.holder('runs/gone/lease.json')['token'] == lease.holder['token']


def test_the_gcs_emulator_refuses_a_second_create_so_the_gs_lease_tests_mean_something(gcs_env):
    """tests/gcs_emulator.py teaches gcp-storage-emulator GCS's ``ifGenerationMatch``: without it every create would
    win, and the gs:// lease tests above would pass against a store that keeps no one out."""
    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage

    blob = storage.Client().bucket('reweigh').blob('runs/precondition/probe')
    blob.upload_from_string('first', if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        blob.upload_from_string('second', if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        blob.upload_from_string('second', if_generation_match=blob.generation + 1)
    with pytest.raises(PreconditionFailed):
        blob.delete(if_generation_match=blob.generation + 1)
    blob.delete(if_generation_match=blob.generation)

    folder = 'gs://reweigh/runs/precondition'
    with RunLease(folder) as first:
        with pytest.raises(LeaseHeld, match=f'run folder {folder} is being trained by another launch'):
            RunLease(folder).acquire()
        assert _gs_bucket(gcs_env).holder('runs/precondition/lease.json')['token'] == first.holder['token']


def test_a_run_folder_in_a_store_without_conditional_writes_is_an_error():
    with pytest.raises(ValueError, match=r'leases are taken in s3://, gs:// run folders and local ones, not oci://'):
        RunLease('oci://bucket/runs/x')
