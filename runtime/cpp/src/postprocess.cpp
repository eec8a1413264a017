// Fixed-size outputs -> detections on the original image (runtime/postprocess.py, runtime/paste.py), and COCO RLE.
#include <algorithm>
#include <cmath>

#include "internal.hpp"

namespace maskrt {

namespace {

// Bilinear weights of padded-mask cells for image pixels first..last-1 of a box starting at `start`, `length` long
// (runtime/paste.py _axis_weights): [last - first, size], two non-zero entries per row.
std::vector<float> axis_weights(long start, long length, long first, long last, int size) {
  const long n = last - first;
  std::vector<float> weights(static_cast<size_t>(n) * size, 0.0f);
  const float ratio = static_cast<float>(static_cast<double>(size) / static_cast<double>(length));
  for (long p = 0; p < n; ++p) {
    float src = (static_cast<float>(first - start + p) + 0.5f) * ratio - 0.5f;
    src = std::max(src, 0.0f);
    const int i0 = std::min(static_cast<int>(std::floor(src)), size - 1);
    const int i1 = std::min(i0 + 1, size - 1);
    const float frac = src - static_cast<float>(i0);
    weights[static_cast<size_t>(p) * size + i0] += 1.0f - frac;
    weights[static_cast<size_t>(p) * size + i1] += frac;
  }
  return weights;
}

// torchvision's paste_masks_in_image for one mask: padded by one cell, its box expanded by the same ratio and
// truncated to integers, resized bilinearly into the box, thresholded at 0.5.
std::vector<std::uint8_t> paste(const float* mask, int m, const float box[4], int height, int width) {
  std::vector<std::uint8_t> out(static_cast<size_t>(height) * width, 0);
  const int size = m + 2;
  std::vector<float> padded(static_cast<size_t>(size) * size, 0.0f);
  for (int y = 0; y < m; ++y)
    std::copy_n(mask + static_cast<size_t>(y) * m, m, padded.data() + static_cast<size_t>(y + 1) * size + 1);
  const float scale = static_cast<float>(static_cast<double>(size) / m);
  const float w_half = (box[2] - box[0]) * 0.5f * scale, h_half = (box[3] - box[1]) * 0.5f * scale;
  const float x_c = (box[2] + box[0]) * 0.5f, y_c = (box[3] + box[1]) * 0.5f;
  const long x = static_cast<long>(x_c - w_half), y = static_cast<long>(y_c - h_half);
  const long bw = std::max(static_cast<long>(x_c + w_half) - x + 1, 1L);
  const long bh = std::max(static_cast<long>(y_c + h_half) - y + 1, 1L);
  const long y0 = std::clamp(y, 0L, static_cast<long>(height)), y1 = std::clamp(y + bh, 0L, static_cast<long>(height));
  const long x0 = std::clamp(x, 0L, static_cast<long>(width)), x1 = std::clamp(x + bw, 0L, static_cast<long>(width));
  if (y1 <= y0 || x1 <= x0) return out;  // the box lies outside the image
  const std::vector<float> wy = axis_weights(y, bh, y0, y1, size), wx = axis_weights(x, bw, x0, x1, size);
  // rows: tmp[r, c] = sum_k wy[r, k] * padded[k, c]; then out[r, q] = sum_c tmp[r, c] * wx[q, c]
  const long rows = y1 - y0, cols = x1 - x0;
  std::vector<float> tmp(static_cast<size_t>(size));
  for (long r = 0; r < rows; ++r) {
    std::fill(tmp.begin(), tmp.end(), 0.0f);
    for (int k = 0; k < size; ++k) {
      const float wk = wy[static_cast<size_t>(r) * size + k];
      if (wk == 0.0f) continue;
      for (int c = 0; c < size; ++c) tmp[c] += wk * padded[static_cast<size_t>(k) * size + c];
    }
    std::uint8_t* dst = out.data() + static_cast<size_t>(y0 + r) * width + x0;
    for (long q = 0; q < cols; ++q) {
      const float* wq = wx.data() + static_cast<size_t>(q) * size;
      float v = 0.0f;
      for (int c = 0; c < size; ++c) v += tmp[c] * wq[c];
      dst[q] = v > 0.5f ? 1 : 0;
    }
  }
  return out;
}

}  // namespace

Detections to_detections(const RawOutput& raw, int resized_h, int resized_w, int height, int width,
                         float threshold, const std::vector<ClassInfo>& classes) {
  Detections dets;
  dets.width = width;
  dets.height = height;
  const float ratio_h = static_cast<float>(height) / static_cast<float>(resized_h);
  const float ratio_w = static_cast<float>(width) / static_cast<float>(resized_w);
  const int m = raw.mask_size;
  for (int i = 0; i < raw.num; ++i) {
    if (!(raw.scores[i] >= threshold)) continue;
    Detection d;
    const float* b = &raw.boxes[static_cast<size_t>(i) * 4];
    d.box[0] = b[0] * ratio_w;
    d.box[1] = b[1] * ratio_h;
    d.box[2] = b[2] * ratio_w;
    d.box[3] = b[3] * ratio_h;
    d.score = raw.scores[i];
    d.label = static_cast<int>(raw.labels[i]);
    if (d.label < 1 || d.label > static_cast<int>(classes.size()))
      throw Error("the network gave label " + std::to_string(d.label) + ", outside the export's " +
                  std::to_string(classes.size()) + " classes");
    d.category_id = classes[static_cast<size_t>(d.label) - 1].id;
    d.mask = paste(&raw.masks[static_cast<size_t>(i) * m * m], m, d.box, height, width);
    dets.items.push_back(std::move(d));
  }
  return dets;
}

std::string encode_rle(const std::vector<std::uint8_t>& mask, int height, int width) {
  // runs of 0s and 1s in column-major order, starting with 0s (pycocotools rleEncode) ...
  std::vector<long> counts;
  std::uint8_t current = 0;
  long run = 0;
  for (int x = 0; x < width; ++x) {
    for (int y = 0; y < height; ++y) {
      const std::uint8_t v = mask[static_cast<size_t>(y) * width + x] ? 1 : 0;
      if (v != current) {
        counts.push_back(run);
        run = 0;
        current = v;
      }
      ++run;
    }
  }
  counts.push_back(run);
  // ... as pycocotools' compressed string (rleToString): each count (minus the one two back, from the third on) in
  // 5-bit groups, 0x20 marking a continuation, offset by 48
  std::string s;
  for (size_t i = 0; i < counts.size(); ++i) {
    long v = counts[i];
    if (i > 2) v -= counts[i - 2];
    bool more = true;
    while (more) {
      long c = v & 0x1f;
      v >>= 5;
      more = (c & 0x10) ? v != -1 : v != 0;
      if (more) c |= 0x20;
      s += static_cast<char>(c + 48);
    }
  }
  return s;
}

}  // namespace maskrt
