// torchvision's GeneralizedRCNNTransform for one image, in the order and float32 arithmetic of runtime/preprocess.py:
// x / 255, (x - mean) / std, bilinear resize (PyTorch's upsample_bilinear2d, align_corners false,
// recompute_scale_factor: output floor(side * scale), source = max((dst + 0.5) * in / out - 0.5, 0)), zero padding.
#include <algorithm>
#include <cmath>

#include "internal.hpp"

namespace maskrt {

namespace {

constexpr int kSizeDivisible = 32;

struct Axis {  // per output index: the two source indices and their weights (PyTorch's compute_indices_weights)
  std::vector<int> i0, i1;
  std::vector<float> w0, w1;
};

Axis axis(int in, int out) {
  Axis a;
  a.i0.resize(out);
  a.i1.resize(out);
  a.w0.resize(out);
  a.w1.resize(out);
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int d = 0; d < out; ++d) {
#ifdef MASKRT_CPP_FAULT_nearest
    const int src = std::min(static_cast<int>(std::floor(d * scale)), in - 1);  // the test fault: nearest
    a.i0[d] = a.i1[d] = src;
    a.w0[d] = 1.0f;
    a.w1[d] = 0.0f;
    continue;
#endif
    float real = scale * (static_cast<float>(d) + 0.5f) - 0.5f;
    real = real < 0.0f ? 0.0f : real;
    const int i0 = static_cast<int>(real);
    const int i1 = i0 + (i0 < in - 1 ? 1 : 0);
    float lambda1 = real - static_cast<float>(i0);
    lambda1 = std::min(std::max(lambda1, 0.0f), 1.0f);
    a.i0[d] = i0;
    a.i1[d] = i1;
    a.w0[d] = 1.0f - lambda1;
    a.w1[d] = lambda1;
  }
  return a;
}

// [3, h, w] -> [3, oh, ow]: each output = (row i0 interpolated along x) * wy0 + (row i1 ...) * wy1, as PyTorch's
// separable CPU kernel nests it.
std::vector<float> resize_bilinear(const std::vector<float>& src, int h, int w, int oh, int ow) {
  const Axis ay = axis(h, oh), ax = axis(w, ow);
  std::vector<float> out(static_cast<size_t>(3) * oh * ow);
  for (int c = 0; c < 3; ++c) {
    const float* plane = src.data() + static_cast<size_t>(c) * h * w;
    float* dst = out.data() + static_cast<size_t>(c) * oh * ow;
    for (int y = 0; y < oh; ++y) {
      const float* r0 = plane + static_cast<size_t>(ay.i0[y]) * w;
      const float* r1 = plane + static_cast<size_t>(ay.i1[y]) * w;
      const float wy0 = ay.w0[y], wy1 = ay.w1[y];
      for (int x = 0; x < ow; ++x) {
        const float t0 = r0[ax.i0[x]] * ax.w0[x] + r0[ax.i1[x]] * ax.w1[x];
        const float t1 = r1[ax.i0[x]] * ax.w0[x] + r1[ax.i1[x]] * ax.w1[x];
        float v = t0 * wy0;
        v += t1 * wy1;
        dst[static_cast<size_t>(y) * ow + x] = v;
      }
    }
  }
  return out;
}

int round_up(int v) { return (v + kSizeDivisible - 1) / kSizeDivisible * kSizeDivisible; }

}  // namespace

Preprocessed preprocess(const Image& image, const ExportInfo& info) {
  const int h = image.height, w = image.width;
  // torchvision: scale = min(min_size / short side, max_size / long side) in Python floats (double)
  const double scale = std::min(static_cast<double>(info.min_size) / std::min(h, w),
                                static_cast<double>(info.max_size) / std::max(h, w));
  int oh = static_cast<int>(std::floor(h * scale)), ow = static_cast<int>(std::floor(w * scale));
  if (oh < 1 || ow < 1)
    throw Error("an image of " + std::to_string(w) + "x" + std::to_string(h) + " pixels resizes to less than one "
                "pixel: its aspect ratio is too extreme for this model");
  // to_tensor (/ 255) and normalize, planar
  std::vector<float> planar(static_cast<size_t>(3) * h * w);
  for (int c = 0; c < 3; ++c) {
#ifdef MASKRT_CPP_FAULT_bgr
    const int from = 2 - c;  // the test fault: channels in BGR order
#else
    const int from = c;
#endif
    float* dst = planar.data() + static_cast<size_t>(c) * h * w;
    for (size_t i = 0; i < static_cast<size_t>(h) * w; ++i) {
      const float x = static_cast<float>(image.rgb[3 * i + from]) / 255.0f;
      dst[i] = (x - info.mean[c]) / info.std[c];
    }
  }
  std::vector<float> resized;
  if (!info.dynamic_size && (oh > info.canvas_height || ow > info.canvas_width)) {
    // a static canvas the resized image does not fit: resized from the original again, to fit, then cropped
    const double fit = std::min(static_cast<double>(info.canvas_height) / h,
                                static_cast<double>(info.canvas_width) / w);
    const int fh = static_cast<int>(std::floor(h * fit)), fw = static_cast<int>(std::floor(w * fit));
    std::vector<float> full = resize_bilinear(planar, h, w, fh, fw);
    oh = std::min(fh, info.canvas_height);
    ow = std::min(fw, info.canvas_width);
    resized.resize(static_cast<size_t>(3) * oh * ow);
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < oh; ++y)
        std::copy_n(full.data() + (static_cast<size_t>(c) * fh + y) * fw, ow,
                    resized.data() + (static_cast<size_t>(c) * oh + y) * ow);
  } else {
    resized = resize_bilinear(planar, h, w, oh, ow);
  }
  Preprocessed out;
  out.resized_height = oh;
  out.resized_width = ow;
  if (info.dynamic_size) {
    out.height = round_up(oh);
    out.width = round_up(ow);
    if (out.height > info.max_height || out.width > info.max_width)
      throw Error("an image padded to " + std::to_string(out.height) + "x" + std::to_string(out.width) +
                  " exceeds the export's largest input " + std::to_string(info.max_height) + "x" +
                  std::to_string(info.max_width));
  } else {
    out.height = info.canvas_height;
    out.width = info.canvas_width;
  }
  out.chw.assign(static_cast<size_t>(3) * out.height * out.width, 0.0f);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < oh; ++y)
      std::copy_n(resized.data() + (static_cast<size_t>(c) * oh + y) * ow, ow,
                  out.chw.data() + (static_cast<size_t>(c) * out.height + y) * out.width);
  return out;
}

}  // namespace maskrt
