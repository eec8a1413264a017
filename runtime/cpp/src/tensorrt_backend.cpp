// TensorRT engines built by `maskrt build` (runtime/backends/tensorrt_engine.py), checked before anything is loaded
// against their ENGINE.json: the engine's sha256, the TensorRT library's version, the plugin library's sha256, a CUDA
// GPU of a compute capability the engine was built for. libnvinfer (TensorRT) or libtensorrt_rtx (TensorRT-RTX) is
// opened at run time (dlopen), so this backend compiles with TensorRT's headers alone; the plugin library is loaded
// the documented way (IPluginRegistry::loadLibrary). Compiled in CI; executed by scripts/gpu_suite.sh where a GPU
// with TensorRT exists (no machine of this project has one).
#include <dlfcn.h>

#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include "internal.hpp"

namespace maskrt {

namespace {

using json = nlohmann::json;

constexpr int kEngineFormatVersion = 3;  // core/artifacts.py ENGINE_FORMAT_VERSION

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << msg << "\n";
  }
};

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(std::string(what) + ": " + cudaGetErrorString(status));
}

// The plugin library: MASKRT_PLUGIN_LIBRARY, else the one installed beside this library in the maskrt package
// (maskrt/runtime/cpp/lib -> maskrt/plugins/lib).
std::string plugin_library() {
  if (const char* env = std::getenv("MASKRT_PLUGIN_LIBRARY")) return env;
  Dl_info self{};
  dladdr(reinterpret_cast<void*>(&plugin_library), &self);
  std::string dir = self.dli_fname ? self.dli_fname : "";
  dir = dir.substr(0, dir.rfind('/'));
  return dir + "/../../../plugins/lib/libmaskrt_plugins.so";
}

struct CudaBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  ~CudaBuffer() {
    if (ptr) cudaFree(ptr);
  }
  void resize(size_t n) {
    if (n <= bytes) return;
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    check_cuda(cudaMalloc(&ptr, n), "cudaMalloc");
    bytes = n;
  }
};

size_t element_size(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kHALF: return 2;
    case nvinfer1::DataType::kINT64: return 8;
    default: return 1;
  }
}

class TensorRTBackend : public Backend {
 public:
  TensorRTBackend(const std::string& engine, ExportInfo& info) {
    const std::string meta_path = engine + ".json";
    if (!is_file(engine)) throw Error(engine + ": engine file not found (build one with `maskrt build`)");
    std::ifstream meta_in(meta_path);
    if (!meta_in) throw Error(meta_path + ": missing (an engine runs with the ENGINE.json `maskrt build` wrote)");
    const json meta = json::parse(meta_in, nullptr, false);
    if (meta.is_discarded() || !meta.is_object()) throw Error(meta_path + ": not valid JSON");
    if (meta.value("format_version", 0) != kEngineFormatVersion)
      throw Error(meta_path + ": engine format_version is not " + std::to_string(kEngineFormatVersion) +
                  "; build the engine again");
    if (!meta.contains("export")) throw Error(meta_path + ": missing field 'export'");
    info = ExportInfo::parse(meta.at("export"), meta_path + " export");
    info_ = info;
    std::ifstream in(engine, std::ios::binary);
    data_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (sha256_file(engine) != meta.value("engine_sha256", ""))
      throw Error(engine + ": is not the engine its ENGINE.json describes (corrupt or replaced); build it again with "
                  "`maskrt build`");
    const std::string builder = meta.value("builder", "");
    const char* lib = builder == "tensorrt" ? "libnvinfer.so." : builder == "tensorrt-rtx" ? "libtensorrt_rtx.so." : nullptr;
    if (lib == nullptr) throw Error(meta_path + ": unknown builder '" + builder + "'");
    const std::string version = meta.value("builder_version", "");
    const std::string major = version.substr(0, version.find('.'));
    handle_ = dlopen((lib + major).c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (handle_ == nullptr)
      throw Error(engine + ": built with " + builder + " " + version + ", whose library " + lib + major +
                  " cannot be loaded here (" + dlerror() + ")");
    auto lib_version = reinterpret_cast<int32_t (*)()>(dlsym(handle_, "getInferLibVersion"));
    auto create = reinterpret_cast<void* (*)(void*, int32_t)>(dlsym(handle_, "createInferRuntime_INTERNAL"));
    if (lib_version == nullptr || create == nullptr) throw Error(std::string(lib) + major + ": not a TensorRT library");
    const int32_t v = lib_version();
    std::ostringstream installed;
    installed << v / 10000 << "." << (v / 100) % 100 << "." << v % 100;
    if (version.rfind(installed.str(), 0) != 0)
      throw Error(engine + ": built with " + builder + " " + version + " but " + installed.str() + " is installed; "
                  "an engine loads only into the TensorRT that built it: rebuild it with `maskrt build`");
    const std::string plugins = plugin_library();
    if (!is_file(plugins)) throw Error("the tensorrt backend needs the CUDA plugin library: " + plugins + " not found");
    if (sha256_file(plugins) != meta.value("plugin_library_sha256", ""))
      throw Error(engine + ": built with another plugin library than " + plugins + "; rebuild the engine with "
                  "`maskrt build` (or point MASKRT_PLUGIN_LIBRARY at the library it was built with)");
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0)
      throw Error("the tensorrt backend runs engines on a CUDA GPU and none is visible (use the openvino backend on "
                  "the CPU)");
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    const std::string capability = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    const auto caps = meta.value("compute_capabilities", std::vector<std::string>{});
    if (std::find(caps.begin(), caps.end(), capability) == caps.end())
      throw Error(engine + ": not built for this GPU (" + prop.name + ", compute capability " + capability +
                  "): rebuild it for this GPU");
    const json& profile = meta.at("profiles").at("images");
    min_ = profile.at("min").get<std::vector<int>>();
    max_ = profile.at("max").get<std::vector<int>>();

    runtime_ = static_cast<nvinfer1::IRuntime*>(create(&logger_, NV_TENSORRT_VERSION));
    if (runtime_ == nullptr) throw Error(builder + " could not create a runtime");
    if (runtime_->getPluginRegistry().loadLibrary(plugins.c_str()) == nullptr)
      throw Error(plugins + ": TensorRT could not load the plugin library (see its messages above)");
    engine_ = runtime_->deserializeCudaEngine(data_.data(), data_.size());
    if (engine_ == nullptr) throw Error(engine + ": " + builder + " could not deserialize it (see its messages above)");
    context_ = engine_->createExecutionContext();
    if (context_ == nullptr) throw Error(engine + ": no execution context");
    check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
    described_ = "tensorrt " + engine + " (" + meta.value("precision", "") + ")";
  }

  ~TensorRTBackend() override {
    delete context_;
    delete engine_;
    delete runtime_;
    if (stream_) cudaStreamDestroy(stream_);
  }

  RawOutput run(const Preprocessed& in) override {
    if (in.height < min_.at(2) || in.height > max_.at(2) || in.width < min_.at(3) || in.width > max_.at(3))
      throw Error("an image padded to " + std::to_string(in.height) + "x" + std::to_string(in.width) +
                  " is outside the engine's profile; build it with a wider --size");
    const int batch = min_.at(0);  // one image, padded with empty ones up to the profile's smallest batch
    const size_t plane = in.chw.size();
    std::vector<float> images(plane * batch, 0.0f);
    std::copy(in.chw.begin(), in.chw.end(), images.begin());
    std::vector<std::int64_t> sizes;
    for (int b = 0; b < batch; ++b) sizes.insert(sizes.end(), {in.resized_height, in.resized_width});
    buffers_["images"].resize(images.size() * sizeof(float));
    buffers_["image_sizes"].resize(sizes.size() * sizeof(std::int64_t));
    check_cuda(cudaMemcpyAsync(buffers_["images"].ptr, images.data(), images.size() * sizeof(float),
                               cudaMemcpyHostToDevice, stream_), "cudaMemcpy");
    check_cuda(cudaMemcpyAsync(buffers_["image_sizes"].ptr, sizes.data(), sizes.size() * sizeof(std::int64_t),
                               cudaMemcpyHostToDevice, stream_), "cudaMemcpy");
    context_->setInputShape("images", nvinfer1::Dims4{batch, 3, in.height, in.width});
    nvinfer1::Dims sz{};
    sz.nbDims = 2;
    sz.d[0] = batch;
    sz.d[1] = 2;
    context_->setInputShape("image_sizes", sz);
    context_->setTensorAddress("images", buffers_["images"].ptr);
    context_->setTensorAddress("image_sizes", buffers_["image_sizes"].ptr);
    const char* names[] = {"num_detections", "boxes", "scores", "labels", "masks"};
    std::map<std::string, std::vector<char>> host;
    std::map<std::string, nvinfer1::Dims> shapes;
    for (const char* name : names) {
      const nvinfer1::Dims d = context_->getTensorShape(name);
      size_t n = 1;
      for (int i = 0; i < d.nbDims; ++i) n *= static_cast<size_t>(d.d[i]);
      const size_t bytes = n * element_size(engine_->getTensorDataType(name));
      buffers_[name].resize(bytes);
      host[name].resize(bytes);
      shapes[name] = d;
      context_->setTensorAddress(name, buffers_[name].ptr);
    }
    if (!context_->enqueueV3(stream_)) throw Error("TensorRT could not run the engine (see its messages above)");
    for (const char* name : names)
      check_cuda(cudaMemcpyAsync(host[name].data(), buffers_[name].ptr, host[name].size(), cudaMemcpyDeviceToHost,
                                 stream_), "cudaMemcpy");
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    const size_t slots = static_cast<size_t>(shapes["masks"].d[1]), m = static_cast<size_t>(shapes["masks"].d[3]);
    RawOutput raw;
    raw.mask_size = static_cast<int>(m);
    raw.num = static_cast<int>(integers("num_detections", host, 1)[0]);
    raw.num = std::clamp(raw.num, 0, static_cast<int>(slots));
    raw.boxes = floats("boxes", host, slots * 4);
    raw.scores = floats("scores", host, slots);
    raw.labels = integers("labels", host, slots);
    raw.masks = floats("masks", host, slots * m * m);
    return raw;
  }

  std::string describe() const override { return described_; }

 private:
  std::vector<float> floats(const char* name, std::map<std::string, std::vector<char>>& host, size_t n) const {
    std::vector<float> out(n);
    const auto type = engine_->getTensorDataType(name);
    if (type == nvinfer1::DataType::kFLOAT) {
      std::memcpy(out.data(), host[name].data(), n * 4);
    } else if (type == nvinfer1::DataType::kHALF) {
      const auto* p = reinterpret_cast<const std::uint16_t*>(host[name].data());
      for (size_t i = 0; i < n; ++i) out[i] = half_to_float(p[i]);
    } else {
      throw Error(std::string("the engine's ") + name + " output is not float");
    }
    return out;
  }

  std::vector<std::int64_t> integers(const char* name, std::map<std::string, std::vector<char>>& host,
                                     size_t n) const {
    std::vector<std::int64_t> out(n);
    if (engine_->getTensorDataType(name) == nvinfer1::DataType::kINT64) {
      std::memcpy(out.data(), host[name].data(), n * 8);
    } else {
      const auto* p = reinterpret_cast<const std::int32_t*>(host[name].data());
      std::copy(p, p + n, out.begin());
    }
    return out;
  }

  static float half_to_float(std::uint16_t h) {
    const std::uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ffu;
    std::uint32_t bits;
    if (exp == 0) {
      if (mant == 0) {
        bits = sign;
      } else {  // subnormal
        int e = -1;
        std::uint32_t m = mant;
        do { ++e; m <<= 1; } while ((m & 0x400u) == 0);
        bits = sign | ((112 - e) << 23) | ((m & 0x3ffu) << 13);
      }
    } else if (exp == 31) {
      bits = sign | 0x7f800000u | (mant << 13);
    } else {
      bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }

  ExportInfo info_;
  Logger logger_;
  void* handle_ = nullptr;
  std::vector<char> data_;
  std::vector<int> min_, max_;
  nvinfer1::IRuntime* runtime_ = nullptr;
  nvinfer1::ICudaEngine* engine_ = nullptr;
  nvinfer1::IExecutionContext* context_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::map<std::string, CudaBuffer> buffers_;
  std::string described_;
};

}  // namespace

std::unique_ptr<Backend> open_tensorrt(const std::string& engine, ExportInfo& info) {
  return std::make_unique<TensorRTBackend>(engine, info);
}

}  // namespace maskrt
