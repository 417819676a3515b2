// Ragged attention over the slot KV cache, every query row in a fixed order of its own.
//
// Why a kernel of our own: in eager torch, attention over ragged rows is ~20 small ops per layer
// (gather each row's keys into a padded block, chunked matmuls, mask, max, exp, per-chunk sums and
// a scan), which at 16-32 decode rows costs more than the weight matmuls. Here each query reads its
// own slot's keys and values straight from the cache and computes
//
//     s_j = scale * fma(q[D-1], k_j[D-1], ... fma(q[0], k_j[0], 0))      j < len
//     o   = sum_j exp(s_j - max s) v_j / sum_j exp(s_j - max s)          (sums in key order)
//
// The order of every sum depends only on ``len`` and ``head_dim``, never on which other rows are in
// the call, how many there are, which slot the row sits in or how the cache is padded: a row gets
// the same bits alone or in any batch, in a decode step or inside a prompt chunk. That is the
// batch invariance the engine's exactness rests on, by construction rather than by measurement.
//
// Why the keys are stored transposed in blocks of 16: a dot product per key with lanes over
// head_dim ends in a horizontal sum (about as many shuffles and adds as multiplies), which held
// prompt attention to ~9 GFLOP/s. With a block's d-th row holding dimension d of its 16 keys, 16
// scores are one register-wide FMA chain over d, the query's q[d] broadcast: a GEMM tile, no
// horizontal sums. A prompt's rows (and the query heads sharing a KV head) share each key block
// while it sits in L1, and the values likewise per block of 64 keys.
//
// Inputs: q [T, H, D] and the step's new keys and values k, v [T, KVH, D] (float32 or bfloat16); the
// key cache [S, KVH, cap/16, D, 16] and value cache [S, KVH, cap, D] of the same dtype; slot [T] and
// pos [T] (int64: the row's slot and position). The call first writes every row's k, v at
// (slot, pos), then row t attends to its slot's keys [0, pos + 1). Output [T, H, D].
// Accumulation is in float32. Work items (a tile of a sequence's consecutive rows x one KV head) are
// spread over threads with at::parallel_for. Needs AVX2 + FMA (the loader builds it only there).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "vec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

namespace {

using namespace aios_vec;

constexpr int kBlock = 16;     // keys per transposed key block
constexpr int kRows = 8;       // rows per tile (x query heads per KV head = query vectors sharing the keys)
constexpr int64_t kVBlock = 64;  // keys per value block: 16 KB of fp32 values at head_dim 64, L1-resident

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) {  // bf16 -> f32 is exact: the bits move up by 16
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// Scores of R query vectors (float32, D each) against KB consecutive key blocks: s[r][16 kb + l] =
// scale * (FMA chain over d of q_r[d] * key (16 kb + l)[d]). R * KB <= 6: 12 accumulators, 2 key
// registers and a broadcast fit AVX2's 16.
template <typename T, int R, int KB>
inline void score_tile(const float* const* q, const T* kt, int64_t D, float scale, float* const* s, int64_t j0) {
  __m256 acc[R][2 * KB];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < 2 * KB; ++j) acc[r][j] = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    __m256 k[2 * KB];
#pragma GCC unroll 16
    for (int b = 0; b < KB; ++b) {
      k[2 * b] = load8(kt + (b * D + d) * kBlock);
      k[2 * b + 1] = load8(kt + (b * D + d) * kBlock + 8);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m256 qd = _mm256_broadcast_ss(q[r] + d);
#pragma GCC unroll 16
      for (int j = 0; j < 2 * KB; ++j) acc[r][j] = _mm256_fmadd_ps(qd, k[j], acc[r][j]);
    }
  }
  const __m256 sc = _mm256_set1_ps(scale);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < 2 * KB; ++j) _mm256_storeu_ps(s[r] + j0 + 8 * j, _mm256_mul_ps(acc[r][j], sc));
}

template <typename T, int KB>
inline void score_tile_r(int R, const float* const* q, const T* kt, int64_t D, float scale, float* const* s, int64_t j0) {
  switch (R) {
    case 1: return score_tile<T, 1, KB>(q, kt, D, scale, s, j0);
    case 2: return score_tile<T, 2, KB>(q, kt, D, scale, s, j0);
    case 3: return score_tile<T, 3, KB>(q, kt, D, scale, s, j0);
    case 4: if constexpr (KB == 1) return score_tile<T, 4, 1>(q, kt, D, scale, s, j0); break;
    case 5: if constexpr (KB == 1) return score_tile<T, 5, 1>(q, kt, D, scale, s, j0); break;
    case 6: if constexpr (KB == 1) return score_tile<T, 6, 1>(q, kt, D, scale, s, j0); break;
  }
  TORCH_CHECK(false, "score tile of ", R, " x ", KB);
}

// exp(s_j - max) in place for j < n (zero past n, up to the next multiple of 16); returns the 16 lane
// sums of the denominator, lane l summing j = l (mod 16) in key order.
// The 16 lanes are two 8-lane halves (``vf8``: lane-wise work on AVX2 compiles far better so).
inline vf softmax_numerators(float* s, int64_t n, float mx) {
  const int64_t padded = (n + kLanes - 1) / kLanes * kLanes;
  for (int64_t j = n; j < padded; ++j) s[j] = mx;
  vf8 lo = vf8{}, hi = vf8{};
  for (int64_t j = 0; j < padded; j += kLanes) {
    vf8 e0 = vexp(load8f(s + j) - mx), e1 = vexp(load8f(s + j + 8) - mx);
    store8f(s + j, e0);
    store8f(s + j + 8, e1);
    if (j + kLanes > n) {  // the row's last keys: lanes past n are not keys
      for (int64_t l = n - j; l < kLanes; ++l) s[j + l] = 0.f;
      e0 = load8f(s + j), e1 = load8f(s + j + 8);
    }
    lo += e0;
    hi += e1;
  }
  alignas(64) float f[kLanes];
  store8f(f, lo);
  store8f(f + 8, hi);
  return load(f);
}

// acc[d] = fma(e_j, v_j[d], acc[d]) for j in [j0, j1), d in [0, W) of one query vector: W / 8
// accumulators (W <= 64), the chain over keys in key order.
template <typename T, int W>
inline void pv_chunk(const float* e, const T* v, int64_t D, int64_t j0, int64_t j1, float* acc_mem) {
  __m256 acc[W / 8];
#pragma GCC unroll 8
  for (int i = 0; i < W / 8; ++i) acc[i] = _mm256_loadu_ps(acc_mem + 8 * i);
  for (int64_t j = j0; j < j1; ++j) {
    const __m256 ej = _mm256_broadcast_ss(e + j);
    const T* vj = v + j * D;
#pragma GCC unroll 8
    for (int i = 0; i < W / 8; ++i) acc[i] = _mm256_fmadd_ps(ej, load8(vj + 8 * i), acc[i]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < W / 8; ++i) _mm256_storeu_ps(acc_mem + 8 * i, acc[i]);
}

struct Scratch {
  std::vector<float> q, s, acc;
};

// One work item: R = nb * grp query vectors (rows r of positions p0 + r, the grp query heads of KV
// head g), row r seeing keys [0, n0 + r). kt: the slot's key blocks of head g, v: its values.
template <typename T, int D>
void attend_item(const T* q, int64_t H, int64_t h0, int grp, int nb, int64_t n0, const T* kt, const T* v,
                 T* out, float scale, Scratch& sc) {
  const int R = nb * grp;
  const int64_t nmax = n0 + nb - 1, stride = (nmax + kBlock - 1) / kBlock * kBlock;
  sc.q.resize(R * D);
  sc.s.resize(R * stride);
  sc.acc.assign(R * D, 0.f);
  const float* qs[kRows * 8];
  float* ss[kRows * 8];
  int64_t len[kRows * 8];
  for (int r = 0; r < R; ++r) {  // query vector r: row r / grp, head h0 + r % grp
    const T* src = q + ((r / grp) * H + h0 + r % grp) * D;
    for (int d = 0; d < D; ++d) sc.q[r * D + d] = static_cast<float>(src[d]);
    qs[r] = sc.q.data() + r * D;
    ss[r] = sc.s.data() + r * stride;
    len[r] = n0 + r / grp;
  }
  // Scores, one key block at a time for every query vector that sees a key in it (a suffix: later
  // rows see more keys). Few queries (a decode row): two blocks per tile to keep 12 FMA chains going.
  for (int64_t j0 = 0; j0 < nmax; j0 += kBlock) {
    int first = 0;
    while (len[first] <= j0) ++first;
    const int act = R - first;
    const T* kb = kt + j0 * D;
    if (act <= 3 && j0 + kBlock < nmax && len[first] > j0 + kBlock) {
      score_tile_r<T, 2>(act, qs + first, kb, D, scale, ss + first, j0);
      j0 += kBlock;
      continue;
    }
    for (int r = first; r < R; r += 6) score_tile_r<T, 1>(std::min(6, R - r), qs + r, kb, D, scale, ss + r, j0);
  }
  float inv[kRows * 8];
  for (int r = 0; r < R; ++r) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < len[r]; ++j) mx = ss[r][j] > mx ? ss[r][j] : mx;
    inv[r] = 1.0f / hsum(softmax_numerators(ss[r], len[r], mx));
  }
  // Values, one block of 64 keys at a time (L1-resident) for every query vector that sees it; each
  // output's chain over keys stays in key order across blocks (its accumulators wait in sc.acc).
  constexpr int W = D < 64 ? D : 64;
  for (int64_t j0 = 0; j0 < nmax; j0 += kVBlock)
    for (int r = 0; r < R; ++r) {
      const int64_t j1 = std::min(j0 + kVBlock, len[r]);
      if (j1 <= j0) continue;
      for (int d0 = 0; d0 < D; d0 += W) pv_chunk<T, W>(ss[r], v + d0, D, j0, j1, sc.acc.data() + r * D + d0);
    }
  for (int r = 0; r < R; ++r) {
    T* o = out + ((r / grp) * H + h0 + r % grp) * D;
    for (int d = 0; d < D; ++d) o[d] = static_cast<T>(sc.acc[r * D + d] * inv[r]);
  }
}

template <typename T, int D>
void attend_rows(const T* q, const T* kc, const T* vc, const int64_t* slot, const int64_t* len, T* out, int64_t rows,
                 int64_t H, int64_t KVH, int64_t cap, float scale) {
  const int grp = static_cast<int>(H / KVH);
  TORCH_CHECK(grp <= 8, "at most 8 query heads per KV head");
  std::vector<std::pair<int64_t, int>> tiles;  // (first row, rows): consecutive positions of one slot
  for (int64_t t = 0; t < rows;) {
    int nb = 1;
    while (nb < kRows && t + nb < rows && slot[t + nb] == slot[t] && len[t + nb] == len[t] + nb) ++nb;
    tiles.emplace_back(t, nb);
    t += nb;
  }
  // A prompt's later tiles see more keys: order them first, last, second, second to last... so that
  // parallel_for's contiguous ranges get about equal work.
  const int64_t n_tiles = static_cast<int64_t>(tiles.size());
  std::vector<std::pair<int64_t, int>> order(n_tiles);
  for (int64_t i = 0; i < n_tiles; ++i) order[i] = tiles[i % 2 ? n_tiles - 1 - i / 2 : i / 2];
  tiles.swap(order);
  at::parallel_for(0, n_tiles * KVH, 1, [&](int64_t begin, int64_t end) {
    Scratch sc;
    for (int64_t item = begin; item < end; ++item) {
      const auto [t0, nb] = tiles[item / KVH];
      const int64_t g = item % KVH;
      const int64_t head = slot[t0] * KVH + g;
      attend_item<T, D>(q + t0 * H * D, H, g * grp, grp, nb, len[t0], kc + head * cap * D, vc + head * cap * D,
                        out + t0 * H * D, scale, sc);
    }
  });
}

template <typename T>
void attend(const T* q, const T* kc, const T* vc, const int64_t* slot, const int64_t* len, T* out, int64_t rows,
            int64_t H, int64_t KVH, int64_t D, int64_t cap, double scale_d) {
  const float scale = static_cast<float>(scale_d);
  switch (D) {
    case 16: return attend_rows<T, 16>(q, kc, vc, slot, len, out, rows, H, KVH, cap, scale);
    case 32: return attend_rows<T, 32>(q, kc, vc, slot, len, out, rows, H, KVH, cap, scale);
    case 64: return attend_rows<T, 64>(q, kc, vc, slot, len, out, rows, H, KVH, cap, scale);
    case 128: return attend_rows<T, 128>(q, kc, vc, slot, len, out, rows, H, KVH, cap, scale);
    default: TORCH_CHECK(false, "head_dim must be 16, 32, 64 or 128");
  }
}

}  // namespace

torch::Tensor ragged_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor kc, torch::Tensor vc,
                               torch::Tensor slot, torch::Tensor pos, double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && kc.dim() == 5 && vc.dim() == 4 && v.sizes() == k.sizes(),
              "q [T,H,D], k and v [T,KVH,D], key cache [S,KVH,cap/16,D,16], value cache [S,KVH,cap,D]");
  const auto dt = q.scalar_type();
  TORCH_CHECK(k.scalar_type() == dt && v.scalar_type() == dt && kc.scalar_type() == dt && vc.scalar_type() == dt,
              "one dtype");
  TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous(), "contiguous cache");
  TORCH_CHECK(slot.scalar_type() == at::kLong && pos.scalar_type() == at::kLong, "int64 slot and pos");
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2), S = vc.size(0), KVH = vc.size(1), cap = vc.size(2);
  TORCH_CHECK(D == 16 || D == 32 || D == 64 || D == 128, "head_dim must be 16, 32, 64 or 128");
  TORCH_CHECK(vc.size(3) == D && kc.size(0) == S && kc.size(1) == KVH && kc.size(2) * kBlock == cap &&
                  kc.size(3) == D && kc.size(4) == kBlock && H % KVH == 0 && slot.numel() == T && pos.numel() == T &&
                  k.size(0) == T && k.size(1) == KVH && k.size(2) == D,
              "shapes");
  auto qc = q.contiguous(), kn = k.contiguous(), vn = v.contiguous();
  auto sl = slot.contiguous(), ps = pos.contiguous();
  const int64_t* pp = ps.data_ptr<int64_t>();
  const int64_t* sp = sl.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t)
    TORCH_CHECK(pp[t] >= 0 && pp[t] < cap && sp[t] >= 0 && sp[t] < S, "row out of the cache");
  std::vector<int64_t> len(T);
  for (int64_t t = 0; t < T; ++t) len[t] = pp[t] + 1;
  auto out = torch::empty_like(qc);
  // First every new token's key and value into its slot (a prompt chunk's rows see each other's), then attention.
  const int64_t esz = kc.element_size();
  auto* kb = static_cast<char*>(kc.data_ptr());
  auto* vb = static_cast<char*>(vc.data_ptr());
  const auto* kt = static_cast<const char*>(kn.data_ptr());
  const auto* vt = static_cast<const char*>(vn.data_ptr());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < KVH; ++g) {
      const int64_t head = sp[t] * KVH + g, src = (t * KVH + g) * D;
      std::memcpy(vb + ((head * cap + pp[t]) * D) * esz, vt + src * esz, D * esz);
      const int64_t blk = (head * cap + pp[t] / kBlock * kBlock) * D + pp[t] % kBlock;  // element (d = 0) of the key
      for (int64_t d = 0; d < D; ++d) std::memcpy(kb + (blk + d * kBlock) * esz, kt + (src + d) * esz, esz);
    }
  if (dt == at::kFloat) {
    attend<float>(qc.data_ptr<float>(), kc.data_ptr<float>(), vc.data_ptr<float>(), sp, len.data(),
                  out.data_ptr<float>(), T, H, KVH, D, cap, scale);
  } else if (dt == at::kBFloat16) {
    attend<at::BFloat16>(qc.data_ptr<at::BFloat16>(), kc.data_ptr<at::BFloat16>(), vc.data_ptr<at::BFloat16>(), sp,
                         len.data(), out.data_ptr<at::BFloat16>(), T, H, KVH, D, cap, scale);
  } else {
    TORCH_CHECK(false, "float32 or bfloat16");
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ragged_attention", &ragged_attention,
        "write the step's keys/values into the slot KV cache (keys in transposed 16-key blocks), then ragged "
        "attention (fixed order per row)");
}
