"""File helpers shared by every stage: content hashes and JSON documents read with one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from maskrt.core.errors import MaskrtError


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


def write_json(path: str | Path, document: Any) -> None:
    """Write a JSON document atomically (temporary file in the same folder, then rename)."""
    write_atomic(path, (json.dumps(document, indent=2) + "\n").encode())


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes atomically: a temporary file in the same folder, renamed over `path` when complete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
