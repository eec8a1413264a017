"""nms.cpu (the host build of the BatchedNMS kernel core) against torchvision on the CPU.

The reference is torchvision's own code: the candidates with score > score_threshold (fp32 compare), ordered by
descending score with ties by lower index, at most MAX_CANDIDATES of them, go through
torchvision.ops.boxes._batched_nms_vanilla -- the per-group path of torchvision.ops.batched_nms (its other path
offsets the boxes by group, which moves IoUs in the last bits) -- and the kept indices, ordered the same way, are
truncated to max_output_boxes. Index lists must be identical. Hypothesis draws integer-grid boxes (duplicates,
exact IoU ties such as 0.5, zero-area and inverted boxes), equal and NaN scores, fp16 scores, one to many groups,
batches of 1-3 and N from 0 to a few thousand. The number of cases is printed at the end of the module.
"""

from __future__ import annotations

import contextlib
import ctypes
import subprocess
import sys
import textwrap
from collections import defaultdict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.ops.boxes import _batched_nms_vanilla

from maskrt.plugins import nms

CASES = 1200
_stats: dict[str, int] = defaultdict(int)


@pytest.fixture(scope="module", autouse=True)
def host_library(request: pytest.FixtureRequest):
    """Reports the case counts of this module."""
    yield
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print(
            f"\nnms.cpu vs torchvision batched_nms: {_stats['cases']} hypothesis cases ({_stats['fp16']} fp16, "
            f"{_stats['images']} images, {_stats['boxes']} boxes, {_stats['kept']} kept, largest N {_stats['max_n']})",
            flush=True,
        )


def ordered(indices: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """`indices` by descending score, ties by lower index."""
    indices = indices.sort().values
    return indices[torch.sort(scores[indices], descending=True, stable=True).indices]


def reference(boxes, scores, groups, iou_threshold: float, score_threshold: float, max_output_boxes: int):
    """torchvision's batched_nms (per-group path) on the score-filtered candidates, as keep [B, K] / count [B]."""
    batch = boxes.shape[0]
    keep = torch.full((batch, max_output_boxes), -1, dtype=torch.int32)
    count = torch.zeros(batch, dtype=torch.int32)
    for b in range(batch):
        s = scores[b].float()
        candidates = ordered(torch.nonzero(s > score_threshold).flatten(), s)[: nms.MAX_CANDIDATES]
        if candidates.numel():
            kept = _batched_nms_vanilla(boxes[b][candidates], s[candidates], groups[b][candidates], iou_threshold)
            kept = ordered(candidates[kept], s)[:max_output_boxes]
        else:
            kept = candidates
        keep[b, : kept.numel()] = kept.int()
        count[b] = kept.numel()
    return keep, count


def check(boxes, scores, groups, iou: float, thr: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep, count = nms.cpu(boxes, scores, groups, iou_threshold=iou, score_threshold=thr, max_output_boxes=k)
    spec = nms.NMSSpec(iou, thr, k)  # the float32 thresholds the op uses
    ref_keep, ref_count = reference(boxes, scores, groups, spec.iou_threshold, spec.score_threshold, k)
    assert keep.dtype == count.dtype == torch.int32
    assert keep.shape == (boxes.shape[0], k) and count.shape == (boxes.shape[0],)
    assert torch.equal(count, ref_count), (count, ref_count)
    assert torch.equal(keep, ref_keep), (keep, ref_keep)
    return keep, count


# ---------------------------------------------------------------------------------------------------------------
# strategies

BOX_KINDS = ("grid", "grid", "float", "zero_area", "inverted", "duplicate", "nan")


@st.composite
def box_list(draw: st.DrawFn, n: int, grid: int) -> list[list[float]]:
    """`n` boxes of drawn kinds: integer grid boxes (exact IoUs like 0.5), float boxes, zero-area, inverted,
    duplicates of earlier boxes and the odd NaN coordinate."""
    out: list[list[float]] = []
    for _ in range(n):
        kind = draw(st.sampled_from(BOX_KINDS))
        if kind == "duplicate" and out:
            out.append(list(draw(st.sampled_from(out))))
            continue
        x1, y1 = draw(st.integers(0, grid)), draw(st.integers(0, grid))
        w, h = draw(st.integers(1, grid)), draw(st.integers(1, grid))
        box = [x1, y1, x1 + w, y1 + h]
        if kind == "float":
            box = [v + draw(st.floats(-0.5, 0.5, width=32)) for v in box]
        elif kind == "zero_area":  # x2 = x1, y2 = y1 or both
            axes = draw(st.sampled_from(((0,), (1,), (0, 1))))
            for axis in axes:
                box[axis + 2] = box[axis]
        elif kind == "inverted":
            box = [box[2], box[1], box[0], box[3]] if draw(st.booleans()) else [box[2], box[3], box[0], box[1]]
        elif kind == "nan" and draw(st.integers(0, 3)) == 0:
            box[draw(st.integers(0, 3))] = float("nan")
        out.append([float(v) for v in box])
    return out


def random_boxes(gen: torch.Generator, batch: int, n: int, grid: int) -> torch.Tensor:
    """[batch, n, 4] integer-grid boxes with the kinds of `box_list`: some zero-area, inverted, duplicated."""
    xy = torch.randint(0, grid, (batch, n, 2), generator=gen).float()
    wh = torch.randint(0, grid // 2 + 2, (batch, n, 2), generator=gen).float()
    boxes = torch.cat([xy, xy + wh], -1)
    kind = torch.randint(0, 8, (batch, n), generator=gen)
    boxes[kind == 0] = boxes[kind == 0][:, [2, 1, 0, 3]]  # inverted in x
    boxes[kind == 1] = boxes[kind == 1] + torch.rand(int((kind == 1).sum()), 4, generator=gen) - 0.5  # off-grid
    source = torch.randint(0, max(n, 1), (batch, n), generator=gen)
    duplicate = kind == 2
    boxes[duplicate] = torch.gather(boxes, 1, source[..., None].expand(-1, -1, 4))[duplicate]
    return boxes


SCORE_VALUES = (0.0, 0.05, 0.1, 0.5, 0.5, 0.7, 0.9, 1.0, -0.0, float("nan"))


@st.composite
def cases(draw: st.DrawFn) -> dict:
    batch = draw(st.integers(1, 3))
    size = draw(st.sampled_from(("empty", "one", "small", "small", "small", "medium", "large")))
    n = {"empty": 0, "one": 1, "small": draw(st.integers(2, 24)), "medium": draw(st.integers(25, 100)),
         "large": draw(st.integers(500, 2500))}[size]  # fmt: skip
    grid = draw(st.sampled_from((4, 8, 32, 256)))
    if size in ("medium", "large"):  # drawn element by element would be slow: a seeded random draw instead
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        boxes = random_boxes(gen, batch, n, grid)
        scores = torch.rand(batch, n, generator=gen)
        if draw(st.booleans()):
            scores = (scores * 8).floor() / 8  # many equal scores
        num_groups = draw(st.sampled_from((1, 3, 80, 400)))
        groups = torch.randint(0, num_groups, (batch, n), generator=gen, dtype=torch.int32)
    else:
        boxes = torch.tensor([draw(box_list(n, grid)) for _ in range(batch)], dtype=torch.float32).reshape(batch, n, 4)
        score = st.one_of(st.sampled_from(SCORE_VALUES), st.floats(-1.0, 2.0, width=32))
        scores = torch.tensor([[draw(score) for _ in range(n)] for _ in range(batch)]).reshape(batch, n)
        num_groups = draw(st.sampled_from((1, 1, 2, 5, max(n, 1))))
        group = st.integers(-2, num_groups - 3) if num_groups > 2 else st.integers(0, num_groups - 1)
        groups = torch.tensor([[draw(group) for _ in range(n)] for _ in range(batch)], dtype=torch.int32)
        groups = groups.reshape(batch, n)
    fp16 = draw(st.integers(0, 3)) == 0
    if fp16:
        scores = scores.half()
    iou = draw(st.one_of(st.sampled_from((0.0, 0.25, 0.5, 0.5, 0.7, 1.0)), st.floats(0.0, 1.0)))
    thr = draw(st.one_of(st.sampled_from((-0.5, 0.0, 0.05, 0.5)), st.floats(-1.0, 1.0)))
    k = draw(st.one_of(st.integers(0, n + 3), st.sampled_from((100, 1000))))
    return {"boxes": boxes, "scores": scores, "groups": groups, "iou": iou, "thr": thr, "k": k, "fp16": fp16}


@settings(
    max_examples=CASES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_matches_torchvision_batched_nms(case: dict) -> None:
    boxes = case["boxes"]
    _keep, count = check(boxes, case["scores"], case["groups"], case["iou"], case["thr"], case["k"])
    _stats["cases"] += 1
    _stats["fp16"] += int(case["fp16"])
    _stats["images"] += boxes.shape[0]
    _stats["boxes"] += boxes.shape[0] * boxes.shape[1]
    _stats["kept"] += int(count.sum())
    _stats["max_n"] = max(_stats["max_n"], boxes.shape[1])


# ---------------------------------------------------------------------------------------------------------------
# targeted cases


def _random(batch: int, n: int, seed: int, size: float = 600.0, groups: int = 1):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, n, 2, generator=gen) * size
    wh = torch.rand(batch, n, 2, generator=gen) * size / 4 + 1
    scores = torch.rand(batch, n, generator=gen)
    return torch.cat([xy, xy + wh], -1), scores, torch.randint(0, groups, (batch, n), generator=gen, dtype=torch.int32)


def test_iou_exactly_at_the_threshold_is_not_suppressed() -> None:
    boxes = torch.tensor([[[0, 0, 4, 4], [0, 0, 4, 2], [0, 0, 4, 2.5]]], dtype=torch.float32)  # IoU 0.5, 0.625
    scores = torch.tensor([[0.9, 0.8, 0.7]])
    keep, count = check(boxes, scores, torch.zeros(1, 3, dtype=torch.int32), 0.5, 0.0, 3)
    assert keep.tolist() == [[0, 1, -1]] and count.tolist() == [2]


def test_score_threshold_is_strict_and_nan_scores_are_never_kept() -> None:
    boxes = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7]]], dtype=torch.float32)
    scores = torch.tensor([[0.05, float("nan"), 0.0500001, float("inf")]])
    keep, count = check(boxes, scores, torch.zeros(1, 4, dtype=torch.int32), 0.5, 0.05, 4)
    assert keep.tolist() == [[3, 2, -1, -1]] and count.tolist() == [2]


def test_nan_box_is_kept_and_suppresses_nothing() -> None:
    nan = float("nan")
    boxes = torch.tensor([[[0, 0, 10, 10], [nan, 0, 10, 10], [0, 0, 10, 10], [0, nan, nan, nan]]])
    scores = torch.tensor([[0.5, 0.9, 0.4, 0.8]])
    keep, count = check(boxes, scores, torch.zeros(1, 4, dtype=torch.int32), 0.5, 0.0, 4)
    assert keep.tolist() == [[1, 3, 0, -1]] and count.tolist() == [3]  # box 2 is suppressed by box 0 only


def test_equal_scores_keep_the_lower_index_and_groups_are_independent() -> None:
    boxes = torch.tensor([[[0, 0, 10, 10]] * 4], dtype=torch.float32)
    scores = torch.full((1, 4), 0.5).half()
    groups = torch.tensor([[7, 3, 7, 3]], dtype=torch.int32)
    keep, count = check(boxes, scores, groups, 0.5, 0.0, 4)
    assert keep.tolist() == [[0, 1, -1, -1]] and count.tolist() == [2]


def test_empty_inputs_give_fixed_shapes() -> None:
    for batch, n, k in ((2, 0, 5), (0, 7, 3), (3, 4, 0)):
        boxes, scores, groups = _random(batch, n, 0)
        keep, count = nms.cpu(boxes, scores, groups, iou_threshold=0.5, score_threshold=0.0, max_output_boxes=k)
        assert keep.shape == (batch, k) and count.shape == (batch,)
        assert (keep == -1).all() and (count == 0 if n == 0 or k == 0 else count > 0).all()


def test_more_candidates_than_the_cap_keeps_the_best() -> None:
    """Above MAX_CANDIDATES candidates only the best MAX_CANDIDATES enter the NMS (a pre-NMS top-k)."""
    n = nms.MAX_CANDIDATES + 808
    boxes, scores, groups = _random(1, n, 5, size=3000.0, groups=3)
    scores[0, 100:110] = 0.0  # low scores: outside the cap, so these isolated boxes must not be kept
    boxes[0, 100:110] = torch.arange(10).float()[:, None] * 10 + torch.tensor([-1e5, -1e5, -1e5 + 5, -1e5 + 5])
    keep, count = check(boxes, scores, groups, 0.5, -0.5, n)
    assert not set(range(100, 110)) & set(keep[0, : count[0]].tolist())
    assert count[0] < nms.MAX_CANDIDATES


def test_box_head_case_is_exact() -> None:
    """1000 proposals x 90 classes with 300 candidates above the threshold (the box head's case): exact. Its speed
    is measured by scripts/bench_plugin.py, never asserted in a test."""
    boxes, scores, groups = _random(2, 90_000, 7, groups=90)
    scores = torch.where(torch.rand(2, 90_000, generator=torch.Generator().manual_seed(1)) < 300 / 90_000, scores, -1.0)
    check(boxes, scores, groups, 0.5, 0.05, 100)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"iou_threshold": -0.1}, "iou_threshold must be in"),
        ({"iou_threshold": 1.5}, "iou_threshold must be in"),
        ({"iou_threshold": float("nan")}, "iou_threshold must be in"),
        ({"score_threshold": float("inf")}, "score_threshold must be finite"),
        ({"score_threshold": float("nan")}, "score_threshold must be finite"),
        ({"max_output_boxes": -1}, "max_output_boxes"),
        ({"max_output_boxes": 2.0}, "max_output_boxes"),
    ],
)
def test_invalid_attributes_raise_value_error(kwargs: dict, message: str) -> None:
    args = {"iou_threshold": 0.5, "score_threshold": 0.05, "max_output_boxes": 10, **kwargs}
    boxes, scores, groups = _random(1, 4, 0)
    with pytest.raises(ValueError, match=message):
        nms.cpu(boxes, scores, groups, **args)


def test_host_entry_point_rejects_invalid_attributes() -> None:
    """The C entry point checks the attributes itself (same checks as the plugin creator)."""
    from maskrt.plugins._library import host_library

    fn = host_library().maskrt_nms_host
    err = ctypes.create_string_buffer(256)
    for iou, thr, k, message in ((1.5, 0.0, 1, b"iou_threshold"), (0.5, float("nan"), 1, b"score_threshold"),
                                 (0.5, 0.0, -1, b"max_output_boxes")):  # fmt: skip
        status = fn(boxes=None, scores=None, scoreType=0, groups=None, batch=1, numBoxes=0, iouThreshold=iou,
                    scoreThreshold=thr, maxOutputBoxes=k, keep=None, count=None, threads=0, err=err,
                    errLen=256)  # fmt: skip
        assert status == -1 and message in err.value


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda b, s, g: (b[0], s, g), r"boxes must be a \[B, N, 4\]"),
        (lambda b, s, g: (b.double(), s, g), "float32 tensor"),
        (lambda b, s, g: (b, s[:, :2], g), r"scores must be a \[B, N\]"),
        (lambda b, s, g: (b, s.double(), g), "float32 or float16"),
        (lambda b, s, g: (b, s, g.long()), "int32"),
        (lambda b, s, g: (b, s, g[:, :1]), r"groups must be a \[B, N\]"),
    ],
)
def test_invalid_tensors_raise_value_error(make, message: str) -> None:
    boxes, scores, groups = make(*_random(2, 4, 0))
    with pytest.raises(ValueError, match=message):
        nms.cpu(boxes, scores, groups, iou_threshold=0.5, score_threshold=0.0, max_output_boxes=3)


GUARDED_SCRIPT = textwrap.dedent(
    """
    import ctypes, mmap
    import torch
    from maskrt.plugins import nms

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    PAGE = mmap.PAGESIZE
    keep_alive = []

    def guarded(values, at_end):
        # A copy of `values` whose first (at_end=False) or last (at_end=True) byte touches a PROT_NONE page.
        nbytes = values.numel() * values.element_size()
        pages = max(1, -(-nbytes // PAGE))
        mm = mmap.mmap(-1, (pages + 2) * PAGE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        for guard in (base, base + (pages + 1) * PAGE):
            assert libc.mprotect(guard, PAGE, 0) == 0
        offset = PAGE + (pages * PAGE - nbytes if at_end else 0)
        t = torch.frombuffer(mm, dtype=values.dtype, count=values.numel(), offset=offset).view(values.shape)
        t.copy_(values)
        keep_alive.append(mm)
        return t

    nan, inf = float("nan"), float("inf")
    calls = 0
    for at_end in (True, False):
        for n in (1, 2, 7, 64, 65, 300):
            gen = torch.Generator().manual_seed(n)
            boxes = torch.rand(2, n, 4, generator=gen) * 50
            boxes[0, :: 3] = torch.tensor([nan, -inf, inf, 3e38])
            scores = torch.rand(2, n, generator=gen)
            scores[1, :: 2] = nan
            groups = torch.randint(-5, 5, (2, n), generator=gen, dtype=torch.int32)
            groups[0, ::4] = 2**31 - 1
            for dtype in (torch.float32, torch.float16):
                args = [guarded(boxes, at_end), guarded(scores.to(dtype), at_end), guarded(groups, at_end)]
                for k in (0, 1, n, n + 40):
                    nms.cpu(*args, iou_threshold=0.3, score_threshold=-1.0, max_output_boxes=k)
                    calls += 1
    print(calls)
    """
)


def test_no_out_of_bounds_access_for_any_input() -> None:
    """boxes, scores and groups placed against PROT_NONE pages (at their end, then their start), with NaN / inf
    boxes and scores: no fault. In a subprocess, so that a fault fails this test instead of killing pytest."""
    proc = subprocess.run(
        [sys.executable, "-c", GUARDED_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"exit {proc.returncode} (negative = killed by a signal):\n{proc.stderr[-2000:]}"
    assert int(proc.stdout.split()[-1]) == 2 * 6 * 2 * 4
