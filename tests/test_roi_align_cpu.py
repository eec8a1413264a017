"""roi_align.cpu (the host build of the MultiLevelRoIAlign kernel core) against torchvision on the CPU.

Property-based: hypothesis draws pyramids, batches and RoIs of every kind the contract names (partly/wholly outside,
zero width or height, sub-pixel, larger than the image, sqrt(area) within 1e-3 of the FPN level boundaries) and the
reference is torchvision's real code: ops.roi_align for one level, ops.MultiScaleRoIAlign (with image_shapes) for
P2-P5, and torchvision's LevelMapper + roi_align for aligned multi-level pooling (which MultiScaleRoIAlign lacks).
The number of cases and the worst errors are printed at the end of the module.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import textwrap
from collections import defaultdict

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.ops.poolers import LevelMapper

FP32_TOL = 1e-5
FP16_TOL = 1e-2
CASES_PER_TEST = 1100  # two property tests -> >= 2200 generated cases per run
OUTPUT_SIZES = [(7, 7), (14, 14), (3, 5), (5, 3), (1, 1), (1, 7), (9, 5)]
LEVEL_BOUNDARIES = (112.0, 224.0, 448.0)

_stats: dict[str, float] = defaultdict(float)


@pytest.fixture(scope="module", autouse=True)
def host_library(request: pytest.FixtureRequest):
    """Reports the case counts and worst errors of this module."""
    yield
    # Printed past pytest's output capture, so that it shows in every run (not only with -s or on failure).
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print(
            f"\nroi_align.cpu vs torchvision: {int(_stats['cases'])} hypothesis cases ({int(_stats['cases_fp16'])} "
            f"fp16, {int(_stats['rois'])} RoIs); worst max-abs error fp32 {_stats['worst_fp32']:.3g} "
            f"(tol {FP32_TOL}), fp16 {_stats['worst_fp16']:.3g} (tol {FP16_TOL})",
            flush=True,
        )


def _record(err: float, fp16: bool, rois: int) -> None:
    _stats["cases"] += 1
    _stats["rois"] += rois
    if fp16:
        _stats["cases_fp16"] += 1
        _stats["worst_fp16"] = max(_stats["worst_fp16"], err)
    else:
        _stats["worst_fp32"] = max(_stats["worst_fp32"], err)


# ---------------------------------------------------------------------------------------------------------------
# strategies

BOX_KINDS = ("inside", "partly_outside", "wholly_outside", "zero_size", "sub_pixel", "larger_than_image",
             "level_boundary", "inverted")  # fmt: skip


@st.composite
def boxes(draw: st.DrawFn, img_h: int, img_w: int, count: int) -> list[list[float]]:
    """`count` boxes (x1, y1, x2, y2) in image pixels, each of a drawn kind."""
    unit = st.floats(0.0, 1.0)
    out = []
    for _ in range(count):
        kind = draw(st.sampled_from(BOX_KINDS))
        u = [draw(unit) for _ in range(4)]
        if kind == "inside":
            x1, y1 = u[0] * img_w * 0.9, u[1] * img_h * 0.9
            x2, y2 = x1 + u[2] * (img_w - x1), y1 + u[3] * (img_h - y1)
        elif kind == "partly_outside":
            x1, y1 = -0.3 * img_w + u[0] * img_w, -0.3 * img_h + u[1] * img_h
            x2, y2 = x1 + 0.2 * img_w + u[2] * img_w, y1 + 0.2 * img_h + u[3] * img_h
        elif kind == "wholly_outside":
            side = draw(st.sampled_from(("left", "right", "above", "below")))
            w, h = 1 + u[2] * img_w, 1 + u[3] * img_h
            x1 = {"left": -w - 2 - u[0] * 50, "right": img_w + 2 + u[0] * 50}.get(side, u[0] * img_w)
            y1 = {"above": -h - 2 - u[1] * 50, "below": img_h + 2 + u[1] * 50}.get(side, u[1] * img_h)
            x2, y2 = x1 + w, y1 + h
        elif kind == "zero_size":
            x1, y1 = u[0] * img_w, u[1] * img_h
            x2 = x1 if draw(st.booleans()) else x1 + u[2] * img_w
            y2 = y1 if x2 != x1 or draw(st.booleans()) else y1 + u[3] * img_h
        elif kind == "sub_pixel":
            x1, y1 = u[0] * img_w, u[1] * img_h
            x2, y2 = x1 + u[2] * 1.5, y1 + u[3] * 1.5
        elif kind == "larger_than_image":
            x1, y1 = -u[0] * 2 * img_w, -u[1] * 2 * img_h
            x2, y2 = img_w * (1 + u[2] * 2), img_h * (1 + u[3] * 2)
        elif kind == "level_boundary":
            size = draw(st.sampled_from(LEVEL_BOUNDARIES)) + draw(st.floats(-1e-3, 1e-3))
            aspect = 0.5 + 1.5 * u[2]
            w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
            x1, y1 = (u[0] - 0.5) * img_w, (u[1] - 0.5) * img_h
            x2, y2 = x1 + w, y1 + h
        else:  # inverted: x2 < x1 and/or y2 < y1
            x1, y1 = u[0] * img_w, u[1] * img_h
            x2 = x1 - u[2] * 20 if draw(st.booleans()) else x1 + u[2] * 20
            y2 = y1 - u[3] * 20
        out.append([x1, y1, x2, y2])
    return out


@st.composite
def cases(draw: st.DrawFn, multi_level: bool) -> dict:
    num_levels = draw(st.integers(2, 4)) if multi_level else 1
    first_level = draw(st.integers(2, 3)) if multi_level else draw(st.integers(0, 4))
    stride = 2 ** (first_level + num_levels - 1)
    img_h = stride * draw(st.integers(1, max(1, 320 // stride)))
    img_w = stride * draw(st.integers(1, max(1, 320 // stride)))
    batch = draw(st.integers(1, 3))
    per_image = [draw(st.integers(0, 5)) for _ in range(batch)]
    num_rois = max(per_image)  # the op takes [B, R, 4]: pad shorter images with more boxes
    return {
        "levels": [first_level + i for i in range(num_levels)],
        "img": (img_h, img_w),
        "batch": batch,
        "channels": draw(st.integers(1, 3)),
        "boxes": [draw(boxes(img_h, img_w, num_rois)) for _ in range(batch)],
        "output_size": draw(st.sampled_from(OUTPUT_SIZES)),
        "sampling_ratio": draw(st.sampled_from((0, 1, 2, 3))),
        "aligned": draw(st.booleans()) if not multi_level else draw(st.sampled_from((False, False, True))),
        "fp16": draw(st.sampled_from((False, False, False, True))),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


# ---------------------------------------------------------------------------------------------------------------
# reference and check


def _make_inputs(case: dict) -> tuple[list[torch.Tensor], torch.Tensor, list[float]]:
    gen = torch.Generator().manual_seed(case["seed"])
    img_h, img_w = case["img"]
    scales = [2.0**-lvl for lvl in case["levels"]]
    feats = [
        torch.randn(case["batch"], case["channels"], int(img_h * s), int(img_w * s), generator=gen) for s in scales
    ]
    if case["fp16"]:
        feats = [f.half() for f in feats]
    rois = torch.tensor(np.asarray(case["boxes"], dtype=np.float32).reshape(case["batch"], -1, 4))
    return feats, rois, scales


def _reference(feats: list[torch.Tensor], rois: torch.Tensor, scales: list[float], case: dict) -> torch.Tensor:
    """torchvision's result in fp32, as [B, R, C, oh, ow]."""
    feats = [f.float() for f in feats]
    batch, num_rois = rois.shape[:2]
    size, ratio, aligned = case["output_size"], case["sampling_ratio"], case["aligned"]
    # Outside torchvision's domain: an aligned RoI with x2 < x1 or y2 < y1 and an adaptive grid has a negative
    # sample count (torchvision's CPU kernel raises). The op defines it as no sample, i.e. zeros.
    scaled = rois[..., 2:] - rois[..., :2]
    undefined = (scaled < 0).any(-1) if (aligned and ratio <= 0) else torch.zeros(batch, num_rois, dtype=torch.bool)
    rois = torch.where(undefined[..., None], torch.zeros(4), rois)
    boxes = list(rois.unbind(0))
    if len(feats) == 1:
        out = torchvision.ops.roi_align(feats[0], boxes, size, scales[0], ratio, aligned)
    elif not aligned:
        pooler = torchvision.ops.MultiScaleRoIAlign([str(i) for i in range(len(feats))], size, ratio)
        out = pooler({str(i): f for i, f in enumerate(feats)}, boxes, [case["img"]] * batch)
        assert pooler.scales == scales  # torchvision inferred the same pyramid from image_shapes
    else:
        levels = case["levels"]
        mapper = LevelMapper(levels[0], levels[-1])
        which = mapper(boxes)
        flat = torch.cat([torch.full((num_rois, 1), float(b)) for b in range(batch)])
        flat = torch.cat([flat, rois.reshape(-1, 4)], dim=1)
        out = torch.zeros(batch * num_rois, feats[0].shape[1], *size)
        for i, (f, s) in enumerate(zip(feats, scales, strict=True)):
            idx = torch.where(which == i)[0]
            out[idx] = torchvision.ops.roi_align(f, flat[idx], size, s, ratio, aligned)
    out = out.reshape(batch, num_rois, *out.shape[1:])
    out[undefined] = 0.0
    return out


def _check_case(case: dict) -> None:
    feats, rois, scales = _make_inputs(case)
    from maskrt.plugins import roi_align

    out = roi_align.cpu(
        feats, rois, output_size=case["output_size"], spatial_scales=scales,
        sampling_ratio=case["sampling_ratio"], aligned=case["aligned"],
    )  # fmt: skip
    ref = _reference(feats, rois, scales, case)
    assert out.dtype == feats[0].dtype
    assert out.shape == ref.shape
    err = (out.float() - ref).abs().max().item() if ref.numel() else 0.0
    _record(err, case["fp16"], rois.shape[0] * rois.shape[1])
    tol = FP16_TOL if case["fp16"] else FP32_TOL
    assert err <= tol, f"max abs error {err} > {tol}"


_settings = settings(
    max_examples=CASES_PER_TEST,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_settings
@given(case=cases(multi_level=False))
def test_single_level_matches_torchvision_roi_align(case: dict) -> None:
    _check_case(case)


@_settings
@given(case=cases(multi_level=True))
def test_multi_level_matches_torchvision_multiscale_roi_align(case: dict) -> None:
    _check_case(case)


# ---------------------------------------------------------------------------------------------------------------
# targeted cases

P2_P5 = (0.25, 0.125, 0.0625, 0.03125)


def _pyramid(batch: int = 1, channels: int = 2, size: int = 64, dtype=torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(batch, channels, size // 2**i, size // 2**i, generator=gen).to(dtype) for i in range(4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("levels", [1, 4])
def test_non_finite_rois_give_zeros(dtype: torch.dtype, levels: int) -> None:
    nan, inf = float("nan"), float("inf")
    bad = [[nan, 0, 10, 10], [0, 0, inf, 10], [-inf, -inf, inf, inf], [0, nan, nan, 5], [nan] * 4,
           [-3e38, -3e38, 3e38, 3e38]]  # fmt: skip
    good = [[4, 4, 40, 30]]
    rois = torch.tensor([bad + good], dtype=torch.float32)
    feats = _pyramid(dtype=dtype)[:levels]
    for ratio in (2, 0):
        out = roi_align_cpu(feats, rois, 7, P2_P5[:levels], ratio)
        assert torch.equal(out[0, : len(bad)].float(), torch.zeros_like(out[0, : len(bad)].float()))
        assert out[0, -1].abs().sum() > 0


def test_huge_finite_rois_are_bounded() -> None:
    """Huge boxes: finite output, adaptive grid capped (no endless loop), nothing read out of bounds."""
    feats = _pyramid(channels=1)
    rois = torch.tensor([[[-1e30, -1e30, 1e30, 1e30], [-1e6, -1e6, 1e6, 1e6], [1e7, 1e7, 1e7 + 5, 1e7 + 5]]])
    out = roi_align_cpu(feats, rois, 1, P2_P5, 0)
    assert torch.isfinite(out).all()
    ref = torchvision.ops.roi_align(feats[0], [rois[0, 2:]], 1, 0.25, 0)  # far outside: zeros, as torchvision
    assert torch.equal(out[0, 2], ref[0])


def test_negative_area_multi_level_matches_torchvision() -> None:
    """x2 < x1 with y2 > y1: torchvision's LevelMapper gives NaN and the RoI matches no level (zeros)."""
    feats = _pyramid()
    rois = torch.tensor([[[30.0, 4.0, 10.0, 40.0], [10.0, 4.0, 30.0, 40.0]]])
    out = roi_align_cpu(feats, rois, 7, P2_P5, 2)
    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    ref = pooler({str(i): f for i, f in enumerate(feats)}, [rois[0]], [(256, 256)])
    assert pooler.scales == list(P2_P5)
    assert torch.equal(out[0], ref)
    assert out[0, 0].abs().sum() == 0 and out[0, 1].abs().sum() > 0


def test_fp16_output_is_rounded_fp32_math() -> None:
    feats = _pyramid(dtype=torch.float16)
    rois = torch.tensor([[[3.3, 5.1, 60.2, 41.7], [0.0, 0.0, 300.0, 250.0]]])
    out = roi_align_cpu(feats, rois, 7, P2_P5, 2)
    ref = roi_align_cpu([f.float() for f in feats], rois, 7, P2_P5, 2)
    assert out.dtype == torch.float16
    assert torch.equal(out, ref.half())  # fp32 accumulation, one rounding at the end


def test_host_half_conversion_matches_numpy() -> None:
    import ctypes

    from maskrt.plugins._library import host_library

    lib = host_library()
    bits = np.arange(65536, dtype=np.uint16)
    as_float = np.empty(65536, dtype=np.float32)
    lib.maskrt_half_to_float(bits.ctypes.data_as(ctypes.POINTER(ctypes.c_uint16)),
                             as_float.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), bits.size)  # fmt: skip
    expected = bits.view(np.float16).astype(np.float32)
    assert np.array_equal(as_float.view(np.uint32)[~np.isnan(expected)], expected.view(np.uint32)[~np.isnan(expected)])
    assert np.isnan(as_float[np.isnan(expected)]).all()
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(200_000).astype(np.float32) * np.float32(10.0) ** rng.integers(-9, 6, 200_000),
        expected[~np.isnan(expected)] + np.float32(1e-12),
        np.array([65504, 65519.99, 65520, 1e30, -1e30, 2.0**-25, 2.0**-24 * 1.5, 2.0**-26, 0.0, -0.0], np.float32),
    ]).astype(np.float32)  # fmt: skip
    halves = np.empty(values.size, dtype=np.uint16)
    lib.maskrt_float_to_half(values.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                             halves.ctypes.data_as(ctypes.POINTER(ctypes.c_uint16)), values.size)  # fmt: skip
    with np.errstate(over="ignore"):
        expected_halves = values.astype(np.float16).view(np.uint16)
    assert np.array_equal(halves, expected_halves)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_size": 0}, "output_size must be positive"),
        ({"output_size": (7, -1)}, "output_size must be positive"),
        ({"spatial_scales": P2_P5[:3]}, "3 spatial scale"),
        ({"spatial_scales": (0.25, 0.125, 0.0625, 0.03)}, "not a power of two"),
        ({"spatial_scales": (0.25, 0.0625, 0.125, 0.03125)}, "consecutive"),
        ({"canonical_scale": 0.0}, "canonical_scale"),
    ],
)
def test_invalid_attributes_raise_value_error(kwargs: dict, message: str) -> None:
    from maskrt.plugins import roi_align

    args = {"output_size": 7, "spatial_scales": P2_P5, **kwargs}
    with pytest.raises(ValueError, match=message):
        roi_align.cpu(_pyramid(), torch.zeros(1, 1, 4), **args)


@pytest.mark.parametrize(
    ("feats", "rois", "message"),
    [
        (lambda: _pyramid(), lambda: torch.zeros(1, 3), r"rois must be a \[B, R, 4\]"),
        (lambda: _pyramid(), lambda: torch.zeros(1, 1, 4, dtype=torch.float64), "rois must be float32"),
        (lambda: _pyramid(), lambda: torch.zeros(2, 1, 4), "batch 2"),
        (lambda: [f.double() for f in _pyramid()], lambda: torch.zeros(1, 1, 4), "float32 or float16"),
        (lambda: _pyramid()[:3] + [_pyramid(dtype=torch.float16)[3]], lambda: torch.zeros(1, 1, 4), "one dtype"),
        (lambda: _pyramid()[0], lambda: torch.zeros(1, 1, 4), "non-empty list"),
        (lambda: [f[0] for f in _pyramid()], lambda: torch.zeros(1, 1, 4), r"\[B, C, H, W\]"),
    ],
)
def test_invalid_tensors_raise_value_error(feats, rois, message: str) -> None:
    from maskrt.plugins import roi_align

    with pytest.raises(ValueError, match=message):
        roi_align.cpu(feats(), rois(), output_size=7, spatial_scales=P2_P5)


def roi_align_cpu(feats, rois, size, scales, ratio, aligned=False) -> torch.Tensor:
    from maskrt.plugins import roi_align

    return roi_align.cpu(feats, rois, output_size=size, spatial_scales=scales, sampling_ratio=ratio, aligned=aligned)


GUARDED_SCRIPT = textwrap.dedent(
    """
    import ctypes, itertools, mmap, sys
    import torch
    from maskrt.plugins import roi_align

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    PAGE = mmap.PAGESIZE
    keep = []

    def guarded(shape, dtype, at_end):
        # A tensor whose first (at_end=False) or last (at_end=True) byte touches a PROT_NONE page.
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        pages = max(1, -(-nbytes // PAGE))
        mm = mmap.mmap(-1, (pages + 2) * PAGE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        for guard in (base, base + (pages + 1) * PAGE):
            assert libc.mprotect(guard, PAGE, 0) == 0
        offset = PAGE + (pages * PAGE - nbytes if at_end else 0)
        t = torch.frombuffer(mm, dtype=dtype, count=nbytes // torch.empty((), dtype=dtype).element_size(),
                             offset=offset).view(shape)
        t.copy_(torch.randn(shape).to(dtype))
        keep.append(mm)
        return t

    nan, inf, big = float("nan"), float("inf"), 3e38
    edge = [-1.0, -0.5, 0.0, 0.5, 1.0, 3.999, 4.0, 4.001, 8.0, 16.0, 64.0, 64.001, 65.0, 1e5]
    rois = [[nan, 0, 1, 1], [0, 0, inf, inf], [-inf, -inf, inf, inf], [-big, -big, big, big],
            [big, big, -big, -big], [0, 0, 0, 0], [64, 64, 64, 64], [-4, -4, 0, 0], [1e5, 1e5, -1e5, -1e5]]
    rois += [[a, b, c, d] for a, b, c, d in itertools.product(edge[::3], edge[1::3], edge[2::3], edge[::4])]
    rois = torch.tensor([rois], dtype=torch.float32)
    calls = 0
    for size, at_end, dtype, levels in itertools.product(((1, 1), (1, 16), (16, 1), (16, 16)), (True, False),
                                                        (torch.float32, torch.float16), (1, 4)):
        feats = [guarded((1, 2, max(1, size[0] >> i), max(1, size[1] >> i)), dtype, at_end) for i in range(levels)]
        scales = [0.25 / 2**i for i in range(levels)]
        # adaptive grids of the huge RoIs are capped at 1024 x 1024 samples per bin: try them on one bin only
        for ratio, aligned, out in [(0, False, 1), (0, True, 1)] + list(
            itertools.product((1, 2), (False, True), (7, (3, 5)))
        ):
            roi_align.cpu(feats, rois, output_size=out, spatial_scales=scales, sampling_ratio=ratio, aligned=aligned)
            calls += 1
    print(calls, rois.shape[1])
    """
)


def test_no_out_of_bounds_read_for_any_roi() -> None:
    """Every feature map is placed against a PROT_NONE page (once at its end, once at its start); adversarial RoIs
    (NaN, inf, +-3e38, inverted, on and past every edge, 1-pixel maps) must not fault. Runs in a subprocess, so a
    fault fails this test instead of killing pytest."""
    proc = subprocess.run(
        [sys.executable, "-c", GUARDED_SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"exit {proc.returncode} (negative = killed by a signal):\n{proc.stderr[-2000:]}"
    calls, num_rois = map(int, proc.stdout.split())
    assert calls == 4 * 2 * 2 * 2 * (2 + 2 * 2 * 2) and num_rois > 100
