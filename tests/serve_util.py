"""Helpers of the serving tests: the serving venv, free ports, process trees, a `maskrt serve` process."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def serve_python() -> Path:
    """The serving venv's python: MASKRT_SERVE_PYTHON, else REPO/.venv-serve. `make test` sets the variable, so
    there a missing venv fails; a plain `pytest` without one skips with the reason."""
    configured = os.environ.get("MASKRT_SERVE_PYTHON")
    path = Path(configured) if configured else REPO / ".venv-serve" / "bin" / "python"
    if not path.exists():
        if configured:
            pytest.fail(f"MASKRT_SERVE_PYTHON={configured} does not exist (make serve-env makes it)")
        pytest.skip("no serving venv: `make serve-env` makes .venv-serve (PyTriton), `make test` does it itself")
    return path


def free_ports(count: int) -> int:
    """A port P with P..P+count-1 all free on loopback."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            socks = []
            for p in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free ports")


def tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def rss_mib(pids: list[int]) -> float:
    """Resident memory of processes, MiB."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def huge_png(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG of width x height, built row by row (never the whole image in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp, row, parts = zlib.compressobj(9), b"\x00" * (1 + 3 * width), []
    for _ in range(height):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


class Server:
    """A `maskrt serve` process and how to reach it."""

    def __init__(self, proc: subprocess.Popen, port: int, lines: list[str]) -> None:
        self.proc, self.port, self.lines = proc, port, lines
        self.http, self.grpc = f"http://127.0.0.1:{port}", f"grpc://127.0.0.1:{port + 1}"
        self.metrics = f"http://127.0.0.1:{port + 2}/metrics"


def write_images(folder: Path) -> Path:
    """Three seeded random images of different sizes and formats (PNG, JPEG)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    gen = np.random.default_rng(0)
    for name, (h, w) in (("a.png", (120, 160)), ("b.jpg", (96, 96)), ("c.png", (200, 100))):
        Image.fromarray(gen.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def start_server(args: list[str], port: int, timeout_s: float = 180) -> Server:
    """`maskrt serve ARGS --port PORT` from the serving venv, once it prints that it serves (fails otherwise)."""
    python = serve_python()
    proc = subprocess.Popen([str(python), "-m", "maskrt.cli", "serve", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("serving "):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not ready.is_set() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not ready.is_set():
        proc.kill()
        pytest.fail("maskrt serve did not come up:\n" + "".join(lines[-40:]))
    return Server(proc, port, lines)


def kill_tree(server: Server) -> None:
    """Leave nothing behind (a test that should have stopped the server did not)."""
    if server.proc.poll() is None:
        pids = tree(server.proc.pid)
        os.killpg(server.proc.pid, signal.SIGKILL)
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)
        server.proc.wait(30)


def stop_and_check(server: Server) -> None:
    """Ctrl-C (SIGINT): the server exits 0 saying so, no process of its tree is left, its ports are free."""
    pids = tree(server.proc.pid)
    os.kill(server.proc.pid, signal.SIGINT)
    code = server.proc.wait(60)
    assert code == 0, "".join(server.lines[-30:])
    assert "stopped" in "".join(server.lines[-3:])
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if alive(p)], f"processes left behind: {[p for p in pids if alive(p)]}"
    for port in range(server.port, server.port + 3):
        with socket.socket() as s:  # free again: a restarted server can listen there (clients' TIME_WAIT aside)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
