// PNG and JPEG to upright 8-bit RGB, as core/images.py (Pillow) reads them.
//
// - PNG (libpng): palette expanded, gray and gray+alpha replicated, alpha dropped, 16-bit RGB(A) reduced to the high
//   byte (Pillow's raw modes), 16-bit gray scaled by 255 / peak when the peak is above 255 (core/images.py);
//   orientation from an eXIf chunk.
// - JPEG (libjpeg, its default IDCT and upsampling, as Pillow's libjpeg-turbo): YCbCr/RGB to RGB, gray replicated;
//   CMYK is refused; orientation from the APP1 Exif segment.
// - EXIF orientation 2..8 applied as Pillow's ImageOps.exif_transpose.
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "internal.hpp"

namespace maskrt {

namespace {

constexpr long long kDefaultMaxPixels = 100000000LL;  // core/defaults.py DEFAULT_FILE_MAX_PIXELS

long long max_pixels() {
  const char* text = std::getenv("MASKRT_MAX_IMAGE_PIXELS");
  if (text == nullptr) return kDefaultMaxPixels;
  char* end = nullptr;
  long long v = std::strtoll(text, &end, 10);
  if (*text == '\0' || *end != '\0' || v < 1)
    throw Error(std::string("MASKRT_MAX_IMAGE_PIXELS='") + text + "': must be a positive integer");
  return v;
}

void check_size(const std::string& path, long long w, long long h) {
  const long long limit = max_pixels();
  if (w * h > limit)
    throw Error(path + ": " + std::to_string(w) + "x" + std::to_string(h) + " is more than the limit of " +
                std::to_string(limit) + " pixels (set MASKRT_MAX_IMAGE_PIXELS to raise it)");
  if (w < 1 || h < 1) throw Error(path + ": cannot read image (empty)");
}

// --- EXIF: the orientation tag (0x0112) of a TIFF-structured block --------------------------------------------------
int exif_orientation(const unsigned char* p, size_t n) {
  if (n < 8) return 1;
  const bool le = p[0] == 'I' && p[1] == 'I';
  if (!le && !(p[0] == 'M' && p[1] == 'M')) return 1;
  auto u16 = [&](size_t o) -> unsigned { return le ? p[o] | (p[o + 1] << 8) : (p[o] << 8) | p[o + 1]; };
  auto u32 = [&](size_t o) -> unsigned long {
    return le ? p[o] | (p[o + 1] << 8) | (p[o + 2] << 16) | (static_cast<unsigned long>(p[o + 3]) << 24)
              : (static_cast<unsigned long>(p[o]) << 24) | (p[o + 1] << 16) | (p[o + 2] << 8) | p[o + 3];
  };
  const unsigned long ifd = u32(4);
  if (ifd + 2 > n) return 1;
  const unsigned count = u16(ifd);
  for (unsigned i = 0; i < count; ++i) {
    const size_t e = ifd + 2 + 12 * static_cast<size_t>(i);
    if (e + 12 > n) break;
    if (u16(e) == 0x0112) {
      const unsigned v = u16(e + 8);
      return v >= 1 && v <= 8 ? static_cast<int>(v) : 1;
    }
  }
  return 1;
}

// Pillow's exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 270 (clockwise 90),
// 7 transverse, 8 rotate 90 (counter-clockwise).
Image orient(Image in, int orientation) {
  if (orientation <= 1) return in;
  const int w = in.width, h = in.height;
  const bool swap = orientation >= 5;
  Image out;
  out.width = swap ? h : w;
  out.height = swap ? w : h;
  out.rgb.resize(in.rgb.size());
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;  // source pixel of output (x, y)
      switch (orientation) {
        case 2: sx = w - 1 - x; break;
        case 3: sx = w - 1 - x; sy = h - 1 - y; break;
        case 4: sy = h - 1 - y; break;
        case 5: sx = y; sy = x; break;
        case 6: sx = y; sy = h - 1 - x; break;
        case 7: sx = w - 1 - y; sy = h - 1 - x; break;
        case 8: sx = w - 1 - y; sy = x; break;
        default: break;
      }
      std::memcpy(&out.rgb[(static_cast<size_t>(y) * out.width + x) * 3],
                  &in.rgb[(static_cast<size_t>(sy) * w + sx) * 3], 3);
    }
  }
  return out;
}

struct File {
  std::FILE* f;
  explicit File(const std::string& path) : f(std::fopen(path.c_str(), "rb")) {}
  ~File() {
    if (f) std::fclose(f);
  }
};

// --- PNG ---------------------------------------------------------------------------------------------------------
struct PngError {
  std::string message;
};

void png_error_fn(png_structp png, png_const_charp msg) {
  static_cast<PngError*>(png_get_error_ptr(png))->message = msg;
  png_longjmp(png, 1);
}

void png_warning_fn(png_structp, png_const_charp) {}

Image read_png(const std::string& path, std::FILE* f) {
  PngError err;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_error_fn, png_warning_fn);
  png_infop info = png_create_info_struct(png);
  png_infop end = png_create_info_struct(png);
  Image image;
  std::vector<png_bytep> rows;
  std::vector<std::uint8_t> data;
  volatile int orientation = 1;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, &end);
    throw Error(path + ": cannot read image (" + err.message + ")");
  }
  png_init_io(png, f);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  png_read_info(png, info);
  const png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  check_size(path, w, h);
  const int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  const bool gray16 = depth == 16 && color == PNG_COLOR_TYPE_GRAY;
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16 && !gray16) png_set_strip_16(png);  // Pillow's RGB;16B / RGBA;16B / LA;16B: the high byte
  if (gray16) png_set_swap(png);                     // host order for the peak scaling below
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const size_t rowbytes = png_get_rowbytes(png, info);
  const int channels = png_get_channels(png, info);
  data.resize(rowbytes * h);
  rows.resize(h);
  for (png_uint_32 y = 0; y < h; ++y) rows[y] = data.data() + y * rowbytes;
  png_read_image(png, rows.data());
  png_read_end(png, end);
  png_uint_32 exif_len = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(png, info, &exif_len, &exif) || png_get_eXIf_1(png, end, &exif_len, &exif))
    orientation = exif_orientation(exif, exif_len);
  png_destroy_read_struct(&png, &info, &end);

  image.width = static_cast<int>(w);
  image.height = static_cast<int>(h);
  image.rgb.resize(static_cast<size_t>(w) * h * 3);
  const size_t pixels = static_cast<size_t>(w) * h;
  if (gray16) {  // core/images.py: float64, scale = 255 / peak when peak > 255, clip, truncate
    const auto* v = reinterpret_cast<const std::uint16_t*>(data.data());
    unsigned peak = 0;
    for (size_t i = 0; i < pixels; ++i) peak = v[i] > peak ? v[i] : peak;
    const double scale = peak > 255 ? 255.0 / peak : 1.0;
    for (size_t i = 0; i < pixels; ++i) {
      double s = v[i] * scale;
      s = s < 0 ? 0 : (s > 255 ? 255 : s);
      const auto b = static_cast<std::uint8_t>(s);
      image.rgb[3 * i] = image.rgb[3 * i + 1] = image.rgb[3 * i + 2] = b;
    }
  } else {
    for (size_t i = 0; i < pixels; ++i) {
      const std::uint8_t* p = data.data() + (i / w) * rowbytes + (i % w) * channels;
      if (channels <= 2) {
        image.rgb[3 * i] = image.rgb[3 * i + 1] = image.rgb[3 * i + 2] = p[0];
      } else {
        std::memcpy(&image.rgb[3 * i], p, 3);
      }
    }
  }
  return orient(std::move(image), orientation);
}

// --- JPEG --------------------------------------------------------------------------------------------------------
struct JpegError {
  jpeg_error_mgr mgr;  // first: libjpeg's pointer to it is a pointer to this
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated;
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings are silent; the one that says the data ended early is remembered (libjpeg fills the missing rows with gray
// where Pillow refuses the file: "image file is truncated").
void jpeg_warning(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) reinterpret_cast<JpegError*>(cinfo->err)->truncated = true;
}

Image read_jpeg(const std::string& path, std::FILE* f) {
  jpeg_decompress_struct cinfo{};
  JpegError err{};
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  err.mgr.emit_message = jpeg_warning;
  Image image;
  std::vector<std::uint8_t> row;
  volatile int orientation = 1;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    throw Error(path + ": cannot read image (" + err.message + ")");
  }
  jpeg_create_decompress(&cinfo);
  jpeg_stdio_src(&cinfo, f);
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xffff);
  jpeg_read_header(&cinfo, TRUE);
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m != nullptr; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      orientation = exif_orientation(m->data + 6, m->data_length - 6);
      break;
    }
  }
  check_size(path, cinfo.image_width, cinfo.image_height);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&cinfo);
    throw Error(path + ": a CMYK JPEG, which maskrt-infer does not read (convert it to RGB)");
  }
  const bool gray = cinfo.jpeg_color_space == JCS_GRAYSCALE;
  cinfo.out_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  image.width = static_cast<int>(cinfo.output_width);
  image.height = static_cast<int>(cinfo.output_height);
  image.rgb.resize(static_cast<size_t>(image.width) * image.height * 3);
  row.resize(static_cast<size_t>(image.width) * cinfo.output_components);
  while (cinfo.output_scanline < cinfo.output_height) {
    const size_t y = cinfo.output_scanline;
    JSAMPROW rows[1] = {row.data()};
    jpeg_read_scanlines(&cinfo, rows, 1);
    std::uint8_t* out = &image.rgb[y * image.width * 3];
    if (gray) {
      for (int x = 0; x < image.width; ++x) out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = row[x];
    } else {
      std::memcpy(out, row.data(), row.size());
    }
  }
  const bool truncated = err.truncated;
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  if (truncated) throw Error(path + ": cannot read image (image file is truncated or corrupt)");
  return orient(std::move(image), orientation);
}

}  // namespace

Image load_image(const std::string& path) {
  if (is_dir(path)) throw Error(path + ": is a folder, not an image file");
  File file(path);
  if (file.f == nullptr) throw Error(path + ": image file not found or unreadable");
  if (!is_file(path)) throw Error(path + ": not a regular file");
  unsigned char magic[8] = {0};
  const size_t n = std::fread(magic, 1, sizeof magic, file.f);
  std::rewind(file.f);
  if (n == 8 && png_sig_cmp(magic, 0, 8) == 0) return read_png(path, file.f);
  if (n >= 3 && magic[0] == 0xff && magic[1] == 0xd8 && magic[2] == 0xff) return read_jpeg(path, file.f);
  throw Error(path + ": cannot read image (maskrt-infer reads PNG and JPEG)");
}

}  // namespace maskrt
