"""Small file helpers shared by every on-disk format: content hashes, all-or-nothing writes, locks between
processes, and leases on working folders."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path`, renamed onto it when the block succeeds and removed when it fails, so
    readers see the old file or the whole new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def copy_whole(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """`source` copied to `target` (its folder made), which appears whole or not at all."""
    with atomic_path(target) as partial:
        shutil.copyfile(source, partial)
    return Path(target)


# --- locks and leases: several processes (or machines on one shared disk) writing one store -------------------------

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block: a POSIX record lock (fcntl), which other
    processes, and other machines on an NFS disk with locking, respect; plus a thread lock, since record locks are
    held per process and would not keep this process's own threads apart."""
    path = Path(path)
    with _process_locks_guard:
        thread_lock = _process_locks.setdefault(str(path.absolute()), threading.Lock())
    with thread_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing releases the record lock


HEARTBEAT_S = 30.0  # a live lease's file is touched this often
STALE_AFTER_S = 600.0  # a lease untouched this long is stale, wherever its writer runs


class Lease:
    """A small file that says who owns a working folder (writer id, host, pid), touched every HEARTBEAT_S seconds
    by a background thread while the owner works. Another process may remove the folder only when the lease is
    stale (see `stale_reason`)."""

    def __init__(self, path: Path, owner: str):
        self.path = path
        self.owner = owner

    @classmethod
    def take(cls, path: str | os.PathLike) -> Lease:
        lease = cls(Path(path), uuid.uuid4().hex)
        record = {"owner": lease.owner, "host": socket.gethostname(), "pid_namespace": _pid_namespace(),
                  "pid": os.getpid(), "started": time.time()}
        with atomic_path(lease.path) as partial:
            partial.write_text(json.dumps(record))
        _heartbeat.add(lease.path)
        return lease

    def held(self) -> bool:
        """The lease file is still there and still ours (nobody removed it as stale)."""
        record = read_lease(self.path)
        return record is not None and record.get("owner") == self.owner

    def release(self) -> None:
        _heartbeat.discard(self.path)
        if self.held():
            self.path.unlink(missing_ok=True)


def read_lease(path: str | os.PathLike) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def stale_reason(path: str | os.PathLike, stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why the lease at `path` is stale, or None while its writer may still be working: stale when its heartbeat is
    older than `stale_after_s`, or at once when its writer ran on this host, in this PID namespace (a container with
    the same host name has its own), and has exited."""
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return "no lease"
    if age > stale_after_s:
        return f"no heartbeat for {age:.0f} s"
    record = read_lease(path) or {}
    here = (socket.gethostname(), _pid_namespace())
    if (record.get("host"), record.get("pid_namespace")) == here and not _alive(record.get("pid")):
        return f"its writer (pid {record.get('pid')} on this host) has exited"
    return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class _Heartbeat:
    """One daemon thread per process that touches every live lease file (restarted in a forked child)."""

    def __init__(self):
        self._paths: set[Path] = set()
        self._lock = threading.Lock()
        self._pid: int | None = None

    def add(self, path: Path) -> None:
        with self._lock:
            self._paths.add(path)
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="lease-heartbeat", daemon=True).start()

    def discard(self, path: Path) -> None:
        with self._lock:
            self._paths.discard(path)

    def _run(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self._lock:
                paths = list(self._paths)
            for path in paths:
                try:
                    os.utime(path)
                except OSError:
                    pass  # removed as stale: the owner finds out before it publishes


_heartbeat = _Heartbeat()
