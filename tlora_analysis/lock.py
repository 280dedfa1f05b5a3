"""The run lock: one writer per run directory, released by the kernel however the holder exits."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import InputError
from .io import umask

__all__ = ["RunLock", "LOCK_FILE"]

LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run directory, so that two writers cannot interleave their files.

    It is an ``fcntl.flock`` on ``RUN_DIR/.lock``: the kernel drops it when the holding
    process exits, however it exits, so a lock left by a killed process is never in the
    way. The file holds the holder's PID for the error message. Within one process the
    lock is re-entrant (a :class:`RunWriter` inside ``train`` takes it again).
    """

    _held: dict[Path, RunLock] = {}

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir).resolve() / LOCK_FILE
        self._fd: int | None = None
        self._count = 0

    @classmethod
    def acquire(cls, run_dir: str | Path) -> RunLock:
        key = Path(run_dir).resolve()
        lock = cls._held.get(key) or cls(run_dir)
        if lock._count == 0:
            lock._lock()
            cls._held[key] = lock
        lock._count += 1
        return lock

    def _lock(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = self.path.read_text().strip() if self.path.exists() else "?"
                raise InputError(f"{self.path.parent}: another process (pid {holder or '?'}) is writing this run; "
                                 "wait for it to finish or choose another --out") from err
            # The holder before us may have unlinked the file between our open and flock.
            if self.path.exists() and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._count == 0:
            return
        self._count -= 1
        if self._count == 0 and self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
            RunLock._held.pop(self.path.parent, None)
