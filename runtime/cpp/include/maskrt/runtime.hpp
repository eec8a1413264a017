// maskrt C++ runtime: run a maskrt export (or a TensorRT engine built by `maskrt build`) without Python.
//
// This header is the documentation of libmaskrt_runtime.so. The runtime does what the Python runtime does
// (runtime/predictor.py), step for step, so that its results equal `maskrt predict`'s (checked by
// `maskrt parity --runtime cpp`):
//
//   1. Predictor::open reads the export folder's export.json (classes, sizes, normalization, graph files) and
//      verifies the graph's sha256 against it (an engine: ENGINE.json, the engine's sha256, the plugin library's).
//   2. load_image decodes PNG and JPEG to 8-bit RGB, upright (EXIF orientation applied), as maskrt's Python
//      reader (Pillow) does: gray replicated, alpha dropped, palettes expanded, 16-bit gray scaled by its peak.
//   3. predict pre-processes each image as torchvision's GeneralizedRCNNTransform: pixels / 255, (x - mean) / std,
//      a bilinear resize (align_corners false) by scale = min(min_size / short side, max_size / long side) to
//      floor(side * scale), then zero padding at the bottom/right to a multiple of 32 (or to a static canvas);
//   4. runs the graph (OpenVINO on the CPU: model.onnx or model.int8.onnx, f32 or bf16; TensorRT: the engine);
//   5. maps the fixed-size outputs back to the original image: boxes scaled, each mask pasted at the original size
//      as torchvision's paste_masks_in_image (one pixel of padding, bilinear, threshold 0.5).
//
//     #include <maskrt/runtime.hpp>
//     maskrt::Predictor predictor = maskrt::Predictor::open("exports/slim", {});
//     std::vector<maskrt::Detections> dets = predictor.predict({maskrt::load_image("a.jpg")});
//     for (const maskrt::Detection& d : dets[0].items) { /* d.box, d.score, d.category_id, d.mask */ }
//
// Every failure is a maskrt::Error with a one-line message naming the file or option at fault.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace maskrt {

//! A one-line error: a bad export, image or option, or a backend that cannot run here.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

//! An 8-bit RGB image, row-major, height * width * 3 bytes.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> rgb;
};

//! Decode a PNG or JPEG file to upright RGB (see step 2). Refuses files above MASKRT_MAX_IMAGE_PIXELS (default 100
//! megapixels) before decoding, folders, truncated or unreadable files, and formats other than PNG and JPEG.
Image load_image(const std::string& path);

//! One detection in original-image pixels.
struct Detection {
  float box[4] = {0, 0, 0, 0};     //!< x1, y1, x2, y2
  float score = 0;                 //!< the network's score
  int label = 0;                   //!< contiguous label 1..K (the network's)
  int category_id = 0;             //!< the dataset's category id of `label` (export.json classes)
  std::vector<std::uint8_t> mask;  //!< height * width, row-major, 1 inside the mask
};

//! The detections of one image, highest score first (the network's order).
struct Detections {
  int width = 0;
  int height = 0;
  std::vector<Detection> items;
};

//! One class of the export: its dataset id and name.
struct ClassInfo {
  int id = 0;
  std::string name;
};

//! How Predictor::open runs a model.
struct Options {
  std::string backend = "openvino";  //!< openvino (export folder) | tensorrt (engine file with its ENGINE.json)
  std::string graph = "portable";    //!< openvino: portable (model.onnx) | portable_int8 (model.int8.onnx)
  std::string precision = "f32";     //!< openvino: f32 | bf16 (needs a CPU with native bfloat16)
  int threads = 0;                   //!< openvino inference threads; 0: OpenVINO's default
  float score_threshold = 0.5f;      //!< detections below are dropped, in [0, 1]
};

//! Runs one model on batches of images; not thread-safe (one Predictor per thread).
class Predictor {
 public:
  //! Open an export folder (openvino) or an engine file (tensorrt); throws Error on any mismatch.
  static Predictor open(const std::string& model, const Options& options);

  //! Detections for each image, in the images' order (each image runs alone through the graph).
  std::vector<Detections> predict(const std::vector<Image>& images);

  //! The export's classes, label i -> classes()[i - 1].
  const std::vector<ClassInfo>& classes() const;

  //! What runs: e.g. "openvino model.onnx f32 (2 threads)".
  std::string describe() const;

  Predictor(Predictor&&) noexcept;
  Predictor& operator=(Predictor&&) noexcept;
  ~Predictor();

  struct Impl;

 private:
  explicit Predictor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

//! A mask (height * width, row-major) as COCO's compressed RLE string (pycocotools' encoding, column-major runs).
std::string encode_rle(const std::vector<std::uint8_t>& mask, int height, int width);

}  // namespace maskrt
