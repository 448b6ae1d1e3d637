"""The run folder every stage writes into: one run of a stage at a time (`hold`), write errors that name their
file (`writing`), and file names made from model names and paths (`slug`)."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import time
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import PipelineError


class RunFolderBusy(PipelineError):
    """Another run of the stage holds this run folder; the message names the folder and the holder."""


class WriteError(PipelineError):
    """An output could not be written (a full disk, no permission); the message names the file."""


@contextmanager
def writing(path: str | os.PathLike):
    """Turns an OSError raised inside the block into a WriteError that names the file (the error's own, or `path`)."""
    try:
        yield
    except OSError as err:
        where = err.filename or path
        code = errno.errorcode.get(err.errno, type(err).__name__)
        raise WriteError(f"cannot write {where}: {err.strerror or err} [{code}]; what was already written "
                         "is kept: fix that and run the same command again") from None


def publish(path: str | os.PathLike, text: str) -> Path:
    """Writes `path` whole or not at all: a temporary file of this process beside it, synced, then renamed over it
    (removed if anything fails). Raises WriteError naming the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return path


def slug(name: str) -> str:
    """`name` (a model id, a path) as one file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def lock_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / f".{name}.lock"


@contextmanager
def hold(run_dir: str | os.PathLike, name: str):
    """Holds the run folder's lock `name` for the block, or raises RunFolderBusy at once if another process
    holds it. The lock file records the holder (pid, host, start time) and is removed on release."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    path = lock_path(run_dir, name)
    with writing(path):
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = _lock(path, run_dir, name)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        except BaseException:
            os.close(fd)
            raise
    try:
        yield path
    finally:
        # unlinked while still locked: a process that opened it meanwhile sees another file and tries again
        with suppress(OSError):
            os.unlink(path)
        os.close(fd)
        if created:
            with suppress(OSError):
                os.rmdir(run_dir)  # a run that failed before writing anything leaves no empty folder behind


def _lock(path: Path, run_dir: Path, name: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "it has not written its pid yet"
            os.close(fd)
            raise RunFolderBusy(f"run folder {run_dir} is in use by another {name} run ({holder}); "
                                f"wait for it to end, or use another --run_dir") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        mine = os.fstat(fd)
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)  # the previous holder removed the file between our open and our lock
