// maskrt-infer: `maskrt predict` without Python. Same options, same results.json (COCO results with RLE masks, plus
// file_name and overlay), overlay PNGs (masks and boxes; no text). Bad input: one line "error: ..." on stderr, exit
// code 2, nothing written (the output folder is staged beside --out and renamed into place at the end).
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <png.h>

#include "maskrt/runtime.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* kUsage =
    "usage: maskrt-infer --model MODEL --out OUT [--backend openvino|tensorrt] [--graph portable|portable_int8]\n"
    "                    [--precision f32|bf16] [--threads N] [--score-threshold F] [--no-overlays] [--force]\n"
    "                    [--quiet] IMAGES...\n"
    "       maskrt-infer --model MODEL --stdin [--backend ...] [--graph ...] [--precision ...] [--threads N]\n"
    "\n"
    "Detect on PNG/JPEG images with a maskrt export (openvino) or engine (tensorrt), without Python; writes\n"
    "OUT/results.json (the format of `maskrt predict`) and OUT/STEM.overlay.png per image.\n"
    "  --model MODEL          export folder (openvino) or engine file with its ENGINE.json (tensorrt)\n"
    "  --out OUT              output folder (absent or empty, or --force)\n"
    "  --backend NAME         openvino (default) | tensorrt\n"
    "  --graph NAME           openvino's graph: portable (model.onnx, default) | portable_int8 (model.int8.onnx)\n"
    "  --precision P          openvino's inference precision: f32 (default) | bf16\n"
    "  --threads N            openvino inference threads (default: OpenVINO's)\n"
    "  --score-threshold F    drop detections below, in [0, 1] (default 0.5)\n"
    "  --no-overlays          write results.json only\n"
    "  --force                replace a non-empty OUT\n"
    "  --quiet                no progress line (shown on a terminal only)\n"
    "  IMAGES                 image files, or folders (scanned for images by suffix)\n"
    "  --stdin                serve: read image paths from standard input, one per line, and answer each with one\n"
    "                         JSON line {\"file\", \"detections\", \"ms\"} (ms: predict, from the decoded image to\n"
    "                         pasted masks) or {\"error\"}; writes no files (used by `maskrt bench compare`)\n";

bool progress_open = false;  // a progress line without its newline is on the terminal

const char* const kImageSuffixes[] = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"};

const unsigned char kPalette[10][3] = {{230, 25, 75},  {60, 180, 75},  {255, 225, 25}, {0, 130, 200}, {245, 130, 48},
                                       {145, 30, 180}, {70, 240, 240}, {240, 50, 230}, {210, 245, 60}, {250, 190, 212}};

struct Args {
  std::string model, out, backend = "openvino", graph = "portable", precision = "f32";
  int threads = 0;
  float score_threshold = 0.5f;
  bool overlays = true, force = false, quiet = false, stdin = false;
  std::vector<std::string> images;
};

std::string lower_suffix(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

bool has_image_suffix(const std::string& path) {
  const std::string ext = lower_suffix(path);
  return std::any_of(std::begin(kImageSuffixes), std::end(kImageSuffixes), [&](const char* s) { return ext == s; });
}

int parse_int(const std::string& option, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < 1 || v > INT_MAX)
    throw maskrt::Error(option + " " + text + ": must be a positive integer");
  return static_cast<int>(v);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw maskrt::Error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--model") {
      a.model = value();
    } else if (arg == "--out") {
      a.out = value();
    } else if (arg == "--backend") {
      a.backend = value();
    } else if (arg == "--graph") {
      a.graph = value();
    } else if (arg == "--precision") {
      a.precision = value();
    } else if (arg == "--threads") {
      a.threads = parse_int(arg, value());
    } else if (arg == "--score-threshold") {
      const std::string text = value();
      char* end = nullptr;
      const float v = std::strtof(text.c_str(), &end);
      if (text.empty() || *end != '\0' || !(v >= 0.0f && v <= 1.0f))
        throw maskrt::Error("--score-threshold " + text + ": must be a number in [0, 1]");
      a.score_threshold = v;
    } else if (arg == "--no-overlays") {
      a.overlays = false;
    } else if (arg == "--force") {
      a.force = true;
    } else if (arg == "--quiet") {
      a.quiet = true;
    } else if (arg == "--stdin") {
      a.stdin = true;
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw maskrt::Error("unknown option " + arg + " (see --help)");
    } else {
      a.images.push_back(arg);
    }
  }
  if (a.model.empty()) throw maskrt::Error("--model is required (see --help)");
  if (a.stdin && (!a.out.empty() || !a.images.empty()))
    throw maskrt::Error("--stdin reads the images from standard input and writes no files: drop --out and IMAGES");
  if (!a.stdin && a.out.empty()) throw maskrt::Error("--out is required (see --help)");
  if (!a.stdin && a.images.empty()) throw maskrt::Error("no images given");
  if (a.backend != "openvino" && a.backend != "tensorrt")
    throw maskrt::Error("unknown backend '" + a.backend + "' (choose from openvino, tensorrt)");
  if (a.precision != "f32" && a.precision != "bf16")
    throw maskrt::Error("unknown precision '" + a.precision + "' (choose from f32, bf16)");
  if (a.backend == "tensorrt" && (a.precision != "f32" || a.graph != "portable" || a.threads != 0))
    throw maskrt::Error("--precision, --graph and --threads are OpenVINO's: an engine's precision comes from "
                        "`maskrt build --precision`");
  return a;
}

// The images the user named (cli/predict.py _image_files): files as given, folders scanned by suffix (sorted).
std::vector<std::string> image_files(const std::vector<std::string>& paths) {
  std::vector<std::string> files;
  std::set<std::string> seen;
  for (const std::string& text : paths) {
    std::vector<std::string> found;
    struct stat st {};
    if (::stat(text.c_str(), &st) != 0) throw maskrt::Error(text + ": image not found");
    if (S_ISDIR(st.st_mode)) {
      if (has_image_suffix(text) && text.back() != '/')
        throw maskrt::Error(text + ": is a folder, not an image file (to scan a folder named like an image, write " +
                            text + "/)");
      for (const auto& entry : fs::directory_iterator(text))
        if (entry.is_regular_file() && has_image_suffix(entry.path().string()))
          found.push_back((fs::path(text) / entry.path().filename()).string());
      std::sort(found.begin(), found.end());
      if (found.empty()) throw maskrt::Error(text + ": folder holds no images");
    } else if (S_ISREG(st.st_mode)) {
      found.push_back(text);
    } else {
      throw maskrt::Error(text + ": not a regular file or folder");
    }
    for (const std::string& f : found) {
      const std::string key = fs::canonical(f).string();
      if (seen.insert(key).second) files.push_back(f);
    }
  }
  return files;
}

std::vector<std::string> overlay_names(const std::vector<std::string>& files) {
  std::vector<std::string> names;
  std::set<std::string> seen;
  for (const std::string& f : files) {
    const std::string stem = fs::path(f).stem().string();
    std::string name = stem + ".overlay.png";
    for (int n = 2; seen.count(name); ++n) name = stem + "." + std::to_string(n) + ".overlay.png";
    seen.insert(name);
    names.push_back(name);
  }
  return names;
}

// An absolute, normalised path whose existing part has its symbolic links resolved.
fs::path resolved(const std::string& path) { return fs::weakly_canonical(fs::absolute(path)); }

bool inside(const fs::path& child, const fs::path& parent) {
  auto c = child.begin(), p = parent.begin();
  for (; p != parent.end() && !p->empty(); ++p, ++c)
    if (c == child.end() || *c != *p) return false;
  return true;
}

void check_output(const Args& a) {
  const fs::path out = resolved(a.out);
  const fs::path model = resolved(a.model);
  if (!fs::exists(model))
    throw maskrt::Error(a.model + ": not found (an export folder, or an engine file for --backend tensorrt)");
  if (fs::is_directory(model) && (inside(out, model) || inside(model, out)))
    throw maskrt::Error(a.out + ": lies inside the model's folder " + model.string() + " (or holds it): choose "
                        "another --out");
  if (!fs::is_directory(model) && (inside(model, out) || out == fs::path(model.string() + ".json")))
    throw maskrt::Error(a.out + ": is or holds the engine " + a.model + ": choose another --out");
  for (const std::string& img : a.images)
    if (inside(resolved(img), out)) throw maskrt::Error(a.out + ": holds the input " + img + ": choose another --out");
  if (fs::exists(out)) {
    if (!fs::is_directory(out)) throw maskrt::Error(a.out + ": exists and is not a folder");
    if (!fs::is_empty(out) && !a.force)
      throw maskrt::Error(a.out + ": exists and is not empty (pass --force to replace it)");
  }
  if (!fs::is_directory(out.parent_path())) throw maskrt::Error(a.out + ": its parent folder does not exist");
  if (::access(out.parent_path().c_str(), W_OK | X_OK) != 0) throw maskrt::Error(a.out + ": cannot be written");
}

// Python's round(value, digits): the correctly rounded decimal (printf is exact), read back as the nearest double.
double rounded(double value, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, value);
  return std::strtod(buf, nullptr);
}

void write_overlay(const maskrt::Image& image, const maskrt::Detections& dets, const std::string& path) {
  std::vector<float> canvas(image.rgb.begin(), image.rgb.end());
  const int w = image.width, h = image.height;
  for (const auto& d : dets.items) {
    const unsigned char* colour = kPalette[d.label % 10];
    for (size_t i = 0; i < d.mask.size(); ++i)
      if (d.mask[i])
        for (int c = 0; c < 3; ++c) canvas[3 * i + c] = 0.5f * canvas[3 * i + c] + 0.5f * colour[c];
  }
  std::vector<unsigned char> px(canvas.size());
  for (size_t i = 0; i < canvas.size(); ++i) px[i] = static_cast<unsigned char>(std::clamp(canvas[i], 0.0f, 255.0f));
  for (const auto& d : dets.items) {  // 2-pixel box outlines
    const unsigned char* colour = kPalette[d.label % 10];
    const int x1 = std::clamp(static_cast<int>(d.box[0]), 0, w - 1), x2 = std::clamp(static_cast<int>(d.box[2]), 0, w - 1);
    const int y1 = std::clamp(static_cast<int>(d.box[1]), 0, h - 1), y2 = std::clamp(static_cast<int>(d.box[3]), 0, h - 1);
    auto put = [&](int x, int y) {
      if (x >= 0 && x < w && y >= 0 && y < h) std::memcpy(&px[(static_cast<size_t>(y) * w + x) * 3], colour, 3);
    };
    for (int t = 0; t < 2; ++t) {
      for (int x = x1; x <= x2; ++x) put(x, y1 + t), put(x, y2 - t);
      for (int y = y1; y <= y2; ++y) put(x1 + t, y), put(x2 - t, y);
    }
  }
  png_image out{};
  out.version = PNG_IMAGE_VERSION;
  out.width = static_cast<png_uint_32>(w);
  out.height = static_cast<png_uint_32>(h);
  out.format = PNG_FORMAT_RGB;
  if (!png_image_write_to_file(&out, path.c_str(), 0, px.data(), 0, nullptr))
    throw maskrt::Error(path + ": cannot write it (" + out.message + ")");
}

maskrt::Options options_of(const Args& a) {
  maskrt::Options options;
  options.backend = a.backend;
  options.graph = a.graph;
  options.precision = a.precision;
  options.threads = a.threads;
  options.score_threshold = a.score_threshold;
  return options;
}

// --stdin: one JSON line per image path read; an image that fails answers {"error"} and the loop goes on.
int serve(const Args& a) {
  maskrt::Predictor predictor = maskrt::Predictor::open(a.model, options_of(a));
  std::cout << json({{"ready", predictor.describe()}}).dump() << std::endl;
  for (std::string path; std::getline(std::cin, path);) {
    if (path.empty()) continue;
    try {
      const maskrt::Image image = maskrt::load_image(path);
      const auto start = std::chrono::steady_clock::now();
      const std::vector<maskrt::Detections> dets = predictor.predict({image});
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      std::cout << json({{"file", path}, {"detections", dets[0].items.size()}, {"ms", ms}}).dump() << std::endl;
    } catch (const maskrt::Error& exc) {
      std::cout << json({{"file", path}, {"error", exc.what()}}).dump() << std::endl;
    }
  }
  return 0;
}

int run(const Args& a) {
  if (a.stdin) return serve(a);
  check_output(a);
  const std::vector<std::string> files = image_files(a.images);
  const std::vector<std::string> names = overlay_names(files);
  maskrt::Predictor predictor = maskrt::Predictor::open(a.model, options_of(a));

  const fs::path out = resolved(a.out);
  const fs::path staging = out.parent_path() / ("." + out.filename().string() + ".partial-" + std::to_string(::getpid()));
  fs::remove_all(staging);
  fs::create_directory(staging);
  try {
    const bool progress = !a.quiet && ::isatty(2);  // a progress line on a terminal only (a log gets the summary)
    json results = json::array();
    const auto start = std::chrono::steady_clock::now();
    for (size_t i = 0; i < files.size(); ++i) {
      const maskrt::Image image = maskrt::load_image(files[i]);
      std::vector<maskrt::Detections> dets;
      try {
        dets = predictor.predict({image});
      } catch (const maskrt::Error& exc) {
        throw maskrt::Error(files[i] + ": " + exc.what());
      }
      if (a.overlays) write_overlay(image, dets[0], (staging / names[i]).string());
      for (const maskrt::Detection& d : dets[0].items) {
        const double x1 = d.box[0], y1 = d.box[1], x2 = d.box[2], y2 = d.box[3];
        json r = {{"image_id", static_cast<int>(i) + 1},
                  {"category_id", d.category_id},
                  {"bbox", {rounded(x1, 3), rounded(y1, 3), rounded(x2 - x1, 3), rounded(y2 - y1, 3)}},
                  {"score", rounded(d.score, 5)},
                  {"segmentation", {{"size", {image.height, image.width}},
                                    {"counts", maskrt::encode_rle(d.mask, image.height, image.width)}}},
                  {"file_name", files[i]}};
        if (a.overlays) r["overlay"] = names[i];
        results.push_back(std::move(r));
      }
      if (progress) std::cerr << "\rpredict " << i + 1 << "/" << files.size() << std::flush;
      progress_open = progress;
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (progress) std::cerr << "\n";
    progress_open = false;
    {  // a write that fails (full disk, file-size limit) is an error: the previous --out stays as it was
      std::ofstream file(staging / "results.json");
      file << results.dump(1) << "\n";
      file.close();
      if (!file) throw maskrt::Error((staging / "results.json").string() + ": cannot write it (disk full?)");
    }
    if (fs::exists(out)) fs::remove_all(out);
    fs::rename(staging, out);
    std::cout << "wrote " << results.size() << " detections for " << files.size() << " image(s) to "
              << (fs::path(a.out) / "results.json").string() << " (" << predictor.describe() << ", " << std::fixed
              << std::setprecision(1) << (files.empty() ? 0.0 : 1000.0 * seconds / files.size())
              << " ms per image with decoding)\n";
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    throw;
  }
  return 0;
}

// The error on a line of its own, also after a progress line on a terminal.
std::string one_line(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  if (progress_open) std::cerr << "\n";
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const maskrt::Error& exc) {
    std::cerr << "error: " << one_line(exc.what()) << "\n";
  } catch (const fs::filesystem_error& exc) {
    std::cerr << "error: " << one_line(exc.what()) << "\n";
  } catch (const std::exception& exc) {
    std::cerr << "error: " << one_line(exc.what()) << "\n";
  }
  return 2;
}
