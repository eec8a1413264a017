// maskrt::Predictor: open a model, then images -> detections (runtime/predictor.py).
#include <cmath>

#include "internal.hpp"

namespace maskrt {

struct Predictor::Impl {
  ExportInfo info;
  Options options;
  std::unique_ptr<Backend> backend;
};

Predictor::Predictor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Predictor::Predictor(Predictor&&) noexcept = default;
Predictor& Predictor::operator=(Predictor&&) noexcept = default;
Predictor::~Predictor() = default;

Predictor Predictor::open(const std::string& model, const Options& options) {
  if (!(options.score_threshold >= 0.0f && options.score_threshold <= 1.0f))
    throw Error("score threshold must be in [0, 1], got " + std::to_string(options.score_threshold));
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (options.backend == "openvino") {
    if (!is_dir(model))
      throw Error(model + ": the openvino backend needs an export folder (see `maskrt export`)");
    impl->info = ExportInfo::read(model);
    impl->backend = open_openvino(model, impl->info, options);
  } else if (options.backend == "tensorrt") {
    if (is_dir(model)) throw Error(model + ": --backend tensorrt takes an engine file (see `maskrt build`)");
    impl->backend = open_tensorrt(model, impl->info);
  } else {
    throw Error("unknown backend '" + options.backend + "' (choose from openvino, tensorrt)");
  }
  return Predictor(std::move(impl));
}

std::vector<Detections> Predictor::predict(const std::vector<Image>& images) {
  std::vector<Detections> out;
  out.reserve(images.size());
  for (const Image& image : images) {
    if (image.width < 1 || image.height < 1 ||
        image.rgb.size() != static_cast<size_t>(image.width) * image.height * 3)
      throw Error("an image's pixel buffer does not hold width * height * 3 bytes");
    const Preprocessed in = preprocess(image, impl_->info);
    const RawOutput raw = impl_->backend->run(in);
    for (const auto* values : {&raw.boxes, &raw.scores, &raw.masks})
      for (float v : *values)
        if (!std::isfinite(v))
          throw Error("the network's outputs hold non-finite values (NaN or infinity): its weights or graph are "
                      "broken");
    out.push_back(to_detections(raw, in.resized_height, in.resized_width, image.height, image.width,
                                impl_->options.score_threshold, impl_->info.classes));
  }
  return out;
}

const std::vector<ClassInfo>& Predictor::classes() const { return impl_->info.classes; }

std::string Predictor::describe() const { return impl_->backend->describe(); }

}  // namespace maskrt

#ifndef MASKRT_WITH_TENSORRT
namespace maskrt {
std::unique_ptr<Backend> open_tensorrt(const std::string&, ExportInfo&) {
  throw Error(std::string("this build of the C++ runtime has no TensorRT backend: ") + MASKRT_TENSORRT_SKIPPED);
}
}  // namespace maskrt
#endif

#ifndef MASKRT_WITH_OPENVINO
namespace maskrt {
std::unique_ptr<Backend> open_openvino(const std::string&, const ExportInfo&, const Options&) {
  throw Error("this build of the C++ runtime has no OpenVINO backend (built with MASKRT_CPP_OPENVINO=OFF)");
}
}  // namespace maskrt
#endif
