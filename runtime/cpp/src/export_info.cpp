// export.json (core/artifacts.py ExportInfo, format 2) and the graph files' sha256.
#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "internal.hpp"

namespace maskrt {

namespace {

constexpr int kExportFormatVersion = 2;

using json = nlohmann::json;

const json& field(const json& doc, const char* key, const std::string& where) {
  if (!doc.is_object() || !doc.contains(key)) throw Error(where + ": missing field '" + key + "'");
  return doc.at(key);
}

int int_field(const json& doc, const char* key, const std::string& where) {
  const json& v = field(doc, key, where);
  if (!v.is_number_integer()) throw Error(where + ": field '" + key + "' must be an integer");
  return v.get<int>();
}

bool bool_field(const json& doc, const char* key, const std::string& where) {
  const json& v = field(doc, key, where);
  if (!v.is_boolean()) throw Error(where + ": field '" + key + "' must be true or false");
  return v.get<bool>();
}

std::array<float, 3> triple(const json& doc, const char* key, const std::string& where) {
  const json& v = field(doc, key, where);
  if (!v.is_array() || v.size() != 3 || !v[0].is_number() || !v[1].is_number() || !v[2].is_number())
    throw Error(where + ": field '" + key + "' must be three numbers");
  // torchvision normalises with float32 tensors of these values
  return {static_cast<float>(v[0].get<double>()), static_cast<float>(v[1].get<double>()),
          static_cast<float>(v[2].get<double>())};
}

int range_max(const json& doc, const char* key, const std::string& where) {
  const json& v = field(doc, key, where);
  if (!v.is_array() || v.size() != 2 || !v[1].is_number_integer())
    throw Error(where + ": field '" + key + "' must be [min, max]");
  return v[1].get<int>();
}

}  // namespace

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open it");
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

ExportInfo ExportInfo::parse(const json& doc, const std::string& where) {
  if (!doc.is_object()) throw Error(where + ": not a JSON object");
  const int version = int_field(doc, "format_version", where);
  if (version != kExportFormatVersion)
    throw Error(where + ": export format_version " + std::to_string(version) + " is not supported (this runtime "
                "reads " + std::to_string(kExportFormatVersion) + "); export the checkpoint again");
  ExportInfo info;
  const json& classes = field(doc, "classes", where);
  if (!classes.is_array() || classes.empty()) throw Error(where + ": 'classes' must be a non-empty list");
  for (const json& c : classes) {
    const json& id = field(c, "id", where + " classes");
    const json& name = field(c, "name", where + " classes");
    if (!id.is_number_integer() || !name.is_string()) throw Error(where + ": each class needs an integer id and a name");
    info.classes.push_back({id.get<int>(), name.get<std::string>()});
  }
  const json& resize = field(doc, "resize", where);
  info.min_size = int_field(resize, "min_size", where + " resize");
  info.max_size = int_field(resize, "max_size", where + " resize");
  const json& norm = field(doc, "normalization", where);
  info.mean = triple(norm, "mean", where + " normalization");
  info.std = triple(norm, "std", where + " normalization");
  const json& input = field(doc, "input", where);
  info.batch = int_field(input, "batch", where + " input");
  info.dynamic_batch = bool_field(input, "dynamic_batch", where + " input");
  info.dynamic_size = bool_field(input, "dynamic_size", where + " input");
  info.canvas_height = int_field(input, "height", where + " input");
  info.canvas_width = int_field(input, "width", where + " input");
  info.max_height = range_max(input, "height_range", where + " input");
  info.max_width = range_max(input, "width_range", where + " input");
  if (info.min_size < 1 || info.max_size < 1 || info.batch < 1 || info.canvas_height < 1 || info.canvas_width < 1)
    throw Error(where + ": sizes must be positive");
  const json& graphs = field(doc, "graphs", where);
  if (!graphs.is_object()) throw Error(where + ": 'graphs' must be an object");
  for (const auto& [name, g] : graphs.items()) {
    const json& file = field(g, "file", where + " graphs." + name);
    const json& sha = field(g, "sha256", where + " graphs." + name);
    if (!file.is_string() || !sha.is_string()) throw Error(where + ": graphs." + name + " needs a file and a sha256");
    info.graphs[name] = {file.get<std::string>(), sha.get<std::string>()};
  }
  return info;
}

ExportInfo ExportInfo::read(const std::string& dir) {
  if (!is_dir(dir)) throw Error(dir + ": not an export folder (see `maskrt export`)");
  const std::string path = dir + "/export.json";
  std::ifstream in(path);
  if (!in) throw Error(path + ": missing (not an export folder; see `maskrt export`)");
  json doc = json::parse(in, nullptr, false);
  if (doc.is_discarded()) throw Error(path + ": not valid JSON");
  return parse(doc, path);
}

std::string ExportInfo::verified_graph(const std::string& dir, const std::string& graph) const {
  auto it = graphs.find(graph);
  if (it == graphs.end()) {
    const char* hint = graph == "portable_int8" ? " (run `maskrt quantize` to write it)" : "";
    throw Error(dir + ": the export holds no " + graph + " graph" + hint);
  }
  const std::string path = dir + "/" + it->second.file;
  if (!is_file(path)) throw Error(path + ": missing from the export folder");
  if (sha256_file(path) != it->second.sha256)
    throw Error(path + ": its sha256 differs from the one in export.json (the file was changed after the export); "
                "export the checkpoint again");
  return path;
}

}  // namespace maskrt
