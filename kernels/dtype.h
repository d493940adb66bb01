// Element types and scalar conversions.
//
// The conversions are bit-identical to NVIDIA's host conversions in cuda_bf16.h and cuda_fp8.h
// (round to nearest, ties to even), so a CPU run quantizes exactly like a GPU run. They are
// tested exhaustively against those headers in tests/kernels/dtype_test.cc.
//
// fp8 e4m3 (OCP "E4M3FN"): no infinities, finite max 448, one NaN pattern per sign (S.1111.111).
// fp8 e5m2: IEEE-like, finite max 57344, has Inf and NaN.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace fathom {

enum class DType : uint8_t { kF32, kBF16, kF8E4M3, kF8E5M2, kI32, kI64, kU8 };

// Storage structs: distinct types so templates can dispatch on them; layout = raw bits.
struct bf16 {
  uint16_t bits;
};
struct fp8e4m3 {
  uint8_t bits;
};
struct fp8e5m2 {
  uint8_t bits;
};

constexpr float kFp8E4M3Max = 448.0f;
constexpr float kFp8E5M2Max = 57344.0f;

size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);  // "f32", "bf16", "f8e4m3", ...
bool dtype_is_float(DType dtype);          // f32, bf16 and both fp8 formats

template <typename T>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::kF32; }
template <> constexpr DType dtype_of<bf16>() { return DType::kBF16; }
template <> constexpr DType dtype_of<fp8e4m3>() { return DType::kF8E4M3; }
template <> constexpr DType dtype_of<fp8e5m2>() { return DType::kF8E5M2; }
template <> constexpr DType dtype_of<int32_t>() { return DType::kI32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::kI64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::kU8; }

// Saturation for conversions into fp8 (matches __nv_saturation_t):
// kFinite clamps out-of-range finite values and +-Inf to +-max; kNone maps them to Inf (e5m2) or
// NaN (e4m3). NaN always stays NaN.
enum class Fp8Saturation : uint8_t { kNone, kFinite };

// ---- bf16 (inline: these sit in every hot loop) ----
inline float bf16_to_float(bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even; NaN becomes the canonical quiet NaN 0x7FFF, as __float2bfloat16 does.
inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16{0x7FFF};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

// ---- fp8 (out of line; hot paths use them once per element of a quantization pass) ----
float fp8e4m3_to_float(fp8e4m3 x);
float fp8e5m2_to_float(fp8e5m2 x);
fp8e4m3 float_to_fp8e4m3(float f, Fp8Saturation sat = Fp8Saturation::kFinite);
fp8e5m2 float_to_fp8e5m2(float f, Fp8Saturation sat = Fp8Saturation::kFinite);

// Generic load/store between a storage type and float, for templated kernels.
inline float to_float(float x) { return x; }
inline float to_float(bf16 x) { return bf16_to_float(x); }
inline float to_float(fp8e4m3 x) { return fp8e4m3_to_float(x); }
inline float to_float(fp8e5m2 x) { return fp8e5m2_to_float(x); }

template <typename T>
T from_float(float f);
template <> inline float from_float<float>(float f) { return f; }
template <> inline bf16 from_float<bf16>(float f) { return float_to_bf16(f); }
template <> inline fp8e4m3 from_float<fp8e4m3>(float f) { return float_to_fp8e4m3(f); }
template <> inline fp8e5m2 from_float<fp8e5m2>(float f) { return float_to_fp8e5m2(f); }

}  // namespace fathom
