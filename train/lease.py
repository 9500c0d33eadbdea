"""One run, one writer: a lease on a run folder while a launch trains it, in the local folder and in the bucket.

``reweigh train`` takes the run folder's lease (``RUN/lease.json``: host, pid, since when) before it writes
anything, renews it every :data:`HEARTBEAT_S` seconds from a background thread, and gives it back when it ends. With
``save_folder`` in an ``s3://`` or ``gs://`` bucket it also takes the remote run folder's lease
(``s3://.../RUN/lease.json``, created and renewed with the store's conditional writes: S3's ``If-None-Match`` /
``If-Match``, GCS's ``ifGenerationMatch``), so two machines with their own local folders cannot both train the run.
An ``oci://`` run folder holds the local lease only (there is no OCI emulator to test its conditional writes
against). A second launch of the same run finds it held and stops with one line naming the holder (exit 2), leaving
the running run's files alone. A lease left behind by a launch that was killed is taken over: at once on the same
host when its process is gone, on any host once it has not been renewed for ``stale_after_s`` seconds (default 600;
an S3 bucket's lease ages by the store's own clock, a GCS bucket's by this host's clock against the store's
timestamp); ``force`` (``reweigh train --force``, or the config key ``lease.force``) takes it from a holder that looks
alive. The ranks of one launch share its leases: rank 0 holds them.

Example:
    >>> import tempfile
    >>> from reweigh.train.lease import LeaseHeld, RunLease
    >>> folder = tempfile.mkdtemp()
    >>> with RunLease(folder):
    ...     try:
    ...         RunLease(folder).acquire()
    ...     except LeaseHeld as e:
    ...         print(str(e).split(' is being trained')[0] == f'run folder {folder}')
    True
    >>> RunLease(folder).acquire().release()  # free again once the first launch ended
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from reweigh.io.uri import scheme_of, schemes_text
from reweigh.train.run_folder import RunFolder

__all__ = ['HEARTBEAT_S', 'LEASE_SCHEMES', 'LeaseHeld', 'RunLease']

HEARTBEAT_S = 30.0
"""How often the holder renews its lease."""

LEASE_SCHEMES = ('s3', 'gs')
"""Object stores whose run folders take a lease (those with conditional writes that reweigh uses and tests against an
emulator); a run whose ``save_folder`` is elsewhere (``oci://``: no emulator to test against) holds the local lease
only."""


class LeaseHeld(ValueError):
    """The run folder is being trained by another launch (a user error: exit 2, naming the holder)."""


class _Lease(NamedTuple):
    holder: dict[str, Any] | None
    """What the lease says (None if unreadable)."""
    age_s: float
    """Seconds since it was last written or renewed."""
    version: str
    """What a conditional renewal or removal compares against."""


class _Slot(Protocol):
    """Where a lease lives: one object that is created only if absent and changed only if unchanged."""

    def create(self, body: str) -> str | None: ...  # the version, or None if a lease is there
    def read(self) -> _Lease | None: ...  # None if there is none
    def renew(self, version: str) -> str | None: ...  # the new version, or None if it is no longer ours
    def remove(self, version: str) -> None: ...  # only if it is still that version


class _FileSlot:
    """``lease.json`` in a local folder: created with a hard link (one launch wins), renewed by its mtime."""

    def __init__(self, path: Path, token: str) -> None:
        self.path, self.token = path, token

    def create(self, body: str) -> str | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staged = self.path.with_name(f'.{self.path.name}.{self.token}')
        staged.write_text(body)
        try:
            os.link(staged, self.path)  # creates the lease only if there is none
        except FileExistsError:
            return None
        finally:
            staged.unlink()
        return self.token

    def read(self) -> _Lease | None:
        holder = _parse(self.path)
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        return _Lease(holder, age, _token(holder) or '')

    def renew(self, version: str) -> str | None:
        if _token(_parse(self.path)) != version:
            return None
        try:
            os.utime(self.path)
        except OSError:
            return None
        return version

    def remove(self, version: str) -> None:
        # Moved aside under a name of ours first: should another launch have replaced it meanwhile, what was moved
        # is that launch's fresh lease, and it is put back.
        aside = self.path.with_name(f'.{self.path.name}.stale.{self.token}')
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if (_token(_parse(aside)) or '') != version:
                os.link(aside, self.path)
        except FileExistsError:
            pass
        finally:
            aside.unlink()


class _S3Slot:
    """``lease.json`` in an S3 bucket: ``If-None-Match: *`` creates it, ``If-Match: ETag`` renews and removes it."""

    def __init__(self, uri: str) -> None:
        import boto3

        bucket, _, key = uri.removeprefix('s3://').partition('/')
        self.uri, self.bucket, self.key = uri, bucket, key
        self.client = boto3.client('s3', endpoint_url=os.environ.get('S3_ENDPOINT_URL') or None)

    def _put(self, body: str, **condition: str) -> str | None:
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body.encode(), **condition)['ETag']
        except Exception as e:  # botocore raises its own error types
            if _status(e) in (404, 409, 412):  # changed (or gone) since: not ours to write
                return None
            raise ValueError(f'cannot write the lease {self.uri}: {type(e).__name__}: {e}') from e

    def create(self, body: str) -> str | None:
        self.body = body
        return self._put(body, IfNoneMatch='*')

    def read(self) -> _Lease | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as e:  # botocore raises its own error types
            if _status(e) == 404:
                return None
            raise ValueError(f'cannot read the lease {self.uri}: {type(e).__name__}: {e}') from e
        try:
            holder = json.loads(got['Body'].read())
        except ValueError:
            holder = None
        now = got['ResponseMetadata']['HTTPHeaders'].get('date')  # the store's clock, as LastModified is
        now_s = _http_date(now) if now else time.time()
        return _Lease(holder if isinstance(holder, dict) else None, now_s - got['LastModified'].timestamp(),
                      got['ETag'])

    def renew(self, version: str) -> str | None:
        try:
            return self._put(self.body, IfMatch=version)
        except ValueError:  # the store is unreachable now: keep the lease and try again at the next renewal
            return version

    def remove(self, version: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=version)
        except Exception as e:  # botocore raises its own error types
            if _status(e) not in (404, 412):
                raise ValueError(f'cannot remove the lease {self.uri}: {type(e).__name__}: {e}') from e


class _GCSSlot:
    """``lease.json`` in a Google Cloud Storage bucket: ``ifGenerationMatch=0`` creates it, ``ifGenerationMatch`` with
    its generation renews and removes it.

    google-cloud-storage does not hand back the response's ``Date`` header, so a lease's age here is this host's clock
    against the store's ``updated`` timestamp (S3's is the store's clock on both sides): a host whose clock runs ahead
    by minutes sees a lease that much older.
    """

    def __init__(self, uri: str) -> None:
        bucket, _, key = uri.removeprefix('gs://').partition('/')
        self.uri = uri
        try:
            from google.cloud import storage

            # The standard client: it follows STORAGE_EMULATOR_HOST and GOOGLE_APPLICATION_CREDENTIALS.
            self.bucket = storage.Client().bucket(bucket)
        except Exception as e:  # google-auth raises its own error types (no credentials found, say)
            raise ValueError(f'cannot write the lease {uri}: {type(e).__name__}: {e}') from e
        self.key = key

    def _put(self, body: str, generation: int) -> str | None:
        blob = self.bucket.blob(self.key)
        try:
            blob.upload_from_string(body.encode(), content_type='application/json', if_generation_match=generation)
        except Exception as e:  # google-api-core raises its own error types
            if _gcs_status(e) in (404, 412):  # changed (or gone) since: not ours to write
                return None
            raise ValueError(f'cannot write the lease {self.uri}: {type(e).__name__}: {e}') from e
        return str(blob.generation)

    def create(self, body: str) -> str | None:
        self.body = body
        return self._put(body, 0)  # generation 0: only if there is none

    def read(self) -> _Lease | None:
        while True:
            try:
                blob = self.bucket.get_blob(self.key)
                if blob is None:
                    return None
                generation, updated = blob.generation, blob.updated  # a download resets them from its headers
                text = blob.download_as_bytes(if_generation_match=generation)
            except Exception as e:  # google-api-core raises its own error types
                if _gcs_status(e) in (404, 412):  # replaced or removed between the two requests: look again
                    continue
                raise ValueError(f'cannot read the lease {self.uri}: {type(e).__name__}: {e}') from e
            try:
                holder = json.loads(text)
            except ValueError:
                holder = None
            return _Lease(holder if isinstance(holder, dict) else None, time.time() - updated.timestamp(),
                          str(generation))

    def renew(self, version: str) -> str | None:
        try:
            return self._put(self.body, int(version))
        except ValueError:  # the store is unreachable now: keep the lease and try again at the next renewal
            return version

    def remove(self, version: str) -> None:
        try:
            self.bucket.blob(self.key).delete(if_generation_match=int(version))
        except Exception as e:  # google-api-core raises its own error types
            if _gcs_status(e) not in (404, 412):
                raise ValueError(f'cannot remove the lease {self.uri}: {type(e).__name__}: {e}') from e


_SLOTS: dict[str, type[_S3Slot] | type[_GCSSlot]] = {'s3': _S3Slot, 'gs': _GCSSlot}
"""The slot class of each scheme in :data:`LEASE_SCHEMES`."""


class RunLease:
    """The lease on a run folder (local, or an ``s3://`` or ``gs://`` one): acquire it before training, release it
    after (or use ``with``).

    Args:
        folder (str | os.PathLike): The run folder (a local one is created if absent).
        stale_after_s (float): A lease not renewed for this long is taken over. Default: ``600``.
        force (bool): Take the lease even from a holder that looks alive. Default: ``False``.
        heartbeat_s (float): How often to renew it. Default: :data:`HEARTBEAT_S`.

    Raises:
        ValueError: For ``stale_after_s`` not above ``heartbeat_s``, or a remote folder outside
            :data:`LEASE_SCHEMES`.
    """

    def __init__(self, folder: str | os.PathLike, stale_after_s: float = 600.0, force: bool = False,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        if stale_after_s <= heartbeat_s:
            raise ValueError(f'lease.stale_after_s must be more than the {heartbeat_s:g} s between renewals, '
                             f'got {stale_after_s:g}.')
        self.folder = RunFolder(folder)
        self.stale_after_s, self.force, self.heartbeat_s = stale_after_s, force, heartbeat_s
        self.holder = {'host': socket.gethostname(), 'pid': os.getpid(),
                       'since': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
                       'token': uuid.uuid4().hex}
        """What this launch writes into the lease."""
        scheme = scheme_of(folder)
        if scheme is None:
            self._slot: _Slot = _FileSlot(Path(self.folder.lease), self.holder['token'])
        elif scheme in LEASE_SCHEMES:
            self._slot = _SLOTS[scheme](self.folder.lease)
        else:
            raise ValueError(f'{folder}: leases are taken in {schemes_text(LEASE_SCHEMES)} run folders and local '
                             f'ones, not {scheme}://')
        self._version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> RunLease:
        """Take the lease (taking over a stale one), and start renewing it.

        Raises:
            LeaseHeld: If another launch holds it.
            ValueError: If a bucket's lease cannot be read or written (the message names it).
        """
        body = json.dumps(self.holder)
        while (version := self._slot.create(body)) is None:
            found = self._slot.read()
            if found is None:  # released meanwhile: try again
                continue
            holder = found.holder
            if holder is not None and not self.force and found.age_s < self.stale_after_s and not self._gone(holder):
                raise LeaseHeld(
                    f'run folder {self.folder.root} is being trained by another launch (host {holder.get("host")}, '
                    f'pid {holder.get("pid")}, since {holder.get("since")}; renewed {found.age_s:.0f} s ago); wait '
                    f'for it to end, or pass --force (lease.force=true) if it is gone')
            self._slot.remove(found.version)  # stale, gone, unreadable or forced; unless replaced meanwhile
        self._version = version
        self._thread = threading.Thread(target=self._renew, name='reweigh-lease', daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop renewing and remove the lease, if it is still this launch's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._version is not None:
            try:
                self._slot.remove(self._version)
            except ValueError as e:  # the store is unreachable: the lease goes stale, or this host takes it over
                print(f'reweigh: warning: {e}; it is taken over once stale ({self.stale_after_s:g} s), or at once '
                      f'from this host', file=sys.stderr)
            self._version = None

    def _gone(self, holder: dict[str, Any]) -> bool:
        """Whether the holder is a process of this host that no longer runs."""
        if holder.get('host') != self.holder['host'] or not isinstance(holder.get('pid'), int):
            return False
        try:
            os.kill(holder['pid'], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # it runs, as another user
            return False
        return False

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            version = self._slot.renew(self._version)
            if version is None:
                self._version = None  # taken over (--force): leave the other launch's lease alone
                return
            self._version = version


def _parse(path: Path) -> dict[str, Any] | None:
    """A lease file's holder, or ``None`` if it is gone or unreadable."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _token(holder: dict[str, Any] | None) -> str | None:
    return None if holder is None else holder.get('token')


def _status(error: Exception) -> int | None:
    """The HTTP status of a botocore ``ClientError`` (None for other errors: the store was not reached)."""
    response = getattr(error, 'response', None)
    return response.get('ResponseMetadata', {}).get('HTTPStatusCode') if isinstance(response, dict) else None


def _gcs_status(error: Exception) -> int | None:
    """The HTTP status of a google-api-core ``GoogleAPICallError`` (None for other errors: the store was not
    reached)."""
    from google.api_core.exceptions import GoogleAPICallError

    return error.code if isinstance(error, GoogleAPICallError) else None


def _http_date(text: str) -> float:
    import email.utils

    return email.utils.parsedate_to_datetime(text).timestamp()
