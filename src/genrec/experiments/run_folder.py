"""A run folder is claimed before anything is prepared or trained: it must be writable, it must not
hold another run (unless the caller resumes it or asks to overwrite it), and no other training may
write into it at the same time. The claim is an exclusive ``flock`` on ``OUT/.lock`` (which names
the holder's pid and host), held for the run's lifetime; the kernel releases it when the process
ends, however it ends, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from genrec.errors import GenrecError

LOCK = ".lock"


@contextlib.contextmanager
def claim(out: str | Path, resume: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Hold ``out`` for one run: created if missing, checked writable, locked, and (with
    ``overwrite``) emptied of the old run. Raises :class:`GenrecError` naming the folder."""
    if resume and overwrite:
        raise GenrecError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    out = Path(out)
    created = not (out / LOCK).exists()
    fd = _open_lock(out)
    try:
        _lock(fd, out)
    except GenrecError:
        os.close(fd)
        raise
    try:
        try:
            _make_room(out, resume, overwrite)
        except GenrecError:
            if created:  # leave no trace in a folder that is not ours
                (out / LOCK).unlink(missing_ok=True)
            raise
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield out
    finally:
        os.ftruncate(fd, 0)  # a finished run's .lock names nobody
        os.close(fd)  # releases the lock


def _make_room(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that holds a run unless resuming it; with ``overwrite``, delete that run
    (never a folder that does not look like one: no config.yaml)."""
    old = sorted(p.name for p in out.iterdir() if p.name != LOCK)
    if not old or resume:
        return
    if not overwrite:
        raise GenrecError(
            f"{out} already holds a run ({', '.join(old[:4])}{', ...' if len(old) > 4 else ''}); "
            "pass --resume to continue it, --overwrite to delete it and start again, or choose another --out")
    if "config.yaml" not in old:
        raise GenrecError(f"--overwrite: {out} has no config.yaml, so it does not look like a genrec run folder; "
                          "not deleting it (choose another --out)")
    for name in old:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _open_lock(out: Path) -> int:
    """The lock file's descriptor, after checking that ``out`` (created with its parents if
    missing) takes new files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
        return os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            why = "a file is in the way of the folder"
        raise GenrecError(f"--out {out}: cannot write the run folder there ({why})") from None


def _lock(fd: int, out: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "starting up"
        raise GenrecError(
            f"{out} is in use by another training ({holder}; {out / LOCK} is locked): wait for it to finish "
            "or choose another --out") from None
