// OpenVINO's CPU plugin on model.onnx or model.int8.onnx (runtime/backends/openvino_runtime.py): the same compile
// configuration (inference precision, latency mode, threads) and the same refusals (plugin graphs, bf16 without it).
#include <algorithm>
#include <cstring>

#include <openvino/openvino.hpp>

#include "internal.hpp"

namespace maskrt {

namespace {

const char* const kOutputs[] = {"num_detections", "boxes", "scores", "labels", "masks"};

std::vector<float> as_floats(const ov::Tensor& t, size_t offset, size_t count) {
  std::vector<float> out(count);
  if (t.get_element_type() == ov::element::f32) {
    std::memcpy(out.data(), t.data<const float>() + offset, count * sizeof(float));
  } else if (t.get_element_type() == ov::element::f16) {
    const auto* p = t.data<const ov::float16>() + offset;
    for (size_t i = 0; i < count; ++i) out[i] = static_cast<float>(p[i]);
  } else {
    throw Error("OpenVINO gave an output of type " + t.get_element_type().get_type_name() + " where floats belong");
  }
  return out;
}

std::vector<std::int64_t> as_ints(const ov::Tensor& t, size_t offset, size_t count) {
  std::vector<std::int64_t> out(count);
  if (t.get_element_type() == ov::element::i64) {
    std::memcpy(out.data(), t.data<const std::int64_t>() + offset, count * sizeof(std::int64_t));
  } else if (t.get_element_type() == ov::element::i32) {
    const auto* p = t.data<const std::int32_t>() + offset;
    std::copy(p, p + count, out.begin());
  } else {
    throw Error("OpenVINO gave an output of type " + t.get_element_type().get_type_name() + " where integers belong");
  }
  return out;
}

class OpenVinoBackend : public Backend {
 public:
  OpenVinoBackend(const std::string& export_dir, const ExportInfo& info, const Options& options) : info_(info) {
    if (options.graph != "portable" && options.graph != "portable_int8") {
      if (options.graph == "trt" || options.graph == "trt_fp16" || options.graph == "trt_int8")
        throw Error("the " + options.graph + " graph holds maskrt's TensorRT plugin ops: OpenVINO runs the portable "
                    "graphs (--graph portable or portable_int8)");
      throw Error("unknown graph '" + options.graph + "' (choose from portable, portable_int8)");
    }
    if (options.precision != "f32" && options.precision != "bf16")
      throw Error("unknown OpenVINO precision '" + options.precision + "' (choose from f32, bf16)");
    if (options.threads < 0) throw Error("threads must be at least 1, got " + std::to_string(options.threads));
    const std::string path = info.verified_graph(export_dir, options.graph);
    try {
      if (options.precision == "bf16") {
        auto caps = core_.get_property("CPU", ov::device::capabilities);
        if (std::find(caps.begin(), caps.end(), ov::device::capability::BF16) == caps.end())
          throw Error("--precision bf16 needs a CPU with native bfloat16 (AVX-512 BF16 or AMX); this CPU's OpenVINO "
                      "plugin offers only f32 here (use --precision f32)");
      }
      const ov::element::Type precision = options.precision == "bf16" ? ov::element::bf16 : ov::element::f32;
      ov::AnyMap config{{ov::hint::inference_precision.name(), precision},
                        {ov::hint::performance_mode.name(), ov::hint::PerformanceMode::LATENCY}};
      if (options.threads > 0) config[ov::inference_num_threads.name()] = options.threads;
      compiled_ = core_.compile_model(core_.read_model(path), "CPU", config);
      request_ = compiled_.create_infer_request();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& exc) {
      std::string what = exc.what();
      what = what.substr(0, std::min(what.find('\n'), static_cast<size_t>(300)));
      throw Error(path + ": OpenVINO cannot load it (" + what + ")");
    }
    described_ = "openvino " + info.graphs.at(options.graph).file + " " + options.precision +
                 (options.threads > 0 ? " (" + std::to_string(options.threads) + " threads)" : "");
  }

  RawOutput run(const Preprocessed& in) override {
    // a static-batch graph gets the image in slot 0 and empty images (sizes copied) in the others
    const size_t batch = info_.dynamic_batch ? 1 : static_cast<size_t>(info_.batch);
    const size_t plane = in.chw.size();
    ov::Tensor images(ov::element::f32, {batch, 3, static_cast<size_t>(in.height), static_cast<size_t>(in.width)});
    std::fill_n(images.data<float>(), batch * plane, 0.0f);
    std::memcpy(images.data<float>(), in.chw.data(), plane * sizeof(float));
    ov::Tensor sizes(ov::element::i64, {batch, 2});
    for (size_t b = 0; b < batch; ++b) {
      sizes.data<std::int64_t>()[2 * b] = in.resized_height;
      sizes.data<std::int64_t>()[2 * b + 1] = in.resized_width;
    }
    try {
      request_.set_tensor("images", images);
      request_.set_tensor("image_sizes", sizes);
      request_.infer();
    } catch (const std::exception& exc) {
      std::string what = exc.what();
      throw Error("OpenVINO could not run the graph (" + what.substr(0, std::min(what.find('\n'), size_t{300})) + ")");
    }
    const ov::Tensor num = request_.get_tensor(kOutputs[0]), boxes = request_.get_tensor(kOutputs[1]),
                     scores = request_.get_tensor(kOutputs[2]), labels = request_.get_tensor(kOutputs[3]),
                     masks = request_.get_tensor(kOutputs[4]);
    const ov::Shape ms = masks.get_shape();  // [B, D, M, M]
    const size_t slots = ms.at(1), m = ms.at(3);
    RawOutput raw;
    raw.num = static_cast<int>(as_ints(num, 0, 1)[0]);
    raw.mask_size = static_cast<int>(m);
    raw.boxes = as_floats(boxes, 0, slots * 4);
    raw.scores = as_floats(scores, 0, slots);
    raw.labels = as_ints(labels, 0, slots);
    raw.masks = as_floats(masks, 0, slots * m * m);
    raw.num = std::clamp(raw.num, 0, static_cast<int>(slots));
    return raw;
  }

  std::string describe() const override { return described_; }

 private:
  ExportInfo info_;
  ov::Core core_;
  ov::CompiledModel compiled_;
  ov::InferRequest request_;
  std::string described_;
};

}  // namespace

std::unique_ptr<Backend> open_openvino(const std::string& export_dir, const ExportInfo& info, const Options& options) {
  return std::make_unique<OpenVinoBackend>(export_dir, info, options);
}

}  // namespace maskrt
