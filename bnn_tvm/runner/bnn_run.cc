// bnn-run: run a bnn-tvm model (.so) with TVM's C++ runtime alone: no Python, no pip.
//
//   bnn-run model.so [--inputs x.npz] [--input [NAME=]x.npy ...] [--output y.npy] [--repeat N] [--threads T]
//                    [--seed S]
//
// The .so is a Relax VM executable made by `bnn-tvm compile`; it records the names, shapes and dtypes of its
// inputs and outputs (the VM function `bnn_signature`, JSON; bnn_tvm/signature.py), which bnn-run uses to feed
// inputs by name, make random ones, check given ones and name the outputs. It takes and says everything as
// `bnn-tvm run` does (the same flags, the same messages), so that moving a model from the Python CLI to a
// device changes nothing but the program's name. Files are what numpy writes: .npy, and the uncompressed .npz
// of np.savez. Build (the bundle's README has the exact line for its folder):
//
//   g++ -std=c++17 -O2 bnn_run.cc -o bnn-run -Iinclude -L. -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi
//       -Wl,-rpath,'$ORIGIN'
//
// Every failure is one line on stderr starting with "error:" and a non-zero exit status (2: bad usage or
// input, 1: the model or the runtime failed).

#include <sched.h>
#include <sys/stat.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

// A problem with what the user gave (arguments, files): exit status 2, like the Python CLI's usage errors.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Bytes that are not what their format says (a cut .npy, a zip without a central directory). Thrown by the
// parsers, which do not know where the bytes came from; the caller adds the file's name and makes it a UsageError.
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr const char* kSignatureFunction = "bnn_signature";           // bnn_tvm/signature.py SIGNATURE_FUNCTION
constexpr const char* kOldSignatureFunction = "bnn_input_signature";  // bnn-tvm before 0.4: the inputs only
constexpr int kPooledAllocator = 2;                                   // tvm/runtime/memory/memory_manager.h
constexpr int kShareAllCores = -3;  // ThreadGroup::kSpecifyThreadShareAllCore: workers float over a CPU list

// ------------------------------------------------------------------ text, as the Python CLI prints it

// Python's repr() of a str (`bytes`: of a bytes object), which is how `bnn-tvm run` quotes names and magic
// numbers: 'image', "it's", 'a\nb', b'\x93NUMPY'. Bytes above ASCII in a str pass unchanged, as Python prints
// the printable characters UTF-8 spells.
std::string PyRepr(std::string_view text, bool bytes = false) {
  char quote = text.find('\'') != std::string_view::npos && text.find('"') == std::string_view::npos ? '"' : '\'';
  std::string out = bytes ? "b" : "";
  out += quote;
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (c == quote || c == '\\') {
      out += {'\\', c};
    } else if (c == '\n' || c == '\r' || c == '\t') {
      out += {'\\', c == '\n' ? 'n' : c == '\r' ? 'r' : 't'};
    } else if (byte < 0x20 || byte == 0x7f || (bytes && byte > 0x7f)) {
      char hex[5];
      std::snprintf(hex, sizeof(hex), "\\x%02x", byte);
      out += hex;
    } else {
      out += c;
    }
  }
  return out + quote;
}

// "[1, 16, 16, 3]" (a Python list, in output lines) or, with separator ",", "[1,16,16,3]" (in input lines).
std::string ListText(const std::vector<int64_t>& shape, const char* separator = ", ") {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? separator : "") + std::to_string(shape[i]);
  return text + "]";
}

// "float32 [1,16,16,3]": a tensor as bnn_tvm.signature.TensorSpec.describe says it.
std::string Describe(const std::string& dtype, const std::vector<int64_t>& shape) {
  return dtype + " " + ListText(shape, ",");
}

std::string DTypeText(DLDataType dtype) { return std::string(ffi::DLDataTypeToString(dtype)); }

std::vector<int64_t> ShapeOf(const ffi::Tensor& tensor) { return {tensor.shape().begin(), tensor.shape().end()}; }

size_t ElementCount(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

size_t ElementBytes(DLDataType dtype) { return (dtype.bits * dtype.lanes + 7) / 8; }

// ------------------------------------------------------------------ JSON (the signature)

// A JSON value. The signature is json.dumps's output, so a name may hold any character JSON allows (quotes,
// backslashes, \uXXXX escapes, which json.dumps uses for everything beyond ASCII): it is parsed, not searched.
struct Json {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  double number = 0;                                 // a number's value; a bool's, 0 or 1
  std::string text;                                  // a string's UTF-8 bytes
  std::vector<Json> items;                           // an array's
  std::vector<std::pair<std::string, Json>> fields;  // an object's, in order

  const Json* Field(std::string_view key) const {
    for (const auto& [name, value] : fields) {
      if (name == key) return &value;
    }
    return nullptr;
  }
};

class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : text_(text) {}

  Json Document() {
    Json value = Value(0);
    SkipSpace();
    if (at_ != text_.size()) Fail("text after the value");
    return value;
  }

 private:
  // A signature nests three deep; a corrupt one must fail with a message, not exhaust the stack.
  static constexpr int kMaxDepth = 32;

  Json Value(int depth) {
    if (depth > kMaxDepth) Fail("nested too deep");
    SkipSpace();
    Json value;
    if (Consume('{')) {
      value.kind = Json::Kind::kObject;
      if (!Consume('}')) {
        do {
          SkipSpace();
          std::string key = String();
          Expect(':');
          value.fields.emplace_back(std::move(key), Value(depth + 1));
        } while (Consume(','));
        Expect('}');
      }
    } else if (Consume('[')) {
      value.kind = Json::Kind::kArray;
      if (!Consume(']')) {
        do {
          value.items.push_back(Value(depth + 1));
        } while (Consume(','));
        Expect(']');
      }
    } else if (at_ < text_.size() && text_[at_] == '"') {
      value.kind = Json::Kind::kString;
      value.text = String();
    } else if (Word("true")) {
      value.kind = Json::Kind::kBool;
      value.number = 1;
    } else if (Word("false")) {
      value.kind = Json::Kind::kBool;
    } else if (!Word("null")) {
      value.kind = Json::Kind::kNumber;
      value.number = Number();
    }
    return value;
  }

  std::string String() {
    if (!Consume('"')) Fail("expected a string");
    std::string out;
    while (true) {
      if (at_ >= text_.size()) Fail("unterminated string");
      char c = text_[at_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) Fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at_ >= text_.size()) Fail("unterminated string");
      switch (char escape = text_[at_++]) {
        case '"': case '\\': case '/': out += escape; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': AppendUtf8(CodePoint(), &out); break;
        default: Fail("unknown escape \\" + std::string(1, escape));
      }
    }
  }

  // After "\u": one code point, two escapes for one beyond the Basic Multilingual Plane (a UTF-16 surrogate pair).
  uint32_t CodePoint() {
    uint32_t code = Hex4();
    if (code >= 0xD800 && code < 0xDC00 && text_.substr(at_, 2) == "\\u") {
      size_t pair_at = at_;
      at_ += 2;
      uint32_t low = Hex4();
      if (low >= 0xDC00 && low < 0xE000) return 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
      at_ = pair_at;  // not a pair: two separate escapes
    }
    return code;  // a lone surrogate, which a Python str may hold, is kept as its three bytes
  }

  uint32_t Hex4() {
    if (text_.size() - at_ < 4) Fail("short \\u escape");
    uint32_t code = 0;
    for (int i = 0; i < 4; ++i) {
      char c = text_[at_++];
      int digit = c >= '0' && c <= '9'   ? c - '0'
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                         : -1;
      if (digit < 0) Fail("bad \\u escape");
      code = code << 4 | static_cast<uint32_t>(digit);
    }
    return code;
  }

  static void AppendUtf8(uint32_t code, std::string* out) {
    if (code < 0x80) {
      *out += static_cast<char>(code);
    } else if (code < 0x800) {
      *out += static_cast<char>(0xC0 | code >> 6);
      *out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      *out += static_cast<char>(0xE0 | code >> 12);
      *out += static_cast<char>(0x80 | (code >> 6 & 0x3F));
      *out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      *out += static_cast<char>(0xF0 | code >> 18);
      *out += static_cast<char>(0x80 | (code >> 12 & 0x3F));
      *out += static_cast<char>(0x80 | (code >> 6 & 0x3F));
      *out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  double Number() {
    size_t end = text_.find_first_not_of("+-0123456789.eE", at_);
    std::string digits(text_.substr(at_, end == std::string_view::npos ? std::string_view::npos : end - at_));
    char* parsed = nullptr;
    double number = std::strtod(digits.c_str(), &parsed);
    if (digits.empty() || parsed != digits.c_str() + digits.size()) Fail("expected a value");
    at_ += digits.size();
    return number;
  }

  void SkipSpace() {
    while (at_ < text_.size() && std::string_view(" \t\r\n").find(text_[at_]) != std::string_view::npos) ++at_;
  }

  bool Consume(char c) {
    SkipSpace();
    if (at_ < text_.size() && text_[at_] == c) {
      ++at_;
      return true;
    }
    return false;
  }

  void Expect(char c) {
    if (!Consume(c)) Fail(std::string("expected '") + c + "'");
  }

  bool Word(std::string_view word) {
    if (text_.substr(at_, word.size()) != word) return false;
    at_ += word.size();
    return true;
  }

  [[noreturn]] void Fail(const std::string& what) const {
    throw FormatError("not JSON at character " + std::to_string(at_) + ": " + what);
  }

  std::string_view text_;
  size_t at_ = 0;
};

// ------------------------------------------------------------------ the signature

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;  // numpy's and TVM's name: float32, int8, ...

  std::string Describe() const { return ::Describe(dtype, shape); }
};

struct Signature {
  std::vector<TensorSpec> inputs, outputs;

  bool HasInput(const std::string& name) const {
    return std::any_of(inputs.begin(), inputs.end(), [&](const TensorSpec& s) { return s.name == name; });
  }

  // "'features' float32 [1,8,8,32], 'image' float32 [1,16,16,3]": what the messages say the model takes.
  std::string Listing() const {
    std::string text;
    for (const TensorSpec& s : inputs) text += (text.empty() ? "" : ", ") + PyRepr(s.name) + " " + s.Describe();
    return text;
  }

  // "'features', 'image'" (`quoted`) or "features, image".
  std::string Names(bool quoted) const {
    std::string text;
    for (const TensorSpec& s : inputs) text += (text.empty() ? "" : ", ") + (quoted ? PyRepr(s.name) : s.name);
    return text;
  }
};

const Json& Member(const Json& object, const char* key, Json::Kind kind) {
  const Json* value = object.kind == Json::Kind::kObject ? object.Field(key) : nullptr;
  if (value == nullptr || value->kind != kind) throw FormatError(std::string("no '") + key + "' of the right kind");
  return *value;
}

std::vector<int64_t> ShapeFromJson(const Json& shape) {
  if (shape.kind != Json::Kind::kArray) throw FormatError("a shape that is not a list");
  std::vector<int64_t> dims;
  for (const Json& dim : shape.items) {
    // Below 2^53, where a double holds every whole number (and the cast below is defined).
    if (dim.kind != Json::Kind::kNumber || !(dim.number >= 0 && dim.number < 9007199254740992.0) ||
        dim.number != std::floor(dim.number)) {
      throw FormatError("a dimension that is not a whole number");
    }
    dims.push_back(static_cast<int64_t>(dim.number));
  }
  return dims;
}

// {"inputs": [{"name": ..., "shape": [...], "dtype": ...}, ...], "outputs": [...]} (bnn_tvm.signature.Signature
// .to_json), or a .so of bnn-tvm before 0.4's [[shape, dtype], ...]: its inputs, unnamed, as Python names them.
Signature ParseSignature(const std::string& json) {
  Signature signature;
  try {
    Json document = JsonParser(json).Document();
    if (document.kind == Json::Kind::kArray) {
      for (const Json& input : document.items) {
        if (input.kind != Json::Kind::kArray || input.items.size() != 2 || input.items[1].kind != Json::Kind::kString) {
          throw FormatError("an input that is not [shape, dtype]");
        }
        signature.inputs.push_back(
            {"input_" + std::to_string(signature.inputs.size()), ShapeFromJson(input.items[0]), input.items[1].text});
      }
      return signature;
    }
    for (auto [key, group] : {std::pair{"inputs", &signature.inputs}, std::pair{"outputs", &signature.outputs}}) {
      for (const Json& spec : Member(document, key, Json::Kind::kArray).items) {
        group->push_back({Member(spec, "name", Json::Kind::kString).text,
                          ShapeFromJson(Member(spec, "shape", Json::Kind::kArray)),
                          Member(spec, "dtype", Json::Kind::kString).text});
      }
    }
  } catch (const FormatError& err) {
    throw std::runtime_error("the model's signature is not what bnn-tvm records (" + std::string(err.what()) +
                             "): " + json.substr(0, 200));
  }
  return signature;
}

// ------------------------------------------------------------------ .npy (format versions 1.0, 2.0, 3.0)

// An array in .npy bytes: its header's shape and dtype, and where its data (C order, little-endian) lies in
// those bytes, which are copied once, into the tensor the model gets.
struct NpyView {
  std::vector<int64_t> shape;
  DLDataType dtype;
  std::string_view data;
};

// numpy's descr ('<f4', '|i1', ...) <-> DLPack dtype; only little-endian or byte-sized types.
DLDataType DescrToDType(const std::string& descr) {
  if (descr.size() < 3 || (descr[0] != '<' && descr[0] != '|')) {
    throw FormatError("unsupported dtype '" + descr + "' (little-endian numbers only)");
  }
  int bytes = std::atoi(descr.c_str() + 2);
  uint8_t code;
  switch (descr[1]) {
    case 'f': code = kDLFloat; break;
    case 'i': code = kDLInt; break;
    case 'u': code = kDLUInt; break;
    case 'b': code = kDLBool; break;
    default: throw FormatError("unsupported dtype '" + descr + "'");
  }
  if (bytes != 1 && bytes != 2 && bytes != 4 && bytes != 8) throw FormatError("unsupported dtype '" + descr + "'");
  return DLDataType{code, static_cast<uint8_t>(bytes * 8), 1};
}

std::string DTypeToDescr(DLDataType dtype) {
  char kind;
  switch (dtype.code) {
    case kDLFloat: kind = 'f'; break;
    case kDLInt: kind = 'i'; break;
    case kDLUInt: kind = 'u'; break;
    case kDLBool: kind = 'b'; break;
    default: throw std::runtime_error("cannot write dtype " + DTypeText(dtype) + " to .npy");
  }
  size_t bytes = ElementBytes(dtype);
  return std::string(bytes == 1 ? "|" : "<") + kind + std::to_string(bytes);
}

// The value of 'key' in the header dict, as its source text: "'<f4'", "False", "(1, 7, 7, 64)".
std::string HeaderField(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "'");
  size_t colon = at == std::string::npos ? at : header.find(':', at);
  if (colon == std::string::npos) throw FormatError("no '" + key + "' in its header");
  size_t begin = header.find_first_not_of(' ', colon + 1);
  if (begin == std::string::npos) throw FormatError("bad '" + key + "' in its header");
  size_t end = header[begin] == '(' ? header.find(')', begin) : header.find_first_of(",}", begin + 1);
  if (end == std::string::npos) throw FormatError("bad '" + key + "' in its header");
  return header.substr(begin, end - begin + (header[begin] == '('));
}

NpyView ParseNpy(std::string_view bytes) {
  if (bytes.substr(0, 6) != "\x93NUMPY") throw FormatError("no \\x93NUMPY magic");
  // Version 1.0 has a 2-byte header length; 2.0 and 3.0 (a UTF-8 header) have 4 bytes, little-endian.
  int version = bytes.size() > 6 ? bytes[6] : 0;
  size_t len_size = version == 1 ? 2 : 4;
  if (version < 1 || version > 3) throw FormatError("unknown .npy version " + std::to_string(version));
  if (bytes.size() < 8 + len_size) throw FormatError("truncated header");
  size_t header_len = 0;
  for (size_t i = len_size; i-- > 0;) header_len = header_len << 8 | static_cast<unsigned char>(bytes[8 + i]);
  size_t data_at = 8 + len_size + header_len;
  if (header_len > (1u << 20) || bytes.size() < data_at) throw FormatError("truncated header");
  std::string header(bytes.substr(8 + len_size, header_len));
  std::string descr = HeaderField(header, "descr");
  if (descr.size() < 2 || (descr.front() != '\'' && descr.front() != '"')) {
    throw FormatError("unsupported dtype " + descr + " (structured arrays are not inputs)");
  }
  NpyView array;
  array.dtype = DescrToDType(descr.substr(1, descr.size() - 2));
  if (HeaderField(header, "fortran_order") != "False") {
    throw FormatError("a Fortran-order array: save it with np.save(path, np.ascontiguousarray(x))");
  }
  std::string shape = HeaderField(header, "shape");
  for (size_t i = 1; i < shape.size();) {
    size_t digits = shape.find_first_of("0123456789", i);
    if (digits == std::string::npos) break;
    size_t end = shape.find_first_not_of("0123456789", digits);
    if (end == std::string::npos || end - digits > 18) throw FormatError("bad 'shape' in its header");
    array.shape.push_back(std::stoll(shape.substr(digits, end - digits)));
    i = end;
  }
  // Checked: a corrupt header's shape must not wrap around to a size that its few bytes of data pass.
  size_t data_size = ElementBytes(array.dtype);
  for (int64_t d : array.shape) {
    if (d != 0 && data_size > std::numeric_limits<size_t>::max() / static_cast<size_t>(d)) {
      throw FormatError("a shape too large: " + ListText(array.shape));
    }
    data_size *= static_cast<size_t>(d);
  }
  if (bytes.size() - data_at < data_size) {
    throw FormatError("truncated (shape " + ListText(array.shape) + " needs " + std::to_string(data_size) +
                      " bytes of data)");
  }
  array.data = bytes.substr(data_at, data_size);
  return array;
}

// What precedes an array's data in a .npy file: magic, version 1.0, and the header dict numpy writes.
std::string NpyHeader(const std::vector<int64_t>& shape, DLDataType dtype) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // numpy writes (4,) for one dimension, (1, 4) for two
  std::string header = "{'descr': '" + DTypeToDescr(dtype) + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  // numpy pads the header with spaces so that the data starts 64-byte aligned, and ends it with a newline.
  size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  auto len = static_cast<uint16_t>(header.size());
  return std::string("\x93NUMPY\x01\x00", 8) + static_cast<char>(len & 0xff) + static_cast<char>(len >> 8) + header;
}

// ------------------------------------------------------------------ .npz (a zip archive of .npy files)
//
// np.savez (numpy 1.26, through Python's zipfile) stores its entries, NAME.npy, uncompressed (method 0), each
// with a ZIP64 local header (numpy forces it: 0xFFFFFFFF there, the sizes in a ZIP64 extra field); the central
// directory and its end record become ZIP64 too once an entry, an offset or the directory passes 2 GiB
// (zipfile's ZIP64_LIMIT). So entries are found through the central directory, whose sizes are authoritative
// however the local headers (or data descriptors, written to pipes) give them.

constexpr uint32_t kLocalHeader = 0x04034b50, kCentralHeader = 0x02014b50, kEndOfCentral = 0x06054b50,
                   kZip64EndOfCentral = 0x06064b50, kZip64Locator = 0x07064b50;
constexpr uint16_t kStored = 0, kZip64Extra = 0x0001;
constexpr uint16_t kEncrypted = 1 << 0, kUtf8Name = 1 << 11;  // general purpose flags
constexpr uint16_t kZipVersion = 20;                          // 2.0, as Python's zipfile writes entries
constexpr uint16_t kDosDate = (0 << 9) | (1 << 5) | 1;        // 1980-01-01, zip's epoch (time: 00:00)

uint32_t Crc32(std::string_view bytes, uint32_t crc = 0) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> entries{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;  // zip's reflected polynomial
      entries[i] = c;
    }
    return entries;
  }();
  crc = ~crc;
  for (char byte : bytes) crc = table[(crc ^ static_cast<unsigned char>(byte)) & 0xff] ^ (crc >> 8);
  return ~crc;
}

// `size` bytes at `at`, bounds-checked: offsets come from the file, and a cut or corrupt one must fail with a
// message rather than read past the buffer.
std::string_view Slice(std::string_view bytes, uint64_t at, uint64_t size) {
  if (at > bytes.size() || bytes.size() - at < size) {
    throw FormatError("truncated (" + std::to_string(size) + " bytes at " + std::to_string(at) + " are past its end)");
  }
  return bytes.substr(at, size);
}

uint64_t Le(std::string_view bytes, uint64_t at, int width) {
  std::string_view field = Slice(bytes, at, width);
  uint64_t value = 0;
  for (int i = width - 1; i >= 0; --i) value = value << 8 | static_cast<unsigned char>(field[i]);
  return value;
}

// Little-endian fields, each {value, width in bytes}, as zip's records are laid out.
std::string Fields(std::initializer_list<std::pair<uint64_t, int>> fields) {
  std::string out;
  for (auto [value, width] : fields) {
    for (int i = 0; i < width; ++i) out += static_cast<char>(value >> (8 * i) & 0xff);
  }
  return out;
}

struct ZipEntry {
  std::string name;
  uint16_t flags, method;
  uint32_t crc;
  std::string_view data;  // as stored: compressed unless method is kStored
};

// The entries of the zip archive `bytes`, in its central directory's order.
std::vector<ZipEntry> ReadZip(std::string_view bytes) {
  // The end record is the last 22 bytes, unless a comment (up to 64 KiB) follows it: search backwards.
  if (bytes.size() < 22) throw FormatError("too short for a zip archive");
  uint64_t end = bytes.size() - 22, lowest = end > 0xFFFF ? end - 0xFFFF : 0;
  while (Le(bytes, end, 4) != kEndOfCentral) {
    if (end-- == lowest) throw FormatError("no end of central directory (a cut file?)");
  }
  uint64_t count = Le(bytes, end + 10, 2);
  uint64_t size = Le(bytes, end + 12, 4);
  uint64_t offset = Le(bytes, end + 16, 4);
  if (end >= 20 && Le(bytes, end - 20, 4) == kZip64Locator) {
    // ZIP64: the locator before the end record points at the ZIP64 end record, whose 64-bit values are the real
    // ones (the 32-bit ones say 0xFFFF... or repeat them).
    uint64_t record = Le(bytes, end - 20 + 8, 8);
    if (Le(bytes, record, 4) != kZip64EndOfCentral) throw FormatError("no ZIP64 end of central directory");
    count = Le(bytes, record + 32, 8);
    size = Le(bytes, record + 40, 8);
    offset = Le(bytes, record + 48, 8);
  } else if (count == 0xFFFF || size == 0xFFFFFFFF || offset == 0xFFFFFFFF) {
    throw FormatError("a ZIP64 archive without its ZIP64 end of central directory");
  }
  std::string_view directory = Slice(bytes, offset, size);
  std::vector<ZipEntry> entries;
  for (uint64_t at = 0, i = 0; i < count; ++i) {
    if (Le(directory, at, 4) != kCentralHeader) throw FormatError("a broken central directory");
    ZipEntry entry;
    entry.flags = static_cast<uint16_t>(Le(directory, at + 8, 2));
    entry.method = static_cast<uint16_t>(Le(directory, at + 10, 2));
    entry.crc = static_cast<uint32_t>(Le(directory, at + 16, 4));
    uint64_t compressed = Le(directory, at + 20, 4), uncompressed = Le(directory, at + 24, 4);
    uint64_t name_size = Le(directory, at + 28, 2), extra_size = Le(directory, at + 30, 2);
    uint64_t comment_size = Le(directory, at + 32, 2), local = Le(directory, at + 42, 4);
    entry.name = std::string(Slice(directory, at + 46, name_size));
    // A ZIP64 extra field holds the 64-bit values of exactly those fields that say 0xFFFFFFFF, in this order.
    std::string_view extra = Slice(directory, at + 46 + name_size, extra_size);
    for (uint64_t x = 0; x + 4 <= extra.size(); x += 4 + Le(extra, x + 2, 2)) {
      if (Le(extra, x, 2) != kZip64Extra) continue;
      uint64_t field = x + 4;
      for (uint64_t* value : {&uncompressed, &compressed, &local}) {
        if (*value == 0xFFFFFFFF) {
          *value = Le(extra, field, 8);
          field += 8;
        }
      }
    }
    // The data follows the local header, whose name and extra field need not be the central ones' lengths.
    if (Le(bytes, local, 4) != kLocalHeader) throw FormatError("no local header for " + PyRepr(entry.name));
    entry.data = Slice(bytes, local + 30 + Le(bytes, local + 26, 2) + Le(bytes, local + 28, 2), compressed);
    if (entry.method == kStored && compressed != uncompressed) {
      throw FormatError("stored entry " + PyRepr(entry.name) + " with two sizes");
    }
    entries.push_back(std::move(entry));
    at += 46 + name_size + extra_size + comment_size;
  }
  return entries;
}

// ------------------------------------------------------------------ writing outputs

// A file written beside `path` and renamed into place once complete, as bnn_tvm.signature.save_outputs writes:
// an interrupted or failed write never leaves a half file under the name.
class OutputFile {
 public:
  explicit OutputFile(std::string path)
      : path_(std::move(path)), partial_(path_ + "." + std::to_string(getpid()) + ".partial") {
    file_ = std::fopen(partial_.c_str(), "wb");
    if (file_ == nullptr) Fail();
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  ~OutputFile() {
    if (file_ != nullptr) {
      std::fclose(file_);
      std::remove(partial_.c_str());
    }
  }

  void Write(std::string_view bytes) {
    if (std::fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size()) Fail();
    written_ += bytes.size();
  }
  uint64_t Written() const { return written_; }

  void Commit() {
    std::FILE* file = std::exchange(file_, nullptr);
    if (std::fclose(file) != 0 || std::rename(partial_.c_str(), path_.c_str()) != 0) {
      int error = errno;
      std::remove(partial_.c_str());
      errno = error;
      Fail();
    }
  }

 private:
  [[noreturn]] void Fail() const { throw UsageError("cannot write output " + path_ + ": " + std::strerror(errno)); }

  std::string path_, partial_;
  std::FILE* file_ = nullptr;
  uint64_t written_ = 0;
};

std::string_view Bytes(const ffi::Tensor& tensor) {
  return {static_cast<const char*>(tensor.data_ptr()) + tensor.byte_offset(),
          ElementCount(ShapeOf(tensor)) * ElementBytes(tensor.dtype())};
}

void WriteNpy(const std::string& path, const ffi::Tensor& tensor) {
  OutputFile file(path);
  file.Write(NpyHeader(ShapeOf(tensor), tensor.dtype()));
  file.Write(Bytes(tensor));
  file.Commit();
}

// A stored (uncompressed) zip of NAME.npy entries, as np.savez writes and np.load reads. Without ZIP64 (over
// 4 GiB of outputs are refused): the 32-bit fields then hold every size and offset. Names are flagged UTF-8
// (else readers take them for cp437), and the timestamp is fixed, so that equal outputs give equal files.
void WriteNpz(const std::string& path, const std::vector<std::string>& names, const std::vector<ffi::Tensor>& tensors) {
  const char* too_large = "the outputs are too large for an .npz without ZIP64, which bnn-run does not write";
  if (tensors.size() >= 0xFFFF) throw std::runtime_error(too_large);
  OutputFile file(path);
  std::string directory;
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::string name = names[i] + ".npy", header = NpyHeader(ShapeOf(tensors[i]), tensors[i].dtype());
    std::string_view data = Bytes(tensors[i]);
    uint64_t size = header.size() + data.size(), offset = file.Written();
    if (size >= 0xFFFFFFFF || offset >= 0xFFFFFFFF || name.size() > 0xFFFF) throw std::runtime_error(too_large);
    // The local header and the central directory record share the fields from "version needed" to the name.
    std::string common = Fields({{kZipVersion, 2}, {kUtf8Name, 2}, {kStored, 2}, {0, 2}, {kDosDate, 2},
                                 {Crc32(data, Crc32(header)), 4}, {size, 4}, {size, 4}, {name.size(), 2},
                                 {0, 2}});  // the last: no extra field
    file.Write(Fields({{kLocalHeader, 4}}) + common + name);
    file.Write(header);
    file.Write(data);
    // Made by Unix (3), so that the external attributes are a file mode: a regular file, rw-r--r--. Then no
    // comment, disk 0, no internal attributes.
    directory += Fields({{kCentralHeader, 4}, {3 << 8 | kZipVersion, 2}}) + common +
                 Fields({{0, 2}, {0, 2}, {0, 2}, {uint64_t{0100644} << 16, 4}, {offset, 4}}) + name;
  }
  uint64_t directory_at = file.Written();
  if (directory_at + directory.size() >= 0xFFFFFFFF) throw std::runtime_error(too_large);
  file.Write(directory);
  file.Write(Fields({{kEndOfCentral, 4}, {0, 2}, {0, 2}, {tensors.size(), 2}, {tensors.size(), 2},
                     {directory.size(), 4}, {directory_at, 4}, {0, 2}}));  // one disk, no comment
  file.Commit();
}

// Python's PurePath(path).suffix: ".npy" of "d/y.npy"; "" of "y", "d.d/y" and ".npz" (a name, not a suffix).
std::string Suffix(const std::string& path) {
  size_t name_at = path.find_last_of('/') + 1;  // npos + 1: 0
  size_t dot = path.rfind('.');
  return dot != std::string::npos && dot > name_at && dot + 1 < path.size() ? path.substr(dot) : "";
}

// Python's PurePath(path).with_suffix(suffix): y.npy -> y.npz, y -> y.npz.
std::string WithSuffix(const std::string& path, const std::string& suffix) {
  return path.substr(0, path.size() - Suffix(path).size()) + suffix;
}

// ------------------------------------------------------------------ the model

// ELF machine numbers (elf.h's EM_*) of the architectures bnn-tvm targets, and the one this program runs on.
const char* MachineName(uint16_t machine) {
  switch (machine) {
    case 3: return "x86 (32-bit)";
    case 40: return "32-bit ARM";
    case 62: return "x86-64";
    case 183: return "aarch64";
    default: return "another architecture";
  }
}

#if defined(__x86_64__)
constexpr uint16_t kThisMachine = 62;
#elif defined(__aarch64__)
constexpr uint16_t kThisMachine = 183;
#elif defined(__arm__)
constexpr uint16_t kThisMachine = 40;
#else
constexpr uint16_t kThisMachine = 0;  // unknown: leave the check to dlopen
#endif

// glibc's dlopen reports a library of another architecture as "No such file or directory": say what it is.
void CheckSharedLibrary(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw UsageError("cannot open model " + path + ": " + std::strerror(errno));
  unsigned char header[20] = {};
  if (!file.read(reinterpret_cast<char*>(header), sizeof(header)) || std::memcmp(header, "\x7f" "ELF", 4) != 0) {
    throw UsageError(path + " is not a shared library (a bnn-tvm model is the .so `bnn-tvm compile` writes)");
  }
  uint16_t machine = header[5] == 1 ? header[18] | header[19] << 8 : header[18] << 8 | header[19];  // EI_DATA
  if (kThisMachine != 0 && machine != kThisMachine) {
    throw UsageError(path + " is built for " + MachineName(machine) + "; this bnn-run runs " +
                     MachineName(kThisMachine) + " models (compile with the matching --target, or use the "
                     "bundle made for that target)");
  }
}

// The model's Relax VM, initialised on the CPU.
ffi::Module LoadVirtualMachine(const std::string& path) {
  CheckSharedLibrary(path);
  // dlopen searches the library path for a name without a slash; TVM's loader picks its format by the
  // extension: neither should decide which file is loaded.
  std::string absolute = path.front() == '/' ? path : "./" + path;
  ffi::Module library =
      ffi::Function::GetGlobalRequired("ffi.Module.load_from_file.so")(absolute, "so").cast<ffi::Module>();
  ffi::Optional<ffi::Function> load_executable = library->GetFunction("vm_load_executable", true);
  if (!load_executable) {
    throw UsageError(path + " is not a bnn-tvm model (no Relax VM executable in it; make one with "
                            "`bnn-tvm compile MODEL -o model.so`)");
  }
  ffi::Module vm = (*load_executable)().cast<ffi::Module>();
  // One device, the CPU, with TVM's pooled allocator (what tvm.relax.VirtualMachine does by default).
  vm->GetFunction("vm_initialization", false).value()(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  return vm;
}

ffi::Function VmFunction(const ffi::Module& vm, const char* name, const std::string& path) {
  ffi::Optional<ffi::Function> function = vm->GetFunction(name, false);
  if (!function) {
    throw UsageError(path + " is not a bnn-tvm model (its VM has no function " + name +
                     "; recompile it with this version of `bnn-tvm compile`)");
  }
  return *function;
}

// The recorded signature; a .so of bnn-tvm before 0.4 has the inputs-only one (bnn_tvm.runtime reads both).
Signature ReadSignature(const ffi::Module& vm, const std::string& path) {
  ffi::Optional<ffi::Function> function = vm->GetFunction(kSignatureFunction, false);
  if (!function) function = vm->GetFunction(kOldSignatureFunction, false);
  if (!function) {
    throw UsageError(path + " is not a bnn-tvm model (its VM has no function " + kSignatureFunction +
                     "; recompile it with this version of `bnn-tvm compile`)");
  }
  return ParseSignature(std::string((*function)().cast<ffi::String>()));
}

// CPU memory at TVM's alignment (kAllocAlignment), which compiled kernels may assume of their arguments.
struct AlignedAlloc {
  static constexpr size_t kAlignment = 64;
  void AllocData(DLTensor* tensor) {
    size_t bytes = (ffi::GetDataSize(*tensor) + kAlignment - 1) / kAlignment * kAlignment;
    tensor->data = std::aligned_alloc(kAlignment, std::max(bytes, kAlignment));
    if (tensor->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

ffi::Tensor Allocate(const std::vector<int64_t>& shape, DLDataType dtype) {
  return ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::Shape(shape), dtype, DLDevice{kDLCPU, 0});
}

char* MutableBytes(const ffi::Tensor& tensor) {
  return static_cast<char*>(tensor.data_ptr()) + tensor.byte_offset();
}

ffi::Any Call(const ffi::Function& model, const std::vector<ffi::Tensor>& inputs) {
  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  ffi::Any result;
  model.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
  return result;
}

std::vector<ffi::Tensor> Outputs(const ffi::Any& result) {
  if (auto tensor = result.as<ffi::Tensor>()) return {*tensor};
  std::vector<ffi::Tensor> outputs;
  if (auto tuple = result.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *tuple) {
      std::vector<ffi::Tensor> inner = Outputs(item);
      outputs.insert(outputs.end(), inner.begin(), inner.end());
    }
    return outputs;
  }
  throw std::runtime_error("the model returned a " + result.GetTypeKey() + ", not tensors");
}

// ------------------------------------------------------------------ inputs (bnn_tvm.signature.read_inputs)

struct Given {
  ffi::Tensor tensor;
  std::string source;  // where it came from, as messages name it: x.npy, both.npz[image]
};

// The file `path` whole. One that cannot be read is reported as `bnn-tvm run` reports it: "x.npy: No such file
// or directory".
std::string ReadFile(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) throw UsageError(path + ": " + std::strerror(errno));
  std::string bytes;
  char buffer[1 << 16];
  for (size_t got; (got = std::fread(buffer, 1, sizeof(buffer), file)) > 0;) bytes.append(buffer, got);
  int error = std::ferror(file) ? errno : 0;  // a folder opens, and fails here with "Is a directory"
  std::fclose(file);
  if (error != 0) throw UsageError(path + ": " + std::strerror(error));
  return bytes;
}

// A file given as an .npz (--inputs) or a .npy (--input), judged by its first bytes as bnn_tvm.signature._load
// judges it, so that an archive given as one array, or the reverse, is named for what it is.
std::string ReadArrayFile(const std::string& path, bool npz) {
  std::string bytes = ReadFile(path);
  std::string_view magic = std::string_view(bytes).substr(0, 6);
  bool zip = magic.substr(0, 4) == "PK\x03\x04", npy = magic == "\x93NUMPY";
  if (zip && !npz) throw UsageError(path + ": is an .npz archive of several arrays: pass it as --inputs " + path);
  if (npy && npz) {
    throw UsageError(path + ": is one .npy array, not an .npz archive: pass it as --input [NAME=]" + path);
  }
  if (!zip && !npy) {
    const char* what = npz ? "an .npz archive (np.savez writes one)" : "a .npy file (np.save writes one)";
    throw UsageError(path + ": is not " + what + ": it starts with " + PyRepr(magic, true));
  }
  return bytes;
}

// The array of .npy bytes, in a tensor of its own (TVM's alignment; the bytes are freed after).
ffi::Tensor TensorOfNpy(std::string_view bytes, const std::string& source) {
  NpyView array;
  try {
    array = ParseNpy(bytes);
  } catch (const FormatError& err) {
    throw UsageError(source + ": cannot be read as .npy: " + err.what());
  }
  ffi::Tensor tensor = Allocate(array.shape, array.dtype);
  std::memcpy(MutableBytes(tensor), array.data.data(), array.data.size());
  return tensor;
}

// The arrays of an .npz keyed by input name, each checked to be one of the model's (np.savez names its entries
// NAME.npy; np.load keys them NAME).
void ReadNpz(const std::string& path, const Signature& signature, std::map<std::string, Given>* given) {
  std::string bytes = ReadArrayFile(path, true);
  std::vector<ZipEntry> entries;
  try {
    entries = ReadZip(bytes);
  } catch (const FormatError& err) {
    throw UsageError(path + ": cannot be read as .npz: " + err.what());
  }
  for (const ZipEntry& entry : entries) {
    bool npy = entry.name.size() > 4 && entry.name.compare(entry.name.size() - 4, 4, ".npy") == 0;
    std::string key = npy ? entry.name.substr(0, entry.name.size() - 4) : entry.name;
    if (!signature.HasInput(key)) {
      throw UsageError(path + ": holds " + PyRepr(key) + ", which is no input of the model; it takes " +
                       signature.Listing());
    }
    if (entry.method != kStored || (entry.flags & kEncrypted) != 0) {
      // A decompressor (zlib) would be a library beyond TVM's runtime on every device; np.savez needs none.
      throw UsageError(path + ": input " + PyRepr(key) + " is " +
                       (entry.method != kStored ? "compressed (np.savez_compressed)" : "encrypted") +
                       "; bnn-run reads the uncompressed .npz of np.savez: save the inputs with np.savez");
    }
    std::string source = path + "[" + key + "]";
    if (Crc32(entry.data) != entry.crc) {
      throw UsageError(source + ": cannot be read as .npy: its CRC-32 does not match");
    }
    given->insert_or_assign(key, Given{TensorOfNpy(entry.data, source), source});
  }
}

// NAME=PATH when NAME is one of the model's inputs (a path may hold an '=' too), else a path. A NAME= that is no
// input, in an argument that is no existing file either, is taken for a misspelt name.
std::pair<std::optional<std::string>, std::string> SplitName(const std::string& text, const Signature& signature) {
  size_t equals = text.find('=');
  if (equals == std::string::npos) return {std::nullopt, text};
  std::string name = text.substr(0, equals);
  if (signature.HasInput(name)) return {name, text.substr(equals + 1)};
  struct stat status;
  if (stat(text.c_str(), &status) != 0 && name.find('/') == std::string::npos) {
    throw UsageError(text + ": the model has no input " + PyRepr(name) + "; it takes " + signature.Names(true));
  }
  return {std::nullopt, text};
}

// Unless `given` has `spec`'s shape and dtype: the message `bnn-tvm run` gives (Signature.check), hints included.
void Check(const TensorSpec& spec, const Given& given) {
  std::vector<int64_t> shape = ShapeOf(given.tensor);
  std::string dtype = DTypeText(given.tensor.dtype());
  if (shape == spec.shape && dtype == spec.dtype) return;
  std::string hint;
  if (shape.size() + 1 == spec.shape.size() && std::equal(shape.begin(), shape.end(), spec.shape.begin() + 1)) {
    hint = " (the batch dimension is missing: x[None] adds it)";
  } else if (shape == spec.shape) {
    hint = " (x.astype('" + spec.dtype + "') converts it)";
  }
  throw UsageError(given.source + ": input " + PyRepr(spec.name) + " is " + Describe(dtype, shape) +
                   ", the model takes " + spec.Describe() + hint);
}

template <typename T, typename Wide>
void FillIntegers(char* bytes, size_t n, std::mt19937* rng) {
  // Wide: uniform_int_distribution takes no char types, which int8_t and uint8_t are.
  std::uniform_int_distribution<Wide> values(std::numeric_limits<T>::min(), std::numeric_limits<T>::max());
  for (size_t i = 0; i < n; ++i) reinterpret_cast<T*>(bytes)[i] = static_cast<T>(values(*rng));
}

template <typename T>
void FillNormal(char* bytes, size_t n, std::mt19937* rng) {
  std::normal_distribution<T> normal;
  for (size_t i = 0; i < n; ++i) reinterpret_cast<T*>(bytes)[i] = normal(*rng);
}

// Standard normal floats, integers over the dtype's whole range, 0/1 booleans: what bnn_tvm.signature
// .random_array makes, from another generator (mt19937), so other numbers than Python's for the same seed.
ffi::Tensor RandomInput(const TensorSpec& spec, uint32_t seed) {
  DLDataType t = ffi::StringToDLDataType(spec.dtype);
  ffi::Tensor tensor = Allocate(spec.shape, t);
  size_t n = ElementCount(spec.shape);
  char* bytes = MutableBytes(tensor);
  std::mt19937 rng(seed);
  switch (t.lanes == 1 ? t.code << 8 | t.bits : -1) {  // vector types: none of these
    case kDLFloat << 8 | 32: FillNormal<float>(bytes, n, &rng); break;
    case kDLFloat << 8 | 64: FillNormal<double>(bytes, n, &rng); break;
    case kDLInt << 8 | 8: FillIntegers<int8_t, int64_t>(bytes, n, &rng); break;
    case kDLInt << 8 | 16: FillIntegers<int16_t, int64_t>(bytes, n, &rng); break;
    case kDLInt << 8 | 32: FillIntegers<int32_t, int64_t>(bytes, n, &rng); break;
    case kDLInt << 8 | 64: FillIntegers<int64_t, int64_t>(bytes, n, &rng); break;
    case kDLUInt << 8 | 8: FillIntegers<uint8_t, uint64_t>(bytes, n, &rng); break;
    case kDLUInt << 8 | 16: FillIntegers<uint16_t, uint64_t>(bytes, n, &rng); break;
    case kDLUInt << 8 | 32: FillIntegers<uint32_t, uint64_t>(bytes, n, &rng); break;
    case kDLUInt << 8 | 64: FillIntegers<uint64_t, uint64_t>(bytes, n, &rng); break;
    case kDLBool << 8 | 8: {
      std::uniform_int_distribution<int> bit(0, 1);
      for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<char>(bit(rng));
      break;
    }
    default:
      throw UsageError("cannot make a random " + spec.dtype + " input for " + PyRepr(spec.name) +
                       ": give it with --input " + spec.name + "=FILE.npy");
  }
  return tensor;
}

// ------------------------------------------------------------------ outputs

template <typename T>
void Summarize(const ffi::Tensor& out, double* min, double* max, double* mean, size_t* argmax) {
  const T* values = reinterpret_cast<const T*>(Bytes(out).data());
  size_t n = ElementCount(ShapeOf(out));
  size_t row = out.shape().size() ? n / std::max<int64_t>(out.shape()[0], 1) : n;  // argmax of batch item 0
  *min = std::numeric_limits<double>::infinity();
  *max = -*min;
  double sum = 0;
  *argmax = 0;
  for (size_t i = 0; i < n; ++i) {
    double v = static_cast<double>(values[i]);
    *min = std::min(*min, v);
    *max = std::max(*max, v);
    sum += v;
    if (i < row && v > static_cast<double>(values[*argmax])) *argmax = i;
  }
  *mean = n ? sum / n : 0;
}

void PrintOutput(const std::string& name, const ffi::Tensor& out) {
  DLDataType t = out.dtype();
  double min = 0, max = 0, mean = 0;
  size_t argmax = 0;
  if (t.code == kDLFloat && t.bits == 32) Summarize<float>(out, &min, &max, &mean, &argmax);
  else if (t.code == kDLFloat && t.bits == 64) Summarize<double>(out, &min, &max, &mean, &argmax);
  else if (t.code == kDLInt && t.bits == 8) Summarize<int8_t>(out, &min, &max, &mean, &argmax);
  else if (t.code == kDLInt && t.bits == 32) Summarize<int32_t>(out, &min, &max, &mean, &argmax);
  else if (t.code == kDLInt && t.bits == 64) Summarize<int64_t>(out, &min, &max, &mean, &argmax);
  else if (t.code == kDLUInt && t.bits == 8) Summarize<uint8_t>(out, &min, &max, &mean, &argmax);
  std::printf("output %s: shape %s %s; min %.6g max %.6g mean %.6g; argmax %zu\n", PyRepr(name).c_str(),
              ListText(ShapeOf(out)).c_str(), DTypeText(t).c_str(), min, max, mean, argmax);
}

// The outputs' names: the signature's, or, for a model whose signature does not list what it returns (bnn-tvm
// before 0.4), `prefix` and the index, as the Python CLI prints ("0") and saves ("output_0") them.
std::vector<std::string> OutputNames(const Signature& signature, size_t count, const std::string& prefix) {
  std::vector<std::string> names;
  for (size_t i = 0; i < count; ++i) {
    names.push_back(signature.outputs.size() == count ? signature.outputs[i].name : prefix + std::to_string(i));
  }
  return names;
}

// ------------------------------------------------------------------ threads

std::vector<int> AllowedCpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
    }
  }
  if (cpus.empty()) cpus.push_back(0);  // no affinity to read: one CPU, numbered as usual
  return cpus;
}

// Hyper-threads of one core count once: TVM's own default (half the logical CPUs on x86) gives a VM whose
// vCPUs are separate cores half its cores. Same rule as bnn_tvm.runtime.physical_cores.
int PhysicalCores(const std::vector<int>& cpus) {
  std::set<std::pair<std::string, std::string>> cores;
  for (int cpu : cpus) {
    std::string topology = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream package(topology + "physical_package_id"), core(topology + "core_id");
    std::string package_id, core_id;
    if (package >> package_id && core >> core_id) {
      cores.emplace(package_id, core_id);
    } else {  // no sysfs topology (containers, some boards): every CPU is a core
      cores.emplace("cpu", std::to_string(cpu));
    }
  }
  return std::max<int>(static_cast<int>(cores.size()), 1);
}

// Must run before the first parallel kernel: TVM makes its pool then, never resizes it (workers left idle still
// take CPU time), and by default pins the calling thread (here, the whole process) to one CPU. The pool gets
// exactly the threads asked for (default: one per physical core); values the user exported win.
int ConfigureThreads(int requested) {
  std::vector<int> cpus = AllowedCpus();
  int threads = requested > 0 ? requested : PhysicalCores(cpus);
  setenv("TVM_NUM_THREADS", std::to_string(threads).c_str(), 0);
  setenv("TVM_BIND_THREADS", "0", 0);
  if (requested > 0) {
    // The list sizes the pool (TVM's SetMaxConcurrency); with TVM_BIND_THREADS=0 it binds nothing.
    ffi::Array<ffi::String> allowed;
    for (int i = 0; i < requested; ++i) allowed.push_back(std::to_string(cpus[i % cpus.size()]));
    ffi::Function::GetGlobalRequired("runtime.config_threadpool")(kShareAllCores, requested, allowed);
  }
  return static_cast<int>(ffi::Function::GetGlobalRequired("runtime.NumThreads")().cast<int>());
}

// ------------------------------------------------------------------ command line

struct Options {
  std::string model;
  std::string inputs;              // --inputs: an .npz keyed by input name
  std::vector<std::string> input;  // each --input: [NAME=]FILE.npy
  std::string output;
  int repeat = 0, threads = 0;
  uint32_t seed = 0;
};

const char* kUsage =
    "usage: bnn-run model.so [--inputs x.npz] [--input [NAME=]x.npy ...] [--output y.npy] [--repeat N]\n"
    "               [--threads T] [--seed S]\n"
    "  Run a model compiled by `bnn-tvm compile` (as `bnn-tvm run` does, without Python).\n"
    "  --inputs x.npz: the model's inputs keyed by input name (np.savez(path, name=array, ...); uncompressed,\n"
    "  not np.savez_compressed). --input [NAME=]x.npy: one input, named or the next one not given yet; repeat\n"
    "  it for several. Every input given neither way is random (input i: seed S + i, default S = 0); bnn-run\n"
    "  prints their names, dtypes and shapes. --output y.npy: one output .npy, several an .npz keyed by\n"
    "  output name (y.npz). --repeat N: median latency of N runs after a warm-up. --threads T: TVM threads\n"
    "  (default one per physical core).\n";

int PositiveInt(const std::string& flag, const std::string& value, int minimum) {
  size_t used = 0;
  long number = 0;
  try {
    number = std::stol(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || number < minimum || number > std::numeric_limits<int>::max()) {
    throw UsageError(flag + " must be an integer of at least " + std::to_string(minimum) + ", got '" + value + "'");
  }
  return static_cast<int>(number);
}

Options ParseArguments(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (arg.rfind("--", 0) == 0) {
      // --flag VALUE or, as argparse takes it too, --flag=VALUE (the first '=': --input=image=x.npy)
      size_t equals = arg.find('=');
      std::string flag = arg.substr(0, equals), value;
      if (equals != std::string::npos) {
        value = arg.substr(equals + 1);
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        throw UsageError(flag + " needs a value");
      }
      if (flag == "--input") {
        options.input.push_back(value);
      } else if (flag == "--inputs") {
        if (!options.inputs.empty()) throw UsageError("--inputs is given twice: put every input in one .npz");
        options.inputs = value;
      } else if (flag == "--output") {
        options.output = value;
      } else if (flag == "--repeat") {
        options.repeat = PositiveInt(flag, value, 1);
      } else if (flag == "--threads") {
        options.threads = PositiveInt(flag, value, 1);
      } else if (flag == "--seed") {
        options.seed = static_cast<uint32_t>(PositiveInt(flag, value, 0));
      } else {
        throw UsageError("unknown option " + flag + " (bnn-run --help)");
      }
    } else if (options.model.empty()) {
      options.model = arg;
    } else {
      throw UsageError("one model at a time, got " + options.model + " and " + arg);
    }
  }
  if (options.model.empty()) throw UsageError("no model given (bnn-run --help)");
  return options;
}

// The model's inputs in its order, from --inputs and --input as `bnn-tvm run` takes them, with its messages;
// every input given neither way is random (input i: seed + i) and said so.
std::vector<ffi::Tensor> ReadInputs(const Signature& signature, const Options& options) {
  std::map<std::string, Given> given;
  if (!options.inputs.empty()) ReadNpz(options.inputs, signature, &given);
  for (const std::string& text : options.input) {
    auto [name, path] = SplitName(text, signature);
    if (!name) {
      auto next = std::find_if(signature.inputs.begin(), signature.inputs.end(),
                               [&](const TensorSpec& s) { return given.count(s.name) == 0; });
      if (next == signature.inputs.end()) {
        throw UsageError(path + ": every input of the model is already given (" + signature.Names(false) + ")");
      }
      name = next->name;
    } else if (given.count(*name) != 0) {
      throw UsageError(path + ": input " + PyRepr(*name) + " is given twice (also " + given.at(*name).source + ")");
    }
    given.insert_or_assign(*name, Given{TensorOfNpy(ReadArrayFile(path, false), path), path});
  }
  std::vector<ffi::Tensor> inputs;
  std::vector<std::string> randoms;
  for (size_t i = 0; i < signature.inputs.size(); ++i) {
    const TensorSpec& spec = signature.inputs[i];
    auto found = given.find(spec.name);
    if (found != given.end()) {
      Check(spec, found->second);
      inputs.push_back(found->second.tensor);
    } else {
      uint32_t seed = options.seed + static_cast<uint32_t>(i);
      inputs.push_back(RandomInput(spec, seed));
      randoms.push_back("random input " + PyRepr(spec.name) + " " + spec.Describe() + " (seed " +
                        std::to_string(seed) + ")");
    }
  }
  for (const std::string& line : randoms) std::printf("%s\n", line.c_str());  // after every check, as Python says them
  return inputs;
}

int Run(const Options& options) {
  int threads = ConfigureThreads(options.threads);
  ffi::Module vm = LoadVirtualMachine(options.model);
  ffi::Function model = VmFunction(vm, "main", options.model);
  Signature signature = ReadSignature(vm, options.model);
  std::vector<ffi::Tensor> inputs = ReadInputs(signature, options);
  std::vector<ffi::Tensor> outputs = Outputs(Call(model, inputs));
  std::vector<std::string> printed = OutputNames(signature, outputs.size(), "");
  for (size_t i = 0; i < outputs.size(); ++i) PrintOutput(printed[i], outputs[i]);
  if (!options.output.empty()) {
    // One output: the .npy asked for. Several: one .npz keyed by output name, y.npy made y.npz (said below).
    if (outputs.size() == 1) {
      WriteNpy(options.output, outputs[0]);
      std::printf("saved the output to %s\n", options.output.c_str());
    } else {
      std::string path = Suffix(options.output) == ".npz" ? options.output : WithSuffix(options.output, ".npz");
      WriteNpz(path, OutputNames(signature, outputs.size(), "output_"), outputs);
      std::printf("saved %zu outputs to %s\n", outputs.size(), path.c_str());
    }
  }
  if (options.repeat > 0) {
    std::vector<double> ms;
    Call(model, inputs);  // warm-up beyond the first call: caches, the thread pool's spin-up
    for (int i = 0; i < options.repeat; ++i) {
      auto start = std::chrono::steady_clock::now();
      Call(model, inputs);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(ms.begin(), ms.end());
    size_t half = ms.size() / 2;
    double median = ms.size() % 2 ? ms[half] : (ms[half - 1] + ms[half]) / 2;
    std::printf("median latency %.3f ms over %d runs, %d thread%s\n", median, options.repeat, threads,
                threads > 1 ? "s" : "");
  }
  return 0;
}

// TVM's messages can span lines (a traceback, a hint): the first line says what went wrong.
std::string FirstLine(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  return line.empty() ? "unknown error" : line;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(ParseArguments(argc, argv));
  } catch (const UsageError& err) {
    std::fprintf(stderr, "error: %s\n", FirstLine(err.what()).c_str());
    return 2;
  } catch (const ffi::Error& err) {
    std::fprintf(stderr, "error: %s: %s\n", err.kind().c_str(), FirstLine(err.message()).c_str());
    return 1;
  } catch (const std::exception& err) {
    std::fprintf(stderr, "error: %s\n", FirstLine(err.what()).c_str());
    return 1;
  }
}
