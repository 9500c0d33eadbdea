"""One run, one writer: a lease on a local run folder while a launch trains it.

``reweigh train`` takes the run folder's lease (``RUN/lease.json``: host, pid, since when) before it writes
anything, renews it every :data:`HEARTBEAT_S` seconds from a background thread, and gives it back when it ends. A
second launch of the same run finds it held and stops with one line naming the holder (exit 2), leaving the running
run's files alone. A lease left behind by a launch that was killed is taken over: at once on the same host when its
process is gone, on any host once it has not been renewed for ``stale_after_s`` seconds (default 600); ``force``
(``reweigh train --force``, or the config key ``lease.force``) takes it from a holder that looks alive. The ranks
of one launch share its lease: rank 0 holds it.

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
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from reweigh.train.run_folder import RunFolder

__all__ = ['HEARTBEAT_S', 'LeaseHeld', 'RunLease']

HEARTBEAT_S = 30.0
"""How often the holder renews its lease (the file's modification time)."""


class LeaseHeld(ValueError):
    """The run folder is being trained by another launch (a user error: exit 2, naming the holder)."""


class RunLease:
    """The lease on a local run folder: acquire it before training, release it after (or use ``with``).

    Args:
        folder (str | os.PathLike): The local run folder (created if absent).
        stale_after_s (float): A lease not renewed for this long is taken over. Default: ``600``.
        force (bool): Take the lease even from a holder that looks alive. Default: ``False``.
        heartbeat_s (float): How often to renew it. Default: :data:`HEARTBEAT_S`.

    Raises:
        ValueError: For ``stale_after_s`` not above ``heartbeat_s``.
    """

    def __init__(self, folder: str | os.PathLike, stale_after_s: float = 600.0, force: bool = False,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        if stale_after_s <= heartbeat_s:
            raise ValueError(f'lease.stale_after_s must be more than the {heartbeat_s:g} s between renewals, '
                             f'got {stale_after_s:g}.')
        self.folder = RunFolder(folder)
        self.path = Path(self.folder.lease)
        self.stale_after_s, self.force, self.heartbeat_s = stale_after_s, force, heartbeat_s
        self.holder = {'host': socket.gethostname(), 'pid': os.getpid(),
                       'since': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
                       'token': uuid.uuid4().hex}
        """What this launch writes into the lease."""
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
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staged = self.path.with_name(f'.{self.path.name}.{self.holder["token"]}')
        staged.write_text(json.dumps(self.holder))
        try:
            while True:
                try:
                    os.link(staged, self.path)  # creates the lease only if there is none: one launch wins
                    break
                except FileExistsError:
                    self._take_over_or_refuse()
        finally:
            staged.unlink()
        self._thread = threading.Thread(target=self._renew, name='reweigh-lease', daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop renewing and remove the lease, if it is still this launch's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if _token(self._read()) == self.holder['token']:
            self.path.unlink(missing_ok=True)

    def _take_over_or_refuse(self) -> None:
        holder = self._read()
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:  # released meanwhile: try again
            return
        if holder is not None and not self.force and age < self.stale_after_s and not self._gone(holder):
            raise LeaseHeld(
                f'run folder {self.folder.root} is being trained by another launch (host {holder.get("host")}, '
                f'pid {holder.get("pid")}, since {holder.get("since")}; renewed {age:.0f} s ago); wait for it to '
                f'end, or pass --force (lease.force=true) if it is gone')
        # stale, gone, unreadable or forced: move it aside under a name of ours, then try again. Should another
        # launch have replaced it meanwhile, what was moved is that launch's fresh lease: it is put back.
        aside = self.path.with_name(f'.{self.path.name}.stale.{self.holder["token"]}')
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if _token(_read(aside)) != _token(holder):
                os.link(aside, self.path)
        except FileExistsError:
            pass
        finally:
            aside.unlink()

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

    def _read(self) -> dict[str, Any] | None:
        return _read(self.path)

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if _token(self._read()) != self.holder['token']:
                return  # taken over (--force): leave the other launch's lease alone
            try:
                os.utime(self.path)
            except OSError:
                return


def _read(path: Path) -> dict[str, Any] | None:
    """A lease's holder, or ``None`` if it is gone or unreadable."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _token(holder: dict[str, Any] | None) -> str | None:
    return None if holder is None else holder.get('token')
