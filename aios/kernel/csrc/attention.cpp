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
// Inputs: q [T, H, D] and the step's new keys and values k, v [T, KVH, D] (float32 or bfloat16), the
// key/value cache [S, KVH, cap, D] of the same dtype, slot [T] and pos [T] (int64: the row's slot and
// position). The call first writes every row's k, v at (slot, pos), then row t attends to its slot's
// keys [0, pos + 1). Output [T, H, D].
// Accumulation is in float32. Rows are spread over threads with at::parallel_for.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "vec.h"

#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

namespace {

using namespace aios_vec;

// exp(s_j - max) in place for j < n (zero past n, up to the next multiple of 16); returns the 16 lane
// sums of the denominator, lane l summing j = l (mod 16) in key order.
inline vf softmax_numerators(float* s, int64_t n, float mx) {
  const int64_t padded = (n + kLanes - 1) / kLanes * kLanes;
  for (int64_t j = n; j < padded; ++j) s[j] = mx;
  vf den = vf{};
  for (int64_t j = 0; j < padded; j += kLanes) {
    vf e = vexp(load(s + j) - mx);
    if (j + kLanes > n) {
      alignas(64) float f[kLanes];
      std::memcpy(f, &e, sizeof e);
      for (int64_t l = n - j; l < kLanes; ++l) f[l] = 0.f;
      std::memcpy(&e, f, sizeof e);
    }
    den += e;
    store(s + j, e);
  }
  return den;
}

// One query head of ``nb`` <= NB consecutive rows of one sequence (positions p, p+1, ...: row b sees
// keys [0, n0 + b)) against its slot's keys. Each key and value is loaded once for the whole tile;
// every row's arithmetic is exactly what it would be alone (nb = 1): same products, same tree, same
// order over keys. NV = head_dim / 16 and NB are compile-time constants so that the queries and the
// accumulators live in registers.
template <typename T, int NV, int NB>
void attend_tile(const T* const* q, const T* kbase, const T* vbase, T* const* out, int nb, int64_t n0, float scale,
                 std::vector<float>& s) {
  const int64_t nmax = n0 + nb - 1, stride = (nmax + kLanes - 1) / kLanes * kLanes;
  s.resize(NB * stride);
  vf qv[NB][NV];
  float mx[NB];
  for (int b = 0; b < NB; ++b) {
    mx[b] = -INFINITY;
    if (b < nb)
      for (int i = 0; i < NV; ++i) qv[b][i] = load(q[b] + i * kLanes);
  }
  for (int64_t j = 0; j < nmax; ++j) {  // scores: q . k_j, lanes over head_dim, fixed tree
    const T* k = kbase + j * NV * kLanes;
    vf kv[NV];
    for (int i = 0; i < NV; ++i) kv[i] = load(k + i * kLanes);
    for (int b = 0; b < NB; ++b) {
      if (b >= nb || j >= n0 + b) continue;
      vf d = qv[b][0] * kv[0];
      for (int i = 1; i < NV; ++i) d += qv[b][i] * kv[i];
      const float sj = hsum(d) * scale;
      s[b * stride + j] = sj;
      mx[b] = sj > mx[b] ? sj : mx[b];
    }
  }
  vf inv[NB];
  for (int b = 0; b < nb; ++b) inv[b] = splat(1.0f / hsum(softmax_numerators(s.data() + b * stride, n0 + b, mx[b])));
  vf acc[NB][NV] = {};
  for (int64_t j = 0; j < nmax; ++j) {  // o = sum_j e_j v_j, in key order, lanes over head_dim
    const T* v = vbase + j * NV * kLanes;
    vf vv[NV];
    for (int i = 0; i < NV; ++i) vv[i] = load(v + i * kLanes);
    for (int b = 0; b < NB; ++b) {
      if (b >= nb || j >= n0 + b) continue;
      const vf e = splat(s[b * stride + j]);
      for (int i = 0; i < NV; ++i) acc[b][i] += e * vv[i];
    }
  }
  for (int b = 0; b < nb; ++b)
    for (int i = 0; i < NV; ++i) store(out[b] + i * kLanes, acc[b][i] * inv[b]);
}

template <typename T, int NV>
void attend_rows_nv(const T* q, const T* kc, const T* vc, const int64_t* slot, const int64_t* len, T* out,
                    int64_t rows, int64_t H, int64_t KVH, int64_t cap, float scale) {
  constexpr int64_t D = NV * kLanes;
  constexpr int NB = NV >= 8 ? 2 : 4;  // rows per tile: NB * NV accumulators fit the 32 vector registers
  const int64_t grp = H / KVH;
  std::vector<std::pair<int64_t, int>> tiles;  // (first row, rows): consecutive positions of one slot
  for (int64_t t = 0; t < rows;) {
    int nb = 1;
    while (nb < NB && t + nb < rows && slot[t + nb] == slot[t] && len[t + nb] == len[t] + nb) ++nb;
    tiles.emplace_back(t, nb);
    t += nb;
  }
  // A prompt's later tiles see more keys: order them first, last, second, second to last... so that
  // parallel_for's contiguous ranges get about equal work.
  const int64_t n_tiles = static_cast<int64_t>(tiles.size());
  std::vector<std::pair<int64_t, int>> order(n_tiles);
  for (int64_t i = 0; i < n_tiles; ++i) order[i] = tiles[i % 2 ? n_tiles - 1 - i / 2 : i / 2];
  tiles.swap(order);
  at::parallel_for(0, n_tiles * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s;
    const T* qs[NB];
    T* os[NB];
    for (int64_t item = begin; item < end; ++item) {
      const auto [t0, nb] = tiles[item / H];
      const int64_t h = item % H;
      const int64_t base = ((slot[t0] * KVH + h / grp) * cap) * D;
      for (int b = 0; b < nb; ++b) {
        qs[b] = q + ((t0 + b) * H + h) * D;
        os[b] = out + ((t0 + b) * H + h) * D;
      }
      attend_tile<T, NV, NB>(qs, kc + base, vc + base, os, nb, len[t0], scale, s);
    }
  });
}

template <typename T>
void attend_rows(const T* q, const T* kc, const T* vc, const int64_t* slot, const int64_t* len, T* out,
                 int64_t rows, int64_t H, int64_t KVH, int64_t D, int64_t cap, double scale_d) {
  const float scale = static_cast<float>(scale_d);
  switch (D / kLanes) {
    case 1: return attend_rows_nv<T, 1>(q, kc, vc, slot, len, out, rows, H, KVH, cap, scale);
    case 2: return attend_rows_nv<T, 2>(q, kc, vc, slot, len, out, rows, H, KVH, cap, scale);
    case 4: return attend_rows_nv<T, 4>(q, kc, vc, slot, len, out, rows, H, KVH, cap, scale);
    case 8: return attend_rows_nv<T, 8>(q, kc, vc, slot, len, out, rows, H, KVH, cap, scale);
    default: TORCH_CHECK(false, "head_dim must be 16, 32, 64 or 128");
  }
}

}  // namespace

torch::Tensor ragged_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor kc, torch::Tensor vc,
                               torch::Tensor slot, torch::Tensor pos, double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && kc.dim() == 4 && vc.sizes() == kc.sizes() && v.sizes() == k.sizes(),
              "q [T,H,D], k and v [T,KVH,D], cache [S,KVH,cap,D]");
  const auto dt = q.scalar_type();
  TORCH_CHECK(k.scalar_type() == dt && v.scalar_type() == dt && kc.scalar_type() == dt && vc.scalar_type() == dt,
              "one dtype");
  TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous(), "contiguous cache");
  TORCH_CHECK(slot.scalar_type() == at::kLong && pos.scalar_type() == at::kLong, "int64 slot and pos");
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2), KVH = kc.size(1), cap = kc.size(2);
  TORCH_CHECK(D == 16 || D == 32 || D == 64 || D == 128, "head_dim must be 16, 32, 64 or 128");
  TORCH_CHECK(kc.size(3) == D && H % KVH == 0 && slot.numel() == T && pos.numel() == T && k.size(0) == T &&
                  k.size(1) == KVH && k.size(2) == D,
              "shapes");
  auto qc = q.contiguous(), kn = k.contiguous(), vn = v.contiguous();
  auto sl = slot.contiguous(), ps = pos.contiguous();
  const int64_t* pp = ps.data_ptr<int64_t>();
  const int64_t* sp = sl.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t)
    TORCH_CHECK(pp[t] >= 0 && pp[t] < cap && sp[t] >= 0 && sp[t] < kc.size(0), "row out of the cache");
  std::vector<int64_t> len(T);
  for (int64_t t = 0; t < T; ++t) len[t] = pp[t] + 1;
  auto out = torch::empty_like(qc);
  // First every new token's key and value into its slot (a prompt chunk's rows see each other's), then attention.
  const int64_t esz = kc.element_size(), row = D * esz;
  auto* kb = static_cast<char*>(kc.data_ptr());
  auto* vb = static_cast<char*>(vc.data_ptr());
  const auto* kt = static_cast<const char*>(kn.data_ptr());
  const auto* vt = static_cast<const char*>(vn.data_ptr());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < KVH; ++g) {
      const int64_t at = ((sp[t] * KVH + g) * cap + pp[t]) * row;
      std::memcpy(kb + at, kt + (t * KVH + g) * row, row);
      std::memcpy(vb + at, vt + (t * KVH + g) * row, row);
    }
  if (dt == at::kFloat) {
    attend_rows<float>(qc.data_ptr<float>(), kc.data_ptr<float>(), vc.data_ptr<float>(), sp, len.data(),
                       out.data_ptr<float>(), T, H, KVH, D, cap, scale);
  } else if (dt == at::kBFloat16) {
    attend_rows<at::BFloat16>(qc.data_ptr<at::BFloat16>(), kc.data_ptr<at::BFloat16>(),
                              vc.data_ptr<at::BFloat16>(), sp, len.data(), out.data_ptr<at::BFloat16>(), T, H,
                              KVH, D, cap, scale);
  } else {
    TORCH_CHECK(false, "float32 or bfloat16");
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ragged_attention", &ragged_attention, "write the step's keys/values into the slot KV cache, then ragged attention (fixed order per row)");
}
