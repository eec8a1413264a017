"""File helpers shared by every stage: content hashes, JSON documents read with one-line errors, and writes that
fail with one line naming the file and the cause (full disk, file-size limit) instead of a traceback."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from maskrt.core.errors import MaskrtError

#: Every temporary file or folder maskrt writes starts with this, then the final name and the writer's pid:
#: ``.maskrt-staging-NAME-PID-XXXXXXXX`` (a folder) or ``...XXXXXXXX.tmp`` (a file), so that a later run into the
#: same place recognises leftovers of a killed writer (core/outputs.py removes them).
STAGING_PREFIX = ".maskrt-staging-"
#: The errors of a write that the machine, not maskrt, refused.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})


def staging_prefix(final_name: str) -> str:
    """The prefix of this process's temporary files and folders for an output named `final_name`."""
    return f"{STAGING_PREFIX}{final_name}-{os.getpid()}-"


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | Path, what: str = "file") -> Any:
    """A JSON document; MaskrtError naming the file when it is missing, unreadable or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MaskrtError(f"{path}: missing (not {what}?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MaskrtError(f"{path}: corrupt ({exc})") from None


def write_fault_cause(folder: str | Path, fallback: str) -> str:
    """Why a write into `folder` failed when the writer did not say (torch's C++ writer): the file-size limit, a
    full disk, or `fallback`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return f"file too large: the file-size limit (ulimit -f) is {soft} bytes"
    try:
        stat = os.statvfs(folder)
        if stat.f_bavail * stat.f_frsize < 1 << 20:
            return "no space left on device"
    except OSError:
        pass
    return fallback


@contextmanager
def write_faults(path: str | Path) -> Iterator[None]:
    """Turns a write the machine refused (full disk, file-size limit, quota, read-only file system) inside the block
    into MaskrtError naming `path` and the cause. torch.save reports such faults as a RuntimeError of its C++
    writer: that one too."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise MaskrtError(f"{path}: cannot be written ({exc.strerror or os.strerror(exc.errno or 0)})") from None
    except RuntimeError as exc:
        text = str(exc)
        if not any(mark in text for mark in ("PytorchStreamWriter", "inline_container", "file write failed")):
            raise
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        first = text.strip().splitlines()[0][:200] if text.strip() else "write failed"
        raise MaskrtError(f"{path}: cannot be written ({write_fault_cause(folder, first)})") from None


def write_json(path: str | Path, document: Any) -> None:
    """Write a JSON document atomically (temporary file in the same folder, then rename)."""
    write_atomic(path, (json.dumps(document, indent=2) + "\n").encode())


def write_atomic(path: str | Path, data: bytes) -> None:
    """`durable_write` of bytes (a JSON document, an engine)."""
    durable_write(path, lambda f: f.write(data))


def durable_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """The one way maskrt writes a file: `write(f)` into a temporary file in the same folder, flushed and fsynced,
    renamed over `path`, then the folder fsynced. A crash (even SIGKILL or a power cut) at any moment leaves either
    the previous file or the new one, never a torn one; a write the machine refuses (full disk, file-size limit) is a
    MaskrtError naming `path` (write_faults), the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=staging_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with write_faults(path), os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(folder: str | Path) -> None:
    """Make the folder's entries (a rename into it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file under `folder` and every folder of it (before a staged folder is renamed into place)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
