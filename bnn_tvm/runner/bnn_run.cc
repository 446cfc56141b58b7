// bnn-run: run a bnn-tvm model (.so) with TVM's C++ runtime alone: no Python, no pip.
//
//   bnn-run model.so [--input x.npy] [--output y.npy] [--repeat N] [--threads T] [--seed S]
//
// The .so is a Relax VM executable made by `bnn-tvm compile`; it records its input's shape and dtype
// (the VM function `bnn_input_signature`, a JSON string), which bnn-run uses to make a random input and to
// check a given one. Build (the bundle's README has the exact line for its folder):
//
//   g++ -std=c++17 -O2 bnn_run.cc -o bnn-run -Iinclude -L. -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi
//       -Wl,-rpath,'$ORIGIN'
//
// Every failure is one line on stderr starting with "error:" and a non-zero exit status (2: bad usage or
// input, 1: the model or the runtime failed).

#include <sched.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

// A problem with what the user gave (arguments, files): exit status 2, like the Python CLI's usage errors.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr const char* kSignatureFunction = "bnn_input_signature";  // bnn_tvm/build.py INPUT_SIGNATURE
constexpr int kPooledAllocator = 2;                                 // tvm/runtime/memory/memory_manager.h
constexpr int kShareAllCores = -3;  // ThreadGroup::kSpecifyThreadShareAllCore: workers float over a CPU list

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

std::string DTypeText(DLDataType dtype) { return std::string(ffi::DLDataTypeToString(dtype)); }

size_t ElementCount(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

size_t ElementBytes(DLDataType dtype) { return (dtype.bits * dtype.lanes + 7) / 8; }

// ------------------------------------------------------------------ .npy (format versions 1.0, 2.0, 3.0)

struct Array {
  std::vector<int64_t> shape;
  DLDataType dtype;
  std::vector<char> data;  // C order, little-endian
};

// numpy's descr ('<f4', '|i1', ...) <-> DLPack dtype; only little-endian or byte-sized types.
DLDataType DescrToDType(const std::string& descr, const std::string& path) {
  if (descr.size() < 3 || (descr[0] != '<' && descr[0] != '|')) {
    throw UsageError(path + ": unsupported .npy dtype '" + descr + "' (little-endian numbers only)");
  }
  int bytes = std::atoi(descr.c_str() + 2);
  uint8_t code;
  switch (descr[1]) {
    case 'f': code = kDLFloat; break;
    case 'i': code = kDLInt; break;
    case 'u': code = kDLUInt; break;
    case 'b': code = kDLBool; break;
    default: throw UsageError(path + ": unsupported .npy dtype '" + descr + "'");
  }
  if (bytes != 1 && bytes != 2 && bytes != 4 && bytes != 8) {
    throw UsageError(path + ": unsupported .npy dtype '" + descr + "'");
  }
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
std::string HeaderField(const std::string& header, const std::string& key, const std::string& path) {
  size_t at = header.find("'" + key + "'");
  size_t colon = at == std::string::npos ? at : header.find(':', at);
  if (colon == std::string::npos) throw UsageError(path + ": not a .npy file (no '" + key + "' in its header)");
  size_t begin = header.find_first_not_of(' ', colon + 1);
  size_t end = header[begin] == '(' ? header.find(')', begin) + 1 : header.find_first_of(",}", begin + 1);
  if (begin == std::string::npos || end == std::string::npos || end == 0) {
    throw UsageError(path + ": not a .npy file (bad '" + key + "' in its header)");
  }
  return header.substr(begin, end - begin);
}

Array ReadNpy(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw UsageError("cannot open input " + path + ": " + std::strerror(errno));
  char preamble[8];
  if (!file.read(preamble, 8) || std::memcmp(preamble, "\x93NUMPY", 6) != 0) {
    throw UsageError(path + ": not a .npy file (no \\x93NUMPY magic)");
  }
  uint32_t header_len = 0;
  unsigned char len_bytes[4] = {0, 0, 0, 0};
  int len_size = preamble[6] == 1 ? 2 : 4;  // version 1.0: uint16; 2.0 and 3.0: uint32 (little-endian)
  if (preamble[6] < 1 || preamble[6] > 3 || !file.read(reinterpret_cast<char*>(len_bytes), len_size)) {
    throw UsageError(path + ": not a .npy file (unknown version " + std::to_string(preamble[6]) + ")");
  }
  for (int i = len_size - 1; i >= 0; --i) header_len = header_len << 8 | len_bytes[i];
  std::string header(header_len, '\0');
  if (header_len > (1u << 20) || !file.read(header.data(), header_len)) {
    throw UsageError(path + ": not a .npy file (truncated header)");
  }
  std::string descr = HeaderField(header, "descr", path);
  if (descr.size() < 2 || (descr.front() != '\'' && descr.front() != '"')) {
    throw UsageError(path + ": unsupported .npy dtype " + descr + " (structured arrays are not inputs)");
  }
  Array array;
  array.dtype = DescrToDType(descr.substr(1, descr.size() - 2), path);
  if (HeaderField(header, "fortran_order", path) != "False") {
    throw UsageError(path + ": Fortran-order array; save it with np.save(path, np.ascontiguousarray(x))");
  }
  std::string shape = HeaderField(header, "shape", path);
  for (size_t i = 1; i < shape.size();) {
    size_t digits = shape.find_first_of("0123456789", i);
    if (digits == std::string::npos) break;
    size_t end = shape.find_first_not_of("0123456789", digits);
    array.shape.push_back(std::stoll(shape.substr(digits, end - digits)));
    i = end;
  }
  array.data.resize(ElementCount(array.shape) * ElementBytes(array.dtype));
  if (!file.read(array.data.data(), array.data.size())) {
    throw UsageError(path + ": truncated .npy (shape " + ShapeText(array.shape) + " needs " +
                     std::to_string(array.data.size()) + " bytes of data)");
  }
  return array;
}

void WriteNpy(const std::string& path, const std::vector<int64_t>& shape, DLDataType dtype, const void* data) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // numpy writes (4,) for one dimension, (1, 4) for two
  std::string header = "{'descr': '" + DTypeToDescr(dtype) + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  // numpy pads the header with spaces so that the data starts 64-byte aligned, and ends it with a newline.
  size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::ofstream file(path, std::ios::binary);
  if (!file) throw UsageError("cannot write output " + path + ": " + std::strerror(errno));
  uint16_t len = static_cast<uint16_t>(header.size());
  const char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  file.write("\x93NUMPY\x01\x00", 8);
  file.write(len_bytes, 2);
  file << header;
  file.write(static_cast<const char*>(data), ElementCount(shape) * ElementBytes(dtype));
  if (!file) throw UsageError("cannot write output " + path + ": " + std::strerror(errno));
}

// ------------------------------------------------------------------ the model

struct Signature {
  std::vector<int64_t> shape;
  DLDataType dtype;
};

// The first input of `[[[1, 7, 7, 64], "float32"], ...]`, the JSON bnn_tvm.compile records.
Signature ParseSignature(const std::string& json, size_t* inputs) {
  Signature signature;
  size_t open = json.find("[[[");
  size_t close = json.find(']', open);
  size_t quote = json.find('"', close);
  size_t end = json.find('"', quote + 1);
  if (open == std::string::npos || close == std::string::npos || quote == std::string::npos ||
      end == std::string::npos) {
    throw std::runtime_error("the model's input signature is not what bnn-tvm records: " + json);
  }
  std::istringstream dims(json.substr(open + 3, close - open - 3));
  for (std::string dim; std::getline(dims, dim, ',');) signature.shape.push_back(std::stoll(dim));
  signature.dtype = ffi::StringToDLDataType(json.substr(quote + 1, end - quote - 1));
  *inputs = 0;
  for (size_t at = json.find("[["); at != std::string::npos; at = json.find("[[", at + 2)) ++*inputs;
  return signature;
}

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

char* Bytes(const ffi::Tensor& tensor) { return static_cast<char*>(tensor.data_ptr()) + tensor.byte_offset(); }

ffi::Tensor Allocate(const std::vector<int64_t>& shape, DLDataType dtype) {
  return ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::Shape(shape), dtype, DLDevice{kDLCPU, 0});
}

ffi::Tensor RandomInput(const Signature& signature, uint32_t seed) {
  ffi::Tensor tensor = Allocate(signature.shape, signature.dtype);
  size_t n = ElementCount(signature.shape);
  std::mt19937 rng(seed);
  const DLDataType& t = signature.dtype;
  if (t.code == kDLFloat && t.bits == 32) {
    std::normal_distribution<float> normal;
    for (size_t i = 0; i < n; ++i) reinterpret_cast<float*>(Bytes(tensor))[i] = normal(rng);
  } else if (t.code == kDLInt && t.bits == 8) {
    std::uniform_int_distribution<int> byte(-128, 127);
    for (size_t i = 0; i < n; ++i) reinterpret_cast<int8_t*>(Bytes(tensor))[i] = static_cast<int8_t>(byte(rng));
  } else {
    throw std::runtime_error("cannot make a random " + DTypeText(t) + " input: give one with --input");
  }
  return tensor;
}

ffi::Tensor InputFromFile(const std::string& path, const Signature& signature) {
  Array array = ReadNpy(path);
  if (array.shape != signature.shape || !(array.dtype == signature.dtype)) {
    throw UsageError(path + " is " + ShapeText(array.shape) + " " + DTypeText(array.dtype) +
                     "; the model expects " + ShapeText(signature.shape) + " " + DTypeText(signature.dtype));
  }
  ffi::Tensor tensor = Allocate(array.shape, array.dtype);
  std::memcpy(Bytes(tensor), array.data.data(), array.data.size());
  return tensor;
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

template <typename T>
void Summarize(const ffi::Tensor& out, double* min, double* max, double* mean, size_t* argmax) {
  const T* values = reinterpret_cast<const T*>(Bytes(out));
  size_t n = ElementCount(std::vector<int64_t>(out.shape().begin(), out.shape().end()));
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

void PrintOutput(size_t index, const ffi::Tensor& out) {
  DLDataType t = out.dtype();
  double min = 0, max = 0, mean = 0;
  size_t argmax = 0;
  if (t.code == kDLFloat && t.bits == 32) Summarize<float>(out, &min, &max, &mean, &argmax);
  else if (t.code == kDLFloat && t.bits == 64) Summarize<double>(out, &min, &max, &mean, &argmax);
  else if (t.code == kDLInt && t.bits == 8) Summarize<int8_t>(out, &min, &max, &mean, &argmax);
  else if (t.code == kDLInt && t.bits == 32) Summarize<int32_t>(out, &min, &max, &mean, &argmax);
  else if (t.code == kDLInt && t.bits == 64) Summarize<int64_t>(out, &min, &max, &mean, &argmax);
  else if (t.code == kDLUInt && t.bits == 8) Summarize<uint8_t>(out, &min, &max, &mean, &argmax);
  std::vector<int64_t> shape(out.shape().begin(), out.shape().end());
  std::printf("output %zu: shape %s %s; min %.6g max %.6g mean %.6g; argmax %zu\n", index, ShapeText(shape).c_str(),
              DTypeText(t).c_str(), min, max, mean, argmax);
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
  std::string model, input, output;
  int repeat = 0, threads = 0;
  uint32_t seed = 0;
};

const char* kUsage =
    "usage: bnn-run model.so [--input x.npy] [--output y.npy] [--repeat N] [--threads T] [--seed S]\n"
    "  Run a model compiled by `bnn-tvm compile`. Without --input: a random input of the model's recorded\n"
    "  shape. --repeat N: median latency of N runs after a warm-up. --threads T: TVM threads (default one\n"
    "  per physical core).\n";

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
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      std::string value = argv[++i];
      if (arg == "--input") options.input = value;
      else if (arg == "--output") options.output = value;
      else if (arg == "--repeat") options.repeat = PositiveInt(arg, value, 1);
      else if (arg == "--threads") options.threads = PositiveInt(arg, value, 1);
      else if (arg == "--seed") options.seed = static_cast<uint32_t>(PositiveInt(arg, value, 0));
      else throw UsageError("unknown option " + arg + " (bnn-run --help)");
    } else if (options.model.empty()) {
      options.model = arg;
    } else {
      throw UsageError("one model at a time, got " + options.model + " and " + arg);
    }
  }
  if (options.model.empty()) throw UsageError("no model given (bnn-run --help)");
  return options;
}

std::string OutputPath(const std::string& path, size_t index) {
  if (index == 0) return path;  // further outputs: y.npy -> y.1.npy, y.2.npy, ...
  size_t dot = path.rfind(".npy");
  return (dot == std::string::npos ? path : path.substr(0, dot)) + "." + std::to_string(index) + ".npy";
}

int Run(const Options& options) {
  int threads = ConfigureThreads(options.threads);
  ffi::Module vm = LoadVirtualMachine(options.model);
  ffi::Function model = VmFunction(vm, "main", options.model);
  std::string signature_json(VmFunction(vm, kSignatureFunction, options.model)().cast<ffi::String>());
  size_t inputs = 0;
  Signature signature = ParseSignature(signature_json, &inputs);
  if (inputs != 1) {
    throw UsageError(options.model + " takes " + std::to_string(inputs) + " inputs; bnn-run feeds one");
  }
  ffi::Tensor input;
  if (options.input.empty()) {
    input = RandomInput(signature, options.seed);
    std::printf("random input %s %s (seed %u)\n", ShapeText(signature.shape).c_str(),
                DTypeText(signature.dtype).c_str(), options.seed);
  } else {
    input = InputFromFile(options.input, signature);
  }
  std::vector<ffi::Tensor> outputs = Outputs(model(input));
  for (size_t i = 0; i < outputs.size(); ++i) {
    PrintOutput(i, outputs[i]);
    if (!options.output.empty()) {
      const ffi::Tensor& out = outputs[i];
      std::vector<int64_t> shape(out.shape().begin(), out.shape().end());
      WriteNpy(OutputPath(options.output, i), shape, out.dtype(), Bytes(out));
      std::printf("saved output %zu to %s\n", i, OutputPath(options.output, i).c_str());
    }
  }
  if (options.repeat > 0) {
    std::vector<double> ms;
    model(input);  // warm-up beyond the first call: caches, the thread pool's spin-up
    for (int i = 0; i < options.repeat; ++i) {
      auto start = std::chrono::steady_clock::now();
      model(input);
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
