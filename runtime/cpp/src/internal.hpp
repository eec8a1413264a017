// What the runtime's parts share (not installed): the export's record, pre/post-processing, the backend interface.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "maskrt/runtime.hpp"

namespace maskrt {

//! export.json, the fields the runtime uses (core/artifacts.py ExportInfo).
struct ExportInfo {
  std::vector<ClassInfo> classes;
  int min_size = 0;
  int max_size = 0;
  std::array<float, 3> mean{};
  std::array<float, 3> std{};
  int batch = 1;
  bool dynamic_batch = false;
  bool dynamic_size = true;
  int canvas_height = 0;  //!< the static canvas (dynamic_size false)
  int canvas_width = 0;
  int max_height = 0;  //!< the largest padded input (height_range / width_range)
  int max_width = 0;
  struct Graph {
    std::string file;
    std::string sha256;
  };
  std::map<std::string, Graph> graphs;

  //! Read DIR/export.json (Error naming what is missing or malformed).
  static ExportInfo read(const std::string& dir);
  //! Parse the export record held by an ENGINE.json (`where` names it in errors).
  static ExportInfo parse(const nlohmann::json& doc, const std::string& where);
  //! DIR/<graph's file>, once it exists and its sha256 is export.json's.
  std::string verified_graph(const std::string& dir, const std::string& graph) const;
};

//! Lower-case hex sha256 of a file's bytes.
std::string sha256_file(const std::string& path);

//! One image ready for the graph: [3, height, width] float32 (normalised, zero-padded), and its resized size.
struct Preprocessed {
  int height = 0;  //!< padded
  int width = 0;
  int resized_height = 0;
  int resized_width = 0;
  std::vector<float> chw;
};

//! torchvision's transform of one image (runtime.hpp, step 3).
Preprocessed preprocess(const Image& image, const ExportInfo& info);

//! One image's fixed-shape graph outputs.
struct RawOutput {
  int num = 0;
  int mask_size = 0;
  std::vector<float> boxes;   //!< [D, 4]
  std::vector<float> scores;  //!< [D]
  std::vector<std::int64_t> labels;
  std::vector<float> masks;  //!< [D, M, M]
};

//! Raw output -> detections on the original image (boxes scaled, masks pasted, scores below `threshold` dropped).
Detections to_detections(const RawOutput& raw, int resized_h, int resized_w, int height, int width,
                         float threshold, const std::vector<ClassInfo>& classes);

//! A graph runner: one pre-processed image in, its raw output out.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual RawOutput run(const Preprocessed& input) = 0;
  virtual std::string describe() const = 0;
};

std::unique_ptr<Backend> open_openvino(const std::string& export_dir, const ExportInfo& info, const Options& options);
//! The engine's export record is returned through `info`.
std::unique_ptr<Backend> open_tensorrt(const std::string& engine, ExportInfo& info);

//! Whether `path` names an existing folder / regular file.
bool is_dir(const std::string& path);
bool is_file(const std::string& path);

}  // namespace maskrt
