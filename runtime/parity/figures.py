"""Figures for the parity report: where a deployed (candidate) model drifts from the reference.

`side_by_side` draws both models' detections on one image next to each other (the reference detections the
candidate missed and the candidate's extra detections outlined in white and tagged), `match_plot` summarises the matched
pairs (score vs score, box IoU histogram) and `pick_worst` chooses which images are worth showing. Plots use
matplotlib's Agg canvas directly (no pyplot, no global backend state), so they work headless and in threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from maskrt.runtime.postprocess import Detections
from maskrt.runtime.visualize import draw

_TITLE_HEIGHT = 20  # pixels of the title strip above each panel
_GAP = 4  # pixels between the two panels
_EMPTY = "no matched detections"
_MARK_WIDTH = 3  # pixels of the outline around a missed or extra detection


def _panel(image: np.ndarray, dets: Detections, class_names: list[str], title: str, max_side: int,
           marked: Sequence[int] = (), tag: str = "") -> Image.Image:
    """One overlay, downscaled so its longest side is at most `max_side`, under a title strip; the detections
    `marked` get a white outline and `tag`."""
    im = draw(image, dets, class_names)
    pen = ImageDraw.Draw(im)
    for k in marked:
        x1, y1, x2, y2 = (float(v) for v in dets.boxes[k])
        pen.rectangle([x1 - 2, y1 - 2, x2 + 2, y2 + 2], outline=(255, 255, 255), width=_MARK_WIDTH)
        ty = min(max(0.0, y2 + 3), im.height - 11)
        pen.rectangle(pen.textbbox((x1, ty), tag), fill=(255, 255, 255))
        pen.text((x1, ty), tag, fill=(0, 0, 0))
    scale = min(1.0, max_side / max(im.size))
    if scale < 1.0:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    panel = Image.new("RGB", (im.width, im.height + _TITLE_HEIGHT), (0, 0, 0))
    panel.paste(im, (0, _TITLE_HEIGHT))
    n = len(dets)
    note = f", {len(marked)} {tag}" if marked else ""
    ImageDraw.Draw(panel).text((4, 4), f"{title}: {n} detection{'' if n == 1 else 's'}{note}", fill=(255, 255, 255))
    return panel


def side_by_side(image: np.ndarray, reference: Detections, candidate: Detections, class_names: list[str],
                 path: Path, *, titles: tuple[str, str] = ("reference", "candidate"), max_side: int = 640,
                 missed: Sequence[int] = (), extra: Sequence[int] = ()) -> Path:
    """Write one PNG with the reference overlay (left) and the candidate overlay (right) of `image` (HxWx3 uint8).

    Each panel has a title strip with its title and number of detections, and is downscaled (aspect kept) so that
    its longest side is at most `max_side`. `missed` (indices into `reference`) and `extra` (into `candidate`) are
    outlined in white and tagged "missed" / "extra". Returns `path`.
    """
    left = _panel(image, reference, class_names, titles[0], max_side, missed, "missed")
    right = _panel(image, candidate, class_names, titles[1], max_side, extra, "extra")
    out = Image.new("RGB", (left.width + _GAP + right.width, max(left.height, right.height)), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + _GAP, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path, format="PNG")
    return path


def match_plot(reference_scores: Sequence[float], candidate_scores: Sequence[float], box_ious: Sequence[float],
               path: Path, *, title: str = "") -> Path:
    """Write one PNG summarising matched detection pairs. Returns `path`.

    Left: candidate score vs reference score with the y = x line. Right: histogram of the matched box IoUs with
    the median marked. Empty inputs give panels that say so.
    """
    ref = np.asarray(reference_scores, dtype=np.float64).ravel()
    cand = np.asarray(candidate_scores, dtype=np.float64).ravel()
    ious = np.asarray(box_ious, dtype=np.float64).ravel()
    ious = ious[np.isfinite(ious)]
    if len(ref) != len(cand):
        raise ValueError(f"{len(ref)} reference scores but {len(cand)} candidate scores")

    fig = Figure(figsize=(9, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_score, ax_iou = fig.subplots(1, 2)

    ax_score.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="y = x")
    if len(ref):
        ax_score.scatter(ref, cand, s=10, alpha=0.6, label=f"{len(ref)} matched")
        ax_score.legend(loc="upper left", fontsize=8)
    else:
        ax_score.text(0.5, 0.5, _EMPTY, ha="center", va="center", transform=ax_score.transAxes, backgroundcolor="white")
    ax_score.set(xlim=(0, 1), ylim=(0, 1), xlabel="reference score", ylabel="candidate score",
                 title="matched scores")
    ax_score.set_aspect("equal")

    if len(ious):
        low = min(0.5, np.floor(ious.min() * 10) / 10)
        median = float(np.median(ious))
        ax_iou.hist(ious, bins=30, range=(low, 1.0), label=f"n = {len(ious)}")
        ax_iou.axvline(median, color="red", linewidth=1, label=f"median {median:.3f}")
        ax_iou.set_xlim(low, 1.0)
        ax_iou.legend(loc="upper left", fontsize=8)
    else:
        ax_iou.text(0.5, 0.5, _EMPTY, ha="center", va="center", transform=ax_iou.transAxes)
    ax_iou.set(xlabel="box IoU", ylabel="pairs", title="matched box IoU")

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    fig.clear()
    return path


def pick_worst(per_image: list[dict], k: int = 4) -> list[int]:
    """Indices of the min(k, len(per_image)) images with the largest reference/candidate differences, worst first.

    Ranked by missed reference detections plus extra candidate detections (rows' "missed" and "extra"), then by
    1 - box_iou_min, then by score_diff_max (None counts as no difference). Images with no detection above the floor
    on either side come last; ties keep the original order.
    """

    def key(i: int) -> tuple[bool, int, float, float]:
        row = per_image[i]
        empty = row["reference_above_floor"] == 0 and row["candidate_above_floor"] == 0
        missed = row["missed"] + row["extra"]
        iou_gap = 0.0 if row["box_iou_min"] is None else 1.0 - row["box_iou_min"]
        score_gap = 0.0 if row["score_diff_max"] is None else row["score_diff_max"]
        return empty, -missed, -iou_gap, -score_gap

    return sorted(range(len(per_image)), key=key)[:max(0, k)]
