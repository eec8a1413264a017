"""What every backend is (the `Backend` protocol) and runs (`run_in_batches`: a static-batch graph in chunks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from maskrt.runtime.postprocess import RawOutput


class Backend(Protocol):
    """What the Predictor runs: a batch in, one RawOutput per image out."""

    name: str

    def run(self, canvas: torch.Tensor, sizes: torch.Tensor) -> list[RawOutput]:
        """canvas [B, 3, H, W] float32 and sizes [B, 2] int64 (resized h, w) -> B fixed-shape outputs."""
        ...

    def close(self) -> None:
        """Release the backend's resources (sessions, engines); the backend is unusable afterwards."""
        ...



def run_in_batches(canvas: torch.Tensor, sizes: torch.Tensor, batch: int, dynamic: bool,
                   run: Callable[[np.ndarray, np.ndarray], Sequence[np.ndarray]]) -> list[RawOutput]:
    """A deploy graph's outputs per image: the whole batch at once on a dynamic-batch graph, else in chunks of the
    static `batch` (the last padded with empty images whose outputs are dropped). `run(images, sizes)` returns the
    graph's (num_detections, boxes, scores, labels, masks)."""
    n = canvas.shape[0]
    step = n if dynamic else batch
    outs: list[RawOutput] = []
    for start in range(0, n, step):
        images = canvas[start:start + step].numpy()
        sz = sizes[start:start + step].numpy()
        real = images.shape[0]
        if real < step:
            images = np.concatenate([images, np.zeros((step - real, *images.shape[1:]), images.dtype)])
            sz = np.concatenate([sz, np.tile(sz[:1], (step - real, 1))])
        num, boxes, scores, labels, masks = run(images, sz)
        for i in range(real):
            outs.append(RawOutput(num=int(num[i]), boxes=np.array(boxes[i]), scores=np.array(scores[i]),
                                  labels=labels[i].astype(np.int64), masks=np.array(masks[i])))
    return outs
