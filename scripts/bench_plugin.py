"""Benchmark the plugin library's CUDA kernels against torchvision's CUDA ops (GPU machines only).

    python scripts/bench_plugin.py [--iters 100] [--batches 1,4,8] [--only roi_align|nms] [--json OUT]
    python scripts/bench_plugin.py --ncu          # Nsight Compute Speed-Of-Light numbers of every plugin kernel

MultiLevelRoIAlign vs torchvision's MultiScaleRoIAlign: 1000 RoIs per image x 256 channels x 7x7 (box head) and
100 RoIs per image x 256 x 14x14 (mask head), sampling_ratio 2, on an 800x1216 P2-P5 pyramid, fp32 and fp16, batch
1/4/8. For each case: the device time of our kernel (from the CUDA profiler, so Python's launch overhead is not in it),
the time per call as a caller sees it, torchvision's time per call, the achieved bandwidth (the bytes the kernel must
move at least: every feature element the bilinear taps touch read once, the output written, the RoIs read over the
kernel time) and its fraction of the device's peak memory bandwidth (the roofline).

BatchedNMS vs torchvision.ops.batched_nms (which runs once per image): N = 1000 and 5000 RPN-like boxes, 1 and 80
groups, batch 1/4/8, iou 0.7, every box a candidate, up to 1000 kept; and the box-head case of 1000 proposals x 90
classes with ~300 candidates above score 0.05. Per case: the device time of each of our kernels and their sum.

MASKRT_PLUGIN_LIBRARY=path/libmaskrt_plugins.so measures another build (e.g. the previous kernels, for a before/after
table in one run). Exits 2 without a GPU (or, with --ncu, without Nsight Compute).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable

import torch

P2_P5 = (0.25, 0.125, 0.0625, 0.03125)
IMAGE = (800, 1216)
KERNELS = ("roiAlignKernel", "compactKernel", "rankKernel", "maskKernel", "greedyKernel")


def peak_bandwidth_gbs() -> float:
    """Theoretical DRAM bandwidth from the device attributes (memory clock x bus width x 2, DDR)."""
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if not clock_khz or not bus_bits:
        try:
            from cuda.bindings import runtime as cudart  # optional

            clock_khz = cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrMemoryClockRate, 0)[1]
            bus_bits = cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrGlobalMemoryBusWidth, 0)[1]
        except Exception:  # noqa: BLE001 - attributes unavailable: no fraction reported
            return float("nan")
    return 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def make_inputs(
    num_rois: int, dtype: torch.dtype, seed: int = 0, device: str = "cuda", channels: int = 256, batch: int = 1
):  # noqa: ANN201
    """A P2-P5 pyramid of `batch` images and `num_rois` RPN-like RoIs per image ([batch, num_rois, 4], fp32)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    feats = [
        torch.randn(batch, channels, IMAGE[0] >> lvl, IMAGE[1] >> lvl, device=device, generator=gen).to(dtype)
        for lvl in (2, 3, 4, 5)
    ]
    # RPN-like boxes: log-uniform sizes 16..512 px, centres anywhere in the image
    size = torch.exp(torch.empty(batch, num_rois, 2, device=device).uniform_(2.77, 6.24, generator=gen))
    centre = torch.rand(batch, num_rois, 2, device=device, generator=gen)
    centre = centre * torch.tensor([IMAGE[1], IMAGE[0]], device=device)
    rois = torch.cat([centre - size / 2, centre + size / 2], dim=-1).contiguous()
    return feats, rois


def torchvision_reference(feats, rois, out_size: int):  # noqa: ANN001, ANN201
    """torchvision's MultiScaleRoIAlign on the same inputs, as a callable (the timed competitor). Its roi_align wants
    the RoIs in the features' dtype (fp32 RoIs with fp16 features raise), so they are cast; our plugin keeps them fp32,
    so errors are measured against this reference on fp32 features."""
    import torchvision

    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], out_size, 2)
    named = {str(i): f for i, f in enumerate(feats)}
    boxes = [r.to(feats[0].dtype) for r in rois]
    return lambda: pooler(named, boxes, [IMAGE] * len(boxes))


def time_us(fn: Callable[[], object], iters: int) -> float:
    """Microseconds per call as a caller sees them (CUDA events around `iters` back-to-back calls)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / iters


def kernel_us(fn: Callable[[], object], iters: int) -> dict[str, float]:
    """Device microseconds per call of each plugin kernel (by name), from the CUDA profiler; {} if it records none."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    times: dict[str, float] = {}
    for event in prof.key_averages():
        name = next((k for k in KERNELS if k in event.key), None)
        if name is not None:
            total = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0)
            times[name] = times.get(name, 0.0) + total / iters
    return times


def touched_elements(feats, rois, out_size: int, ratio: int) -> list[int]:  # noqa: ANN001
    """Per level, how many distinct feature positions (b, y, x) the bilinear taps of all RoIs read (aligned=False)."""
    from torchvision.ops.poolers import LevelMapper

    counts = [0] * len(feats)
    for boxes in rois:
        levels = LevelMapper(2, 5)([boxes])
        for i, (f, scale) in enumerate(zip(feats, P2_P5, strict=True)):
            b = boxes[levels == i] * scale
            height, width = f.shape[2], f.shape[3]
            if b.numel() == 0:
                continue
            size = (b[:, 2:] - b[:, :2]).clamp(min=1.0)  # (w, h)
            grid = torch.arange(out_size, device=b.device)[:, None]
            grid = (grid + (torch.arange(ratio, device=b.device) + 0.5) / ratio).reshape(-1)
            xs = b[:, None, 0] + grid[None] * size[:, None, 0] / out_size  # [n, out*ratio]
            ys = b[:, None, 1] + grid[None] * size[:, None, 1] / out_size

            def taps(v: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
                valid = (v >= -1) & (v <= n)
                low = v.clamp(min=0).floor().long().clamp(max=n - 1)
                high = (low + 1).clamp(max=n - 1)
                return torch.cat([low, high], 1), torch.cat([valid, valid], 1)

            ty, vy = taps(ys, height)
            tx, vx = taps(xs, width)
            idx = ty[:, :, None] * width + tx[:, None, :]
            ok = vy[:, :, None] & vx[:, None, :]
            counts[i] += int(torch.unique(idx[ok]).numel())
    return counts


def bytes_moved(feats, rois, out_size: int, ratio: int, elem: int) -> int:  # noqa: ANN001
    """Least DRAM traffic of one call: every touched feature element read once, the output written, the RoIs read."""
    channels = feats[0].shape[1]
    touched = sum(touched_elements(feats, rois, out_size, ratio)) * channels * elem
    outputs = rois.shape[0] * rois.shape[1] * channels * out_size * out_size * elem
    return touched + outputs + rois.numel() * 4


def bench_roi_align(iters: int, batches: list[int], peak: float) -> list[dict]:
    from maskrt.plugins import roi_align

    print(f"{'RoIAlign case':38s} {'kernel us':>10s} {'call us':>9s} {'torchvision us':>15s} {'speedup':>8s} "
          f"{'GB/s':>8s} {'of peak':>8s}")  # fmt: skip
    rows = []
    for num_rois, out_size in ((1000, 7), (100, 14)):
        for batch in batches:
            for dtype in (torch.float32, torch.float16):
                feats, rois = make_inputs(num_rois, dtype, batch=batch)
                reference = torchvision_reference(feats, rois, out_size)

                def ours(feats=feats, rois=rois, out_size=out_size):  # noqa: ANN001, ANN202
                    return roi_align.cuda(feats, rois, output_size=out_size, spatial_scales=P2_P5, sampling_ratio=2)

                exact = torchvision_reference([f.float() for f in feats], rois, out_size)()  # fp32 RoIs, as ours
                err = (ours().float().reshape(exact.shape) - exact).abs().max().item()
                t_kernel = sum(kernel_us(ours, iters).values()) or float("nan")
                t_call, t_ref = time_us(ours, iters), time_us(reference, iters)
                moved = bytes_moved(feats, rois, out_size, 2, feats[0].element_size())
                gbs = moved / t_kernel / 1e3
                name = f"B={batch} {num_rois} RoIs x 256 x {out_size}x{out_size} {str(dtype)[6:]}"
                print(f"{name:38s} {t_kernel:10.1f} {t_call:9.1f} {t_ref:15.1f} {t_ref / t_call:7.2f}x {gbs:8.1f} "
                      f"{gbs / peak:7.1%}   (max |diff| {err:.2g})")  # fmt: skip
                rows.append({"case": name, "kernel_us": t_kernel, "call_us": t_call, "torchvision_us": t_ref,
                             "gbs": gbs, "roofline": gbs / peak, "max_abs_diff": err})  # fmt: skip
                del feats, rois, exact
    return rows


def nms_inputs(batch: int, n: int, groups: int, seed: int = 0):  # noqa: ANN201
    """RPN-like boxes (log-uniform sizes 16..512 px anywhere in the image), uniform scores, random groups."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    size = torch.exp(torch.empty(batch, n, 2, device="cuda").uniform_(2.77, 6.24, generator=gen))
    centre = torch.rand(batch, n, 2, device="cuda", generator=gen) * torch.tensor([IMAGE[1], IMAGE[0]], device="cuda")
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1).contiguous()
    scores = torch.rand(batch, n, device="cuda", generator=gen)
    ids = torch.randint(0, groups, (batch, n), device="cuda", generator=gen, dtype=torch.int32)
    return boxes, scores, ids


def bench_nms(iters: int, batches: list[int]) -> list[dict]:
    import torchvision

    from maskrt.plugins import nms

    print(f"\n{'BatchedNMS case':34s} {'kernel us':>10s} {'call us':>9s} {'torchvision us':>15s} {'speedup':>8s} "
          f"{'kept':>6s}  per kernel us (compact/rank/mask/greedy)")  # fmt: skip
    cases = [(b, n, g, 0.7, -0.5, 1000, None) for b in batches for n in (1000, 5000) for g in (1, 80)]
    cases += [(b, 90_000, 90, 0.5, 0.05, 100, 300) for b in batches]
    rows = []
    for batch, n, groups, iou, thr, k, candidates in cases:
        boxes, scores, ids = nms_inputs(batch, n, groups)
        if candidates is not None:  # the box head: most scores below the threshold
            scores = torch.where(torch.rand_like(scores) < candidates / n, scores, torch.full_like(scores, -1.0))

        def ours(boxes=boxes, scores=scores, ids=ids, iou=iou, thr=thr, k=k):  # noqa: ANN001, ANN202
            return nms.cuda(boxes, scores, ids, iou_threshold=iou, score_threshold=thr, max_output_boxes=k)

        def reference(boxes=boxes, scores=scores, ids=ids, iou=iou, thr=thr, k=k):  # noqa: ANN001, ANN202
            out = []
            for b in range(boxes.shape[0]):
                mask = scores[b] > thr
                out.append(torchvision.ops.batched_nms(boxes[b][mask], scores[b][mask], ids[b][mask], iou)[:k])
            return out

        keep, count = ours()
        ref = reference()
        same = all(int(count[b]) == ref[b].numel() for b in range(batch))
        parts = kernel_us(ours, iters)
        t_kernel = sum(parts.values()) or float("nan")
        t_call, t_ref = time_us(ours, iters), time_us(reference, iters)
        split = "/".join(f"{parts.get(name, float('nan')):.1f}" for name in KERNELS[1:])
        name = f"B={batch} N={n} groups={groups}" + (f" (~{candidates} cand.)" if candidates else "")
        print(f"{name:34s} {t_kernel:10.1f} {t_call:9.1f} {t_ref:15.1f} {t_ref / t_call:7.2f}x {int(count[0]):6d}  "
              f"{split}{'' if same else '   (count differs from torchvision!)'}")  # fmt: skip
        rows.append({"case": name, "kernel_us": t_kernel, "call_us": t_call, "torchvision_us": t_ref,
                     "kernels_us": parts, "kept": int(count[0]), "same_count_as_torchvision": same})  # fmt: skip
    return rows


def run_ncu(args: argparse.Namespace) -> int:
    """Re-runs this script once per case under Nsight Compute and prints its Speed-Of-Light section per kernel."""
    ncu = shutil.which("ncu")
    if ncu is None:
        print("bench_plugin --ncu: Nsight Compute (ncu) is not on PATH; nothing measured")
        return 2
    command = [ncu, "--kernel-name", "regex:" + "|".join(KERNELS)]
    command += ["--section", "SpeedOfLight", "--section", "Occupancy", "--section", "LaunchStats"]
    command += [sys.executable, os.path.abspath(__file__), "--batches", args.batches, "--no-reference"]
    if args.only:
        command += ["--only", args.only]
    print("$", " ".join(command), flush=True)
    return subprocess.call(command)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--batches", default="1,4,8", help="comma-separated batch sizes (default 1,4,8)")
    parser.add_argument("--only", choices=("roi_align", "nms"), help="one op only")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--ncu", action="store_true", help="print Nsight Compute's Speed-Of-Light numbers instead")
    parser.add_argument("--no-reference", action="store_true", help=argparse.SUPPRESS)  # used under ncu
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_plugin: no CUDA GPU available (torch.cuda.is_available() is False); nothing measured")
        return 2
    if args.ncu:
        return run_ncu(args)
    import maskrt.plugins as plugins

    batches = [int(b) for b in args.batches.split(",")]
    peak = peak_bandwidth_gbs()
    print(f"device: {torch.cuda.get_device_name(0)}, peak memory bandwidth {peak:.0f} GB/s")
    print(f"plugin library: {plugins.library_path()}")
    result: dict = {"device": torch.cuda.get_device_name(0), "peak_gbs": peak, "library": str(plugins.library_path())}
    if args.no_reference:  # under ncu: just launch each kernel a few times
        return ncu_launches(batches, args.only)
    if args.only in (None, "roi_align"):
        result["roi_align"] = bench_roi_align(args.iters, batches, peak)
    if args.only in (None, "nms"):
        result["nms"] = bench_nms(args.iters, batches)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def ncu_launches(batches: list[int], only: str | None) -> int:
    """The profiled run of --ncu: each case once (Nsight Compute replays each kernel), no reference, no timing."""
    from maskrt.plugins import nms, roi_align

    for batch in batches[:1]:
        if only in (None, "roi_align"):
            for dtype in (torch.float32, torch.float16):
                feats, rois = make_inputs(1000, dtype, batch=batch)
                roi_align.cuda(feats, rois, output_size=7, spatial_scales=P2_P5, sampling_ratio=2)
        if only in (None, "nms"):
            for n in (1000, 5000):
                boxes, scores, ids = nms_inputs(batch, n, 1)
                nms.cuda(boxes, scores, ids, iou_threshold=0.7, score_threshold=-0.5, max_output_boxes=1000)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
