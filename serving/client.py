"""A client of a served maskrt model (`maskrt serve`, or Triton on a `maskrt triton` repository), on tritonclient.

    from maskrt.serving.client import Client
    with Client("http://127.0.0.1:8000") as client:
        results = client.detect([open("a.jpg", "rb").read()])[0]  # COCO results of a.jpg

`http://HOST:PORT` talks HTTP/REST, `grpc://HOST:PORT` gRPC (Triton's KServe v2 protocols).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse

import numpy as np

from maskrt.core.defaults import DEFAULT_MODEL_NAME
from maskrt.core.errors import MaskrtError
from maskrt.serving.protocol import INPUT, OUTPUT, decode_results


class ServerError(MaskrtError):
    """The server answered a request with an error (its message is Triton's last line)."""


def error_message(exc: Exception) -> str:
    """Triton's error text without the traceback PyTriton embeds: maskrt's own message where there is one."""
    text = exc.message() if callable(getattr(exc, "message", None)) else str(exc)  # type: ignore[attr-defined]
    found = re.findall(r"MaskrtError: (.+)", str(text))
    if found:
        return found[-1].strip()
    return str(text).split("Traceback (most recent call last)")[0].strip() or type(exc).__name__


class Client:
    """Sends encoded images to a served maskrt model; one instance per thread (tritonclient's own rule)."""

    def __init__(self, url: str, model: str = DEFAULT_MODEL_NAME, timeout_s: float = 120.0) -> None:
        try:
            import tritonclient.grpc as grpc_client
            import tritonclient.http as http_client
        except ImportError:
            raise MaskrtError("talking to a server needs tritonclient: pip install 'maskrt[client]'") from None
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "grpc") or not parsed.hostname or not parsed.port:
            raise MaskrtError(f"{url}: the server URL must be http://HOST:PORT or grpc://HOST:PORT")
        self.url, self.model, self.protocol = url, model, parsed.scheme
        self._lib = http_client if parsed.scheme == "http" else grpc_client
        address = f"{parsed.hostname}:{parsed.port}"
        if parsed.scheme == "http":
            self._client = http_client.InferenceServerClient(address, connection_timeout=timeout_s,
                                                             network_timeout=timeout_s)
        else:
            self._client = grpc_client.InferenceServerClient(address)
        self.timeout_s = timeout_s

    def ready(self) -> bool:
        """Whether the server and the model are ready (False while unreachable)."""
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except Exception:  # noqa: BLE001 - unreachable, refused, reset: not ready
            return False

    def infer_raw(self, inputs: list) -> np.ndarray:
        """Send prepared tritonclient inputs; the `detections` tensor, ServerError on an error response."""
        from tritonclient.utils import InferenceServerException

        try:
            kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            result = self._client.infer(self.model, inputs, outputs=[self._lib.InferRequestedOutput(OUTPUT)],
                                        **kwargs)
        except InferenceServerException as exc:
            raise ServerError(f"{self.url}: {error_message(exc)}") from None
        return result.as_numpy(OUTPUT)

    def detect(self, images: list[bytes]) -> list[list[dict[str, Any]]]:
        """COCO results of each encoded image, sent as one request."""
        array = np.array([[image] for image in images], dtype=np.object_).reshape(len(images), 1)
        tensor = self._lib.InferInput(INPUT, list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array)
        out = self.infer_raw([tensor])
        return [decode_results(element) for element in out.reshape(-1)]

    def statistics(self) -> dict[str, Any]:
        """Triton's inference statistics of the model (counts and cumulative nanoseconds per stage)."""
        if self.protocol == "http":
            stats = self._client.get_inference_statistics(self.model)
        else:
            stats = self._client.get_inference_statistics(self.model, as_json=True)
        return stats["model_stats"][0]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
