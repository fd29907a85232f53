"""One run per ``output_dir``: a lock file naming the run that holds it (pid, host, start time).

The lock is an ``flock`` on ``<output_dir>/_hfcoop_run.lock``: the kernel releases it when its process ends, however
it ends, so a lock left behind by a killed run is recognised as stale (and taken over, with a message) while a live
run's is refused at once. Filesystems without ``flock`` fall back to asking whether the recorded pid still runs on
this host. Locks nest within a process (the CLI holds it around ``Trainer.train``, which takes it again).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Iterator

from .guards import LOCK_NAME, OutputDirError  # LOCK_NAME: "_", the Hub upload of output_dir skips it
_held: dict[str, tuple[int, int]] = {}  # real path of the lock -> (file descriptor, nesting depth)


class RunLockedError(OutputDirError):
    """Another live run writes into this output_dir."""


def acquire_run_lock(output_dir: str) -> None:
    """Takes ``output_dir``'s lock for this process, or raises :class:`RunLockedError` naming the run holding it."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.realpath(os.path.join(output_dir, LOCK_NAME))
    if path in _held:
        fd, depth = _held[path]
        _held[path] = (fd, depth + 1)
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _try_flock(fd, path)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            holder = _read(path)
            os.close(fd)
            raise RunLockedError(_refusal(output_dir, holder, path))
        # Locked, but the file may have been removed and re-created by a run that finished meanwhile: retry on the
        # file that is there now, else two runs could each hold a lock on a different file.
        if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
            break
        os.close(fd)
    earlier = _read(path)
    if earlier.get("pid"):
        print(f"hfcoop: taking over the lock of an earlier run in '{output_dir}' that is no longer running "
              f"({_describe(earlier)}).", file=sys.stderr)  # fmt: skip
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    _held[path] = (fd, 1)


def release_run_lock(output_dir: str) -> None:
    """Releases one hold of the lock; the last one removes the lock file (a clean end leaves nothing stale)."""
    path = os.path.realpath(os.path.join(output_dir, LOCK_NAME))
    if path not in _held:
        return
    fd, depth = _held[path]
    if depth > 1:
        _held[path] = (fd, depth - 1)
        return
    del _held[path]
    with contextlib.suppress(OSError):
        os.remove(path)  # removed while still locked: the next run creates a fresh file
    os.close(fd)


@contextlib.contextmanager
def run_lock(output_dir: str) -> Iterator[None]:
    acquire_run_lock(output_dir)
    try:
        yield
    finally:
        release_run_lock(output_dir)


def release_all_run_locks() -> None:
    """Releases every lock this process holds (the end of a CLI command; interpreter exit)."""
    for path in list(_held):
        _held[path] = (_held[path][0], 1)
        release_run_lock(os.path.dirname(path))


atexit.register(release_all_run_locks)


def _try_flock(fd: int, path: str) -> bool:
    """True when this process now holds the lock; False when a live run holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        # No flock on this filesystem: the recorded pid decides (on this host; another host's run counts as live).
        holder = _read(path)
        return not holder.get("pid") or (holder.get("host") == socket.gethostname() and not _alive(holder["pid"]))


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"


def _refusal(output_dir: str, holder: dict, path: str) -> str:
    return (f"output_dir '{output_dir}' is in use by another hfcoop run ({_describe(holder)}). Wait for it to end or "
            f"choose another output_dir; two runs in one folder would mix their checkpoints. (Only if no such run "
            f"exists: remove {path}.)")  # fmt: skip
