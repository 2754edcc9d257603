// 8-lane float vectors for the C++ kernels (GCC vector extensions, so any x86-64 compiles them; AVX2 + FMA when
// the build enables them): loads, stores, a horizontal sum and the softmax's base-2 exponential. Shared by
// local_attention.cpp and fixed_sparse_attention.cpp (kernels/build.py hashes the headers a source includes).

#pragma once

#include <cstdint>
#include <cstring>

namespace vec {

typedef float v8 __attribute__((vector_size(32)));

inline v8 ld(const float* p) { v8 v; std::memcpy(&v, p, sizeof(v8)); return v; }
inline void st(float* p, v8 v) { std::memcpy(p, &v, sizeof(v8)); }
inline v8 bc(float s) { return v8{s, s, s, s, s, s, s, s}; }
// A load that stays one load: where a loaded vector serves several products, GCC otherwise folds it into each
// multiply-add as a memory operand, loading it again for every product (the empty asm pins it to a register).
inline v8 ldr(const float* p) {
  v8 v = ld(p);
#if defined(__x86_64__)
  asm("" : "+v"(v));
#endif
  return v;
}
inline float hsum(v8 v) { float s = 0; for (int i = 0; i < 8; ++i) s += v[i]; return s; }
inline int64_t up8(int64_t n) { return (n + 7) / 8 * 8; }

typedef int32_t i8 __attribute__((vector_size(32)));

// 2^x of 8 lanes, the softmax's exponential (its arguments are scaled by log2 e beforehand): n = round(x) with
// the 1.5 * 2^23 trick (the sum's float keeps n in its low mantissa bits: no float/int conversions), 2^f for
// f = x - n in [-1/2, 1/2] by a degree-6 polynomial fitted to relative error (at most 1e-7 evaluated in float),
// times 2^n built in the exponent bits. Inputs are clamped to [-127, 127]: -127,
// and so -inf, gives n + 127 = 0, the bits of exactly 0.
constexpr float kLog2e = 1.44269504088896341f, kLn2 = 0.693147180559945309f;
inline v8 vexp2(v8 x0) {
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23
  v8 x = x0 > -127.0f ? x0 : bc(-127.0f);
  x = x < 127.0f ? x : bc(127.0f);
  const v8 t = x + kShift;
  const v8 f = x - (t - kShift);
  v8 p = f * 1.534581242594868e-4f + 1.3399930903688073e-3f;
  p = p * f + 9.618489071726799e-3f;
  p = p * f + 5.550328642129898e-2f;
  p = p * f + 2.4022646248340607e-1f;
  p = p * f + 6.931471824645996e-1f;
  p = p * f + 1.0f;
  const i8 bits = (reinterpret_cast<const i8&>(t) + 127) << 23;
  return p * reinterpret_cast<const v8&>(bits);
}

}  // namespace vec
