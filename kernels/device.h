// Where a tensor lives: the host, or one CUDA device.
#pragma once

#include <cstdint>
#include <string>

namespace fathom {

struct Device {
  enum class Type : uint8_t { kCPU, kCUDA };
  Type type = Type::kCPU;
  int index = 0;  // CUDA ordinal; 0 for the CPU

  static Device cpu() { return {Type::kCPU, 0}; }
  static Device cuda(int index = 0) { return {Type::kCUDA, index}; }
  bool is_cpu() const { return type == Type::kCPU; }
  bool is_cuda() const { return type == Type::kCUDA; }
  bool operator==(const Device&) const = default;
  std::string str() const;  // "cpu" or "cuda:1"
};

// True when this build has the CUDA backend.
bool cuda_built();
// Number of CUDA devices that can run kernels now: 0 without the backend, a driver or a GPU.
int cuda_device_count();

}  // namespace fathom
