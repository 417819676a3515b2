// Ragged attention over the slot KV cache, one query row at a time, in a fixed order.
//
// Why a kernel of our own: in eager torch, attention over ragged rows is ~20 small ops per layer
// (gather each row's keys into a padded block, chunked matmuls, mask, max, exp, per-chunk sums and
// a scan), which at 16-32 decode rows costs more than the weight matmuls. Here each (query, head)
// pair reads its own slot's keys and values straight from the cache and computes
//
//     s_j = (q . k_j) * scale            j < len   (dot product: 16 partial sums, fixed tree)
//     o   = sum_j exp(s_j - max s) v_j / sum_j exp(s_j - max s)   (sums in key order, j = 0, 1, ...)
//
// The order of every sum depends only on ``len`` and ``head_dim``, never on which other rows are in
// the call, how many there are, which slot the row sits in or how the cache is padded: a row gets
// the same bits alone or in any batch, in a decode step or inside a prompt chunk. That is the
// batch invariance the engine's exactness rests on, by construction rather than by measurement.
//
// Inputs: q [T, H, D] (float32 or bfloat16), key/value cache [S, KVH, cap, D] of the same dtype,
// slot [T] and len [T] (int64: the row's slot and how many keys it sees). Output [T, H, D].
// Accumulation is in float32. Rows are spread over threads with at::parallel_for.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace {

// 16 floats, lane-wise arithmetic (GCC/Clang vector extension): one AVX-512 register, or two AVX2
// ones, or four SSE ones. Results do not depend on which: every operation is per lane.
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
typedef uint32_t vu __attribute__((vector_size(64)));
constexpr int kLanes = 16;

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

// Sum of the 16 lanes in a fixed tree (8+8, 4+4, 2+2, 1+1).
inline float hsum(vf v) {
  alignas(64) float f[kLanes]; std::memcpy(f, &v, sizeof v);
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) f[l] += f[l + w];
  return f[0];
}

// exp(x) for x <= 0: x = n ln2 + r, |r| <= ln2/2, 2^n from the exponent bits, exp(r) by a degree-6
// polynomial (relative error ~2e-7). Written out so every build computes the same bits.
inline vf vexp(vf x) {
  x = x < -87.0f ? splat(-87.0f) : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf n = (x * 1.44269504088896341f + magic) - magic;
  vf r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
  vf p = splat(1.0f / 720) ;
  p = p * r + 1.0f / 120; p = p * r + 1.0f / 24; p = p * r + 1.0f / 6; p = p * r + 0.5f; p = p * r + 1.0f;
  p = p * r + 1.0f;
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale; std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// One (row, KV head): its ``grp`` query heads against keys [0, n) of its slot.
template <typename T>
void attend_one(const T* q, const T* kbase, const T* vbase, T* out, int64_t n, int64_t grp, int64_t D,
                float scale, std::vector<float>& s) {
  const int64_t nv = D / kLanes, padded = (n + kLanes - 1) / kLanes * kLanes;
  s.assign(grp * padded, -INFINITY);
  std::vector<vf> qv(grp * nv), acc(grp * nv, vf{});
  for (int64_t h = 0; h < grp; ++h)
    for (int64_t i = 0; i < nv; ++i) qv[h * nv + i] = load(q + h * D + i * kLanes);
  for (int64_t j = 0; j < n; ++j) {  // scores: q . k_j, lanes over head_dim, fixed tree
    const T* k = kbase + j * D;
    vf kv[8];
    for (int64_t i = 0; i < nv; ++i) kv[i] = load(k + i * kLanes);
    for (int64_t h = 0; h < grp; ++h) {
      vf d = qv[h * nv] * kv[0];
      for (int64_t i = 1; i < nv; ++i) d += qv[h * nv + i] * kv[i];
      s[h * padded + j] = hsum(d) * scale;
    }
  }
  for (int64_t h = 0; h < grp; ++h) {
    float* sh = s.data() + h * padded;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) mx = sh[j] > mx ? sh[j] : mx;
    vf den = vf{};
    for (int64_t j = 0; j < padded; j += kLanes) {  // e_j in place; lane l sums j = l (mod 16)
      vf e = vexp(load(sh + j) - mx);
      if (j + kLanes > n) {
        alignas(64) float f[kLanes]; std::memcpy(f, &e, sizeof e);
        for (int64_t l = n - j; l < kLanes; ++l) f[l] = 0.f;
        std::memcpy(&e, f, sizeof e);
      }
      den += e;
      store(sh + j, e);
    }
    const float inv = 1.0f / hsum(den);
    for (int64_t i = 0; i < nv; ++i) qv[h * nv + i] = splat(inv);  // reuse as 1/den
  }
  for (int64_t j = 0; j < n; ++j) {  // o = sum_j e_j v_j, in key order, lanes over head_dim
    const T* v = vbase + j * D;
    vf vv[8];
    for (int64_t i = 0; i < nv; ++i) vv[i] = load(v + i * kLanes);
    for (int64_t h = 0; h < grp; ++h) {
      const vf e = splat(s[h * padded + j]);
      for (int64_t i = 0; i < nv; ++i) acc[h * nv + i] += e * vv[i];
    }
  }
  for (int64_t h = 0; h < grp; ++h)
    for (int64_t i = 0; i < nv; ++i) store(out + h * D + i * kLanes, acc[h * nv + i] * qv[h * nv + i]);
}

template <typename T>
void attend_rows(const T* q, const T* kc, const T* vc, const int64_t* slot, const int64_t* len, T* out,
                 int64_t rows, int64_t H, int64_t KVH, int64_t D, int64_t cap, double scale) {
  const int64_t grp = H / KVH;
  at::parallel_for(0, rows * KVH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / KVH, g = item % KVH;
      const int64_t base = ((slot[t] * KVH + g) * cap) * D;
      attend_one<T>(q + (t * H + g * grp) * D, kc + base, vc + base, out + (t * H + g * grp) * D, len[t], grp,
                    D, static_cast<float>(scale), s);
    }
  });
}

}  // namespace

torch::Tensor ragged_attention(torch::Tensor q, torch::Tensor kc, torch::Tensor vc, torch::Tensor slot,
                               torch::Tensor len, double scale) {
  TORCH_CHECK(q.dim() == 3 && kc.dim() == 4 && vc.sizes() == kc.sizes(), "q [T,H,D], cache [S,KVH,cap,D]");
  TORCH_CHECK(q.scalar_type() == kc.scalar_type() && kc.scalar_type() == vc.scalar_type(), "one dtype");
  TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous(), "contiguous cache");
  TORCH_CHECK(slot.scalar_type() == at::kLong && len.scalar_type() == at::kLong, "int64 slot and len");
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2), KVH = kc.size(1), cap = kc.size(2);
  TORCH_CHECK(D % 16 == 0 && D <= 128, "head_dim a multiple of 16, at most 128");
  TORCH_CHECK(kc.size(3) == D && H % KVH == 0 && slot.numel() == T && len.numel() == T, "shapes");
  auto qc = q.contiguous();
  auto sl = slot.contiguous(), ln = len.contiguous();
  const int64_t* lp = ln.data_ptr<int64_t>();
  const int64_t* sp = sl.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t)
    TORCH_CHECK(lp[t] >= 1 && lp[t] <= cap && sp[t] >= 0 && sp[t] < kc.size(0), "row out of the cache");
  auto out = torch::empty_like(qc);
  if (q.scalar_type() == at::kFloat) {
    attend_rows<float>(qc.data_ptr<float>(), kc.data_ptr<float>(), vc.data_ptr<float>(), sp, lp,
                       out.data_ptr<float>(), T, H, KVH, D, cap, scale);
  } else if (q.scalar_type() == at::kBFloat16) {
    attend_rows<at::BFloat16>(qc.data_ptr<at::BFloat16>(), kc.data_ptr<at::BFloat16>(),
                              vc.data_ptr<at::BFloat16>(), sp, lp, out.data_ptr<at::BFloat16>(), T, H, KVH,
                              D, cap, scale);
  } else {
    TORCH_CHECK(false, "float32 or bfloat16");
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ragged_attention", &ragged_attention, "ragged attention over the slot KV cache (fixed order per row)");
}
