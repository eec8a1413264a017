"""Writing outputs without losing anything: checked up front, staged under a temporary name, renamed at the end.

Rules every command follows (README, "Outputs"):
- an output path is checked before any work: an existing file where a folder is expected (or the reverse), an
  unwritable location, or a non-empty folder / existing file without ``force`` is a one-line error;
- a folder of outputs is written into a hidden temporary sibling and renamed into place when complete, so that an
  interrupt (Ctrl-C, SIGTERM) or a crash leaves either the previous folder or the new one, never a mix, and no
  temporary files;
- an output never overwrites an input (``check_not_input``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from maskrt.core.errors import MaskrtError

STAGING_PREFIX = ".maskrt-staging-"


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
        if any(path.iterdir()) and not force:
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


def check_not_input(output: str | Path, inputs: Iterable[str | Path]) -> None:
    """MaskrtError when `output` is one of `inputs` (the same file, whatever the spelling)."""
    out = Path(output).resolve()
    for item in inputs:
        if Path(item).resolve() == out:
            raise MaskrtError(f"{output}: is an input; choose another output")


@contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Yields an empty temporary folder beside `final`; on success it replaces `final` (whose old content is
    removed), on any exception or interrupt it is deleted and `final` is left as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{final.name}-", dir=final.parent))
    try:
        yield staging
        staging.chmod(0o755)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{final.name}-old-", dir=final.parent))
            old.rmdir()
            final.rename(old)
            staging.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
