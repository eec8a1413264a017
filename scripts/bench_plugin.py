"""Benchmark the plugin library's CUDA kernels against torchvision's CUDA ops (GPU machines only).

    python scripts/bench_plugin.py [--iters 200]

MultiLevelRoIAlign vs torchvision's per-level CUDA path:
Cases: 1000 RoIs x 256 channels x 7x7 (box head) and 100 RoIs x 256 x 14x14 (mask head), sampling_ratio 2, on an
800x1216 P2-P5 pyramid, fp32 and fp16. Prints microseconds per call, the achieved bandwidth (bytes the kernel must
move at least: every feature element the bilinear taps touch read once, the output written, the RoIs read) and its
fraction of the device's peak memory bandwidth (the roofline).

BatchedNMS vs torchvision.ops.batched_nms on CUDA: N = 1000 and 5000 RPN-like boxes per image, 1 and 80 groups, batch
1 (torchvision runs once per image, so batch 2 times it twice), iou 0.7, every box a candidate, up to 1000 kept; and
the box-head case of 1000 proposals x 90 classes with ~300 candidates above score 0.05. Exits 2 without a GPU.
"""

from __future__ import annotations

import argparse
import sys

import torch

P2_P5 = (0.25, 0.125, 0.0625, 0.03125)
IMAGE = (800, 1216)


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


def make_inputs(num_rois: int, dtype: torch.dtype, seed: int = 0, device: str = "cuda", channels: int = 256):
    gen = torch.Generator(device=device).manual_seed(seed)
    feats = [
        torch.randn(1, channels, IMAGE[0] >> lvl, IMAGE[1] >> lvl, device=device, generator=gen).to(dtype)
        for lvl in (2, 3, 4, 5)
    ]
    # RPN-like boxes: log-uniform sizes 16..512 px, centres anywhere in the image
    size = torch.exp(torch.empty(num_rois, 2, device=device).uniform_(2.77, 6.24, generator=gen))
    centre = torch.rand(num_rois, 2, device=device, generator=gen) * torch.tensor([IMAGE[1], IMAGE[0]], device=device)
    rois = torch.cat([centre - size / 2, centre + size / 2], dim=1)[None].contiguous()
    return feats, rois


def torchvision_reference(feats, rois, out_size: int):  # noqa: ANN001, ANN201
    """torchvision's MultiScaleRoIAlign on the same inputs, as a callable (the timed competitor). Its roi_align wants
    the RoIs in the features' dtype (fp32 RoIs with fp16 features raise), so they are cast; our plugin keeps them fp32,
    so errors are measured against this reference on fp32 features."""
    import torchvision

    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], out_size, 2)
    named = {str(i): f for i, f in enumerate(feats)}
    boxes = [rois[0].to(feats[0].dtype)]
    return lambda: pooler(named, boxes, [IMAGE])


def time_us(fn, iters: int) -> float:
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


def touched_elements(feats, rois, out_size: int, ratio: int) -> list[int]:
    """Per level, how many distinct feature positions (y, x) the bilinear taps of all RoIs read (aligned=False)."""
    from torchvision.ops.poolers import LevelMapper

    boxes = rois[0]
    levels = LevelMapper(2, 5)([boxes])
    counts = []
    for i, (f, scale) in enumerate(zip(feats, P2_P5, strict=True)):
        b = boxes[levels == i] * scale
        height, width = f.shape[2], f.shape[3]
        if b.numel() == 0:
            counts.append(0)
            continue
        size = (b[:, 2:] - b[:, :2]).clamp(min=1.0)  # (w, h)
        grid = torch.arange(out_size, device=b.device)[:, None] + (torch.arange(ratio, device=b.device) + 0.5) / ratio
        grid = grid.reshape(-1)
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
        counts.append(int(torch.unique(idx[ok]).numel()))
    return counts


def bytes_moved(feats, rois, out_size: int, ratio: int, elem: int) -> int:
    """Least DRAM traffic of one call: every touched feature element read once, the output written, the RoIs read."""
    channels = feats[0].shape[1]
    touched = sum(touched_elements(feats, rois, out_size, ratio)) * channels * elem
    return touched + rois.shape[1] * channels * out_size * out_size * elem + rois.numel() * 4


def nms_inputs(batch: int, n: int, groups: int, seed: int = 0):
    """RPN-like boxes (log-uniform sizes 16..512 px anywhere in the image), uniform scores, random groups."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    size = torch.exp(torch.empty(batch, n, 2, device="cuda").uniform_(2.77, 6.24, generator=gen))
    centre = torch.rand(batch, n, 2, device="cuda", generator=gen) * torch.tensor([IMAGE[1], IMAGE[0]], device="cuda")
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1).contiguous()
    scores = torch.rand(batch, n, device="cuda", generator=gen)
    ids = torch.randint(0, groups, (batch, n), device="cuda", generator=gen, dtype=torch.int32)
    return boxes, scores, ids


def bench_nms(iters: int) -> None:
    import torchvision

    from maskrt.plugins import nms

    print(f"\n{'BatchedNMS case':34s} {'plugin us':>10s} {'torchvision us':>15s} {'speedup':>8s} {'kept':>6s}")
    cases = [(1, n, g, 0.7, -0.5, 1000, None) for n in (1000, 5000) for g in (1, 80)]
    cases += [(2, 5000, 80, 0.7, -0.5, 1000, None), (1, 90_000, 90, 0.5, 0.05, 100, 300)]
    for batch, n, groups, iou, thr, k, candidates in cases:
        boxes, scores, ids = nms_inputs(batch, n, groups)
        if candidates is not None:  # the box head: most scores below the threshold
            scores = torch.where(torch.rand_like(scores) < candidates / n, scores, torch.full_like(scores, -1.0))

        def ours(boxes=boxes, scores=scores, ids=ids, iou=iou, thr=thr, k=k):
            return nms.cuda(boxes, scores, ids, iou_threshold=iou, score_threshold=thr, max_output_boxes=k)

        def reference(boxes=boxes, scores=scores, ids=ids, iou=iou, thr=thr, k=k):
            out = []
            for b in range(boxes.shape[0]):
                mask = scores[b] > thr
                out.append(torchvision.ops.batched_nms(boxes[b][mask], scores[b][mask], ids[b][mask], iou)[:k])
            return out

        keep, count = ours()
        ref = reference()
        same = all(int(count[b]) == ref[b].numel() for b in range(batch))
        t_ours, t_ref = time_us(ours, iters), time_us(reference, iters)
        name = f"B={batch} N={n} groups={groups}" + (f" (~{candidates} cand.)" if candidates else "")
        print(f"{name:34s} {t_ours:10.1f} {t_ref:15.1f} {t_ref / t_ours:7.2f}x {int(count[0]):6d}"
              f"{'' if same else '   (count differs from torchvision!)'}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_plugin: no CUDA GPU available (torch.cuda.is_available() is False); nothing measured")
        return 2
    from maskrt.plugins import roi_align

    peak = peak_bandwidth_gbs()
    print(f"device: {torch.cuda.get_device_name(0)}, peak memory bandwidth {peak:.0f} GB/s")
    print(f"{'case':34s} {'plugin us':>10s} {'torchvision us':>15s} {'speedup':>8s} {'GB/s':>8s} {'of peak':>8s}")
    for num_rois, out_size in ((1000, 7), (100, 14)):
        for dtype in (torch.float32, torch.float16):
            feats, rois = make_inputs(num_rois, dtype)
            reference = torchvision_reference(feats, rois, out_size)

            def ours(feats=feats, rois=rois, out_size=out_size):
                return roi_align.cuda(feats, rois, output_size=out_size, spatial_scales=P2_P5, sampling_ratio=2)

            exact = torchvision_reference([f.float() for f in feats], rois, out_size)()  # fp32 RoIs, as ours
            err = (ours().float().reshape(num_rois, 256, out_size, out_size) - exact).abs().max().item()
            t_ours, t_ref = time_us(ours, args.iters), time_us(reference, args.iters)
            moved = bytes_moved(feats, rois, out_size, 2, feats[0].element_size())
            gbs = moved / t_ours / 1e3
            name = f"{num_rois} RoIs x 256 x {out_size}x{out_size} {str(dtype)[6:]}"
            print(f"{name:34s} {t_ours:10.1f} {t_ref:15.1f} {t_ref / t_ours:7.2f}x {gbs:8.1f} {gbs / peak:7.1%}"
                  f"   (max |diff| {err:.2g})")  # fmt: skip
    bench_nms(args.iters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
