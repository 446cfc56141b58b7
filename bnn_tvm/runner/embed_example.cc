// The least code that runs a bnn-tvm model inside your own C++ program: load model.so, hand it a buffer,
// read the output. It needs TVM's runtime (libtvm_runtime.so, libtvm_ffi.so) and the tvm-ffi headers, both
// in a bnn-tvm bundle. Build it in the bundle's folder with:
//
//   g++ -std=c++17 -O2 embed_example.cc -o embed_example -Iinclude -L. -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi -Wl,-rpath,'$ORIGIN'
//
// (for a Raspberry Pi from a PC: aarch64-linux-gnu-g++ instead of g++, with the aarch64 bundle's libraries).
// Run it with the model and its input shape (`bnn-run model.so` prints the shape):
//
//   ./embed_example ./model.so 1 224 224 3
//
// This example feeds a float32 input of ones and expects a float32 output; bnn_run.cc in the bundle is the
// complete program (.npy files, int8, the recorded input shape, timing, threads, error messages).

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace ffi = tvm::ffi;

// Tensors handed to TVM's kernels are 64-byte aligned (TVM's kAllocAlignment).
struct AlignedAlloc {
  void AllocData(DLTensor* tensor) { tensor->data = std::aligned_alloc(64, (ffi::GetDataSize(*tensor) + 63) / 64 * 64); }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s ./model.so DIM [DIM ...]\n", argv[0]);
    return 2;
  }
  try {
    // Load the library (a path with a slash: dlopen searches the library path for a bare name) and start its
    // Relax VM on the CPU: device type 1 (kDLCPU), device 0, allocator 2 (pooled).
    ffi::Module library = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = library->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    ffi::Function model = vm->GetFunction("main").value();

    // Your data, e.g. a camera frame already resized and normalised, NHWC float32.
    std::vector<int64_t> shape;
    for (int i = 2; i < argc; ++i) shape.push_back(std::atoll(argv[i]));
    std::vector<float> frame(ffi::Shape(shape).Product(), 1.0f);

    ffi::Tensor input = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::Shape(shape), DLDataType{kDLFloat, 32, 1},
                                                 DLDevice{kDLCPU, 0});
    std::memcpy(input.data_ptr(), frame.data(), frame.size() * sizeof(float));

    ffi::Tensor output = model(input).cast<ffi::Tensor>();
    const float* scores = static_cast<const float*>(output.data_ptr());
    int64_t count = output.numel();
    int64_t best = 0;
    for (int64_t i = 1; i < count; ++i) best = scores[i] > scores[best] ? i : best;
    std::printf("%lld outputs; largest %g at index %lld\n", static_cast<long long>(count), scores[best],
                static_cast<long long>(best));
  } catch (const ffi::Error& err) {
    std::fprintf(stderr, "error: %s: %s\n", err.kind().c_str(), err.message().c_str());
    return 1;
  }
  return 0;
}
