// Lane-wise float vectors for the C++ kernels (GCC/Clang vector extension), shared by attention.cpp
// and rowwise.cpp. Results never depend on the vector width the compiler maps them to: every
// operation is per lane, and every cross-lane sum has the fixed tree of ``hsum``.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <cstring>

namespace aios_vec {

// 16 floats, lane-wise arithmetic (GCC/Clang vector extension): one AVX-512 register, or two AVX2
// ones, or four SSE ones. Results do not depend on which: every operation is per lane.
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
typedef uint32_t vu __attribute__((vector_size(64)));
constexpr int kLanes = 16;
// 8 floats: one AVX2 register. For lane-wise work (exp, SiLU) on AVX2, GCC compiles the 16-lane type's
// compares and selects several times slower than two 8-lane halves (SiLU: 2.1 ms against 0.29 ms for
// 512 x 1536, bit-identical), so hot lane-wise loops use this type; sums keep the 16-lane order.
typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
template <typename V> struct IntOf;
template <> struct IntOf<vf> { using type = vi; };
template <> struct IntOf<vf8> { using type = vi8; };

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline vf load(const at::BFloat16* p) {  // bf16 -> f32 is exact: the bits move up by 16
  vh h; std::memcpy(&h, p, sizeof h);
  vu u = __builtin_convertvector(h, vu) << 16;
  vf v; std::memcpy(&v, &u, sizeof v); return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline void store(at::BFloat16* p, vf v) {
  alignas(64) float f[kLanes]; std::memcpy(f, &v, sizeof v);
  for (int l = 0; l < kLanes; ++l) p[l] = static_cast<at::BFloat16>(f[l]);
}
inline vf splat(float x) { return vf{} + x; }
inline vf8 load8f(const float* p) { vf8 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store8f(float* p, vf8 v) { std::memcpy(p, &v, sizeof v); }

// Sum of the 16 lanes in a fixed tree (lane l += lane l+8, then l += l+4, l+2, l+1), in registers.
inline float hsum(vf v) {
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
  v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
  v += __builtin_shufflevector(v, v, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0);
  return v[0];
}

// exp(x) for x <= 0: x = n ln2 + r, |r| <= ln2/2, 2^n from the exponent bits, exp(r) by a degree-6
// polynomial (relative error ~2e-7). Written out so every build computes the same bits; lane-wise,
// so the 8- and 16-lane types give each lane the same bits.
template <typename V>
inline V vexp(V x) {
  using VI = typename IntOf<V>::type;
  x = x < -87.0f ? V{} - 87.0f : x;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  V n = (x * 1.44269504088896341f + magic) - magic;
  V r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
  V p = V{} + 1.0f / 720;
  p = p * r + 1.0f / 120; p = p * r + 1.0f / 24; p = p * r + 1.0f / 6; p = p * r + 0.5f; p = p * r + 1.0f;
  p = p * r + 1.0f;
  VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  V scale; std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace aios_vec
