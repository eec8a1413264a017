"""Writing outputs without losing anything: checked up front, locked, staged under a temporary name, renamed at the
end.

Rules every command follows (README, "Outputs never overwrite inputs"):
- an output path is checked before any work: an existing file where a folder is expected (or the reverse), an
  unwritable location, or a non-empty folder / existing file without ``force`` is a one-line error;
- no output is, holds or lies inside an input (``check_apart``), with or without ``force``;
- one writer per output: the output is locked for the run (``output_lock``, an fcntl lock on a file beside it); a
  second maskrt process writing the same output gets a one-line "in use" error;
- a folder of outputs is written into a hidden temporary sibling and renamed into place when complete, so that an
  interrupt (Ctrl-C, SIGTERM) or a crash leaves either the previous folder or the new one, never a mix; the
  temporary folder of a killed writer (SIGKILL, power loss) is removed, with a note, by the next run into the same
  place;
- a write the machine refuses (full disk, file-size limit) is a one-line error naming the output (``write_faults``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from maskrt.core.errors import MaskrtError
from maskrt.core.files import STAGING_PREFIX, fsync_tree, staging_prefix, write_faults

log = logging.getLogger("maskrt")
LOCK_PREFIX = ".maskrt-lock-"


def _writable_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise MaskrtError(f"{path}: cannot be created, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MaskrtError(f"{path}: cannot be written ({existing} is not writable)")


def check_output_dir(path: str | Path, *, force: bool = False, option: str = "--force") -> Path:
    """A folder that may be (re)written: absent, empty, or non-empty with `force`. Nothing is created yet."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MaskrtError(f"{path}: exists and is not a folder")
    if path.is_dir():
        if any(p for p in path.iterdir() if not _is_lock(p)) and not force:
            raise MaskrtError(f"{path}: exists and is not empty (pass {option} to replace it)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise MaskrtError(f"{path}: cannot be written (not writable)")
    _writable_parent(path)
    return path


def check_output_file(path: str | Path, *, force: bool = False) -> Path:
    """A file that may be (re)written: absent, or existing with `force`. Nothing is created yet."""
    path = Path(path)
    if path.is_dir():
        raise MaskrtError(f"{path}: is a folder, expected a file name")
    if path.exists() and not force:
        raise MaskrtError(f"{path}: exists (pass --force to replace it)")
    _writable_parent(path)
    return path


def check_apart(outputs: Iterable[str | Path], inputs: Iterable[tuple[str, str | Path | None]]) -> None:
    """MaskrtError when an output is, holds or lies inside one of `inputs` ((what it is, path) pairs; None skipped),
    whatever the spelling (symbolic links and '..' resolved). Checked before any work, with or without --force: a
    command never writes to, replaces or deletes its own inputs."""
    pairs = [(what, Path(p)) for what, p in inputs if p is not None and str(p) != ""]
    for output in outputs:
        out = Path(output).resolve()
        for what, item in pairs:
            inp = item.resolve()
            if inp == out or (out.exists() and inp.exists() and os.path.samefile(out, inp)):
                raise MaskrtError(f"{output}: is the {what} {item}; an output never replaces an input, choose "
                                  "another path")
            if out in inp.parents:
                raise MaskrtError(f"{output}: holds the {what} {item}; choose an output outside the inputs")
            if inp in out.parents:
                raise MaskrtError(f"{output}: lies inside the {what} {item}; choose an output outside the inputs")


def check_not_input(output: str | Path, inputs: Iterable[str | Path]) -> None:
    """`check_apart` for one output and unnamed inputs."""
    check_apart([output], [("input", p) for p in inputs])


# -- one writer per output -------------------------------------------------------------------------------
_held: dict[Path, list] = {}  # resolved output -> [lock fd, depth, folders this process created]
_held_guard = threading.Lock()


def _is_lock(path: Path) -> bool:
    return path.name.startswith(LOCK_PREFIX)


def _lock_path(output: Path) -> Path:
    return output.parent / f"{LOCK_PREFIX}{output.name}"


def _acquire(output: Path, shown: str | Path) -> int:
    """An exclusive fcntl lock on the output's lock file; MaskrtError when another process holds it."""
    lock = _lock_path(output)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise MaskrtError(f"{shown}: in use by another maskrt process (pid {holder}); wait for it to finish or "
                              "choose another output") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino  # not unlinked by a releasing holder meanwhile
        except FileNotFoundError:
            same = False
        if same:
            try:  # who holds it, for the "in use" message; a full disk must not stop the run here
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                pass
            return fd
        os.close(fd)


@contextmanager
def output_lock(output: str | Path) -> Iterator[Path]:
    """Hold the lock of `output` (a file or folder, existing or not) for the block: one maskrt writer per output.

    Re-entrant within a process. The lock file (``.maskrt-lock-NAME`` beside the output) is removed on release;
    parent folders created for it are removed again when they stay empty. Leftovers of killed writers of this output
    are removed once the lock is held (`clean_leftovers`)."""
    out = Path(output).resolve()
    with _held_guard:
        entry = _held.get(out)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        _writable_parent(out)
        created = []
        for folder in reversed([out.parent, *out.parent.parents]):
            if not folder.exists():
                created.append(folder)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = _acquire(out, output)
        except BaseException:
            _remove_empty(created)
            raise
        with _held_guard:
            _held[out] = entry = [fd, 1, created]
        clean_leftovers(out)
    try:
        yield out
    finally:
        with _held_guard:
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[out]
        if last:
            Path(_lock_path(out)).unlink(missing_ok=True)
            os.close(entry[0])
            _remove_empty(entry[2])


def _remove_empty(folders: Sequence[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


_LEFTOVER = re.compile(r"(?P<name>.+)-(?P<pid>\d+)-[A-Za-z0-9_]+(?:-old)?(?:\.tmp)?")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(output: str | Path) -> list[Path]:
    """Remove the temporary files and folders a killed maskrt writer left beside `output` (``.maskrt-staging-NAME-
    PID-*`` of a process no longer running, or not this one while this one holds the output's lock); one note each."""
    out = Path(output)
    if not out.parent.is_dir():
        return []
    removed = []
    holding = out.resolve() in _held
    for item in out.parent.glob(f"{STAGING_PREFIX}*"):
        match = _LEFTOVER.fullmatch(item.name[len(STAGING_PREFIX):])
        if not match or match["name"] != out.name:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or (not holding and _alive(pid)):
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
        log.warning("removed %s, left by an interrupted maskrt run (pid %d)", item, pid)
        removed.append(item)
    return removed


@contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Yields an empty temporary folder beside `final`; on success it replaces `final` (whose old content is
    removed), on any exception or interrupt it is deleted and `final` is left as it was. `final` is locked for the
    block, and a write the machine refuses is a MaskrtError naming `final`."""
    final = Path(final)
    with output_lock(final):
        staging = Path(tempfile.mkdtemp(prefix=staging_prefix(final.name), dir=final.parent))
        try:
            with write_faults(final):
                yield staging
                fsync_tree(staging)  # its files are on disk before the rename makes them the output
            staging.chmod(0o755)
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=staging_prefix(final.name), suffix="-old", dir=final.parent))
                old.rmdir()
                final.rename(old)
                staging.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
