// y = x @ W.T (+ b) for float32 activations and float32 or bfloat16 weights, in a fixed order.
//
// Why a kernel of our own: exactness needs a row's result not to depend on how many rows share
// the matmul. BLAS libraries pick their kernel, and with it the summation order, by row count
// (MKL: one order for 1 row, another for 2-3, a third from 4; oneDNN's packed kernel: one for 1
// row, another from 2 on some CPUs), so the runner had to measure that at start and pad a lone
// row. Here every output element is one sum, in one order, whatever the row count:
//
//     y[m][n] = fma(x[m][K-1], W[n][K-1], ... fma(x[m][1], W[n][1], fma(x[m][0], W[n][0], 0)))
//
// then + b[n]. Rows and columns are only ever split between registers and threads, never the
// sum over k: batch invariant by construction, for every row count from 1, including 1.
// It is also faster where it matters most on small models: decode steps are weight-bandwidth bound,
// and this streams the packed weight once per step at close to memory speed (MKL's one-row GEMV
// reached 7 GB/s and oneDNN's 11 GB/s on a 2-core AVX2 EPYC); bfloat16 weights halve the bytes.
//
// Layout: ``pack`` turns W [N, K] into panels [ceil(N/16), K, 16] (column n of panel p is output
// p*16 + n, zero-padded at the end), so a k step of a panel is one contiguous 64-byte (32 for
// bf16) load. bf16 -> f32 is exact (the bits move up by 16).
// Needs AVX2 + FMA (the loader builds it only there); AVX-512 uses the same 8-lane code.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

constexpr int kPanel = 16;  // columns per panel: two 8-lane registers
constexpr int64_t kBlockK = 256;  // k per pass: a panel block (16 KB fp32) stays in L1 across a tile's rows
constexpr int64_t kTile = 6;  // rows per register tile
constexpr int64_t kBlockM = 96;  // rows per pass: their k block of x (96 KB) stays in L2 across panels

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// MR rows x NP panels: acc[i][2j + h] holds y[row i][panel j, lanes 8h..8h+7] over k in [k0, k1).
// first: start from zero, else from y (a previous k block). last: add the bias (y rows are padded to
// whole panels, so every load and store is a full 16 columns).
// x: PACKED, the tile's rows interleaved by k (x[(k - k0) * 6 + i], one sequential stream); else row
// i at x + i * ldx, k at x[k - k0].
template <int MR, int NP, bool PACKED, typename W>
inline void tile(const float* x, int64_t ldx, const W* const* panels, int64_t k0, int64_t k1,
                 float* y, int64_t ldy, const float* bias, bool first, bool last) {
  __m256 acc[MR][2 * NP];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < 2 * NP; ++j) acc[i][j] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(y + i * ldy + 8 * j);
  for (int64_t k = k0; k < k1; ++k) {
    __m256 w[2 * NP];
#pragma GCC unroll 16
    for (int j = 0; j < NP; ++j) {
      w[2 * j] = load8(panels[j] + k * kPanel);
      w[2 * j + 1] = load8(panels[j] + k * kPanel + 8);
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m256 xi = _mm256_broadcast_ss(PACKED ? x + (k - k0) * kTile + i : x + i * ldx + (k - k0));
#pragma GCC unroll 16
      for (int j = 0; j < 2 * NP; ++j) acc[i][j] = _mm256_fmadd_ps(xi, w[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < 2 * NP; ++j)
      _mm256_storeu_ps(y + i * ldy + 8 * j,
                       last && bias != nullptr ? _mm256_add_ps(acc[i][j], _mm256_loadu_ps(bias + 8 * j)) : acc[i][j]);
}

// Rows [0, M) of NP panels from panel p0, k block [k0, k1). One or two rows (xp null): a row at a time
// over up to 4 panels (8 loads in flight), x read in place. More rows: tiles of up to 6 rows
// (12 accumulators + 2 weight registers + 1 broadcast of 16) over one panel, x from ``xp``
// (``pack_x``).
template <typename W>
void rows_at(const float* x, const float* xp, int64_t M, int64_t K, const W* const* panels, int64_t p0, int np,
             int64_t k0, int64_t k1, float* y, int64_t ldy, const float* bias, bool first, bool last) {
  const int64_t n0 = p0 * kPanel, klen = k1 - k0;
  const float* b = bias == nullptr ? nullptr : bias + n0;
  if (xp == nullptr) {  // one or two rows: x read in place
    for (int64_t m = 0; m < M; ++m) {
      if (np == 4)
        tile<1, 4, false, W>(x + m * K + k0, K, panels, k0, k1, y + m * ldy + n0, ldy, b, first, last);
      else
        tile<1, 1, false, W>(x + m * K + k0, K, panels, k0, k1, y + m * ldy + n0, ldy, b, first, last);
    }
    return;
  }
  for (int64_t m = 0; m < M; m += kTile) {
    const float* xt = xp + m * klen;  // tile m / 6 of the packed block
    float* yt = y + m * ldy + n0;
    switch (std::min<int64_t>(kTile, M - m)) {
      case 6: tile<6, 1, true, W>(xt, 0, panels, k0, k1, yt, ldy, b, first, last); break;
      case 5: tile<5, 1, true, W>(xt, 0, panels, k0, k1, yt, ldy, b, first, last); break;
      case 4: tile<4, 1, true, W>(xt, 0, panels, k0, k1, yt, ldy, b, first, last); break;
      case 3: tile<3, 1, true, W>(xt, 0, panels, k0, k1, yt, ldy, b, first, last); break;
      case 2: tile<2, 1, true, W>(xt, 0, panels, k0, k1, yt, ldy, b, first, last); break;
      default: tile<1, 1, true, W>(xt, 0, panels, k0, k1, yt, ldy, b, first, last); break;
    }
  }
}

template <typename W>
void rows(const float* x, const float* xp, int64_t M, int64_t K, const W* packed, int64_t p0, int np, int64_t k0,
          int64_t k1, float* y, int64_t ldy, const float* bias, bool first, bool last) {
  const W* panels[4];
  for (int j = 0; j < np; ++j) panels[j] = packed + (p0 + j) * K * kPanel;
  rows_at<W>(x, xp, M, K, panels, p0, np, k0, k1, y, ldy, bias, first, last);
}

// ---- 4-bit panels: weights that are exactly fl(fl(q * d) + m), q in 0..15, per 32 consecutive k of a
// column (what a Q4_1 GGUF dequantizes to, and so the embedded model's decoder weights). The kernel
// rebuilds each weight as fma(q, d, m), which equals the dequantizer's fl(fl(q * d) + m) because
// q * d is exact (``rebuild``), so it multiplies by the very float32 weight the model holds, in the
// same order: the same bits as the float32 panels, from 0.75 byte per weight instead of 4.
// ``q4_form`` in linear.py finds q, d, m and checks every weight, or the matrix keeps float32 panels.
// Q8Block: the same with signed 8-bit codes (a Q8_0 GGUF's w = fl(q * d): m = 0, and + 0 changes no
// bit of a nonzero product; the form check in linear.py compares bits).
struct Q4Block {  // one panel's 16 columns x 32 k
  float d[kPanel], m[kPanel];
  uint8_t c[32][8];  // c[k][j]: column j in the low nibble, column 8 + j in the high one
};
static_assert(sizeof(Q4Block) == 384, "Q4Block layout");
struct Q8Block {
  float d[kPanel], m[kPanel];
  int8_t c[32][kPanel];  // c[k][j]: column j
};
static_assert(sizeof(Q8Block) == 640, "Q8Block layout");

inline void rebuild(__m256 ql, __m256 qh, const float* d, const float* m, __m256& lo, __m256& hi) {
  // q * d is exact (``q4_form`` / ``q8_form`` accept only scales with few enough significant bits: a
  // code of 4 or 8 bits times an fp16 scale fits a float32), so fl(fl(q * d) + m), the dequantizer's two roundings, equals
  // fl(q * d + m): one fused multiply-add, the same bits
  lo = _mm256_fmadd_ps(ql, _mm256_loadu_ps(d), _mm256_loadu_ps(m));
  hi = _mm256_fmadd_ps(qh, _mm256_loadu_ps(d + 8), _mm256_loadu_ps(m + 8));
}

// Weights of k row ``i`` of block ``b``: lanes 0-7 (lo) and 8-15 (hi).
inline void dequant(const Q4Block& b, int i, __m256& lo, __m256& hi) {
  const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.c[i])));
  rebuild(_mm256_cvtepi32_ps(_mm256_and_si256(c, _mm256_set1_epi32(15))), _mm256_cvtepi32_ps(_mm256_srli_epi32(c, 4)),
          b.d, b.m, lo, hi);
}
inline void dequant(const Q8Block& b, int i, __m256& lo, __m256& hi) {
  const __m256i cl = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.c[i])));
  const __m256i ch = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.c[i] + 8)));
  rebuild(_mm256_cvtepi32_ps(cl), _mm256_cvtepi32_ps(ch), b.d, b.m, lo, hi);
}

// One panel's k block [k0, k1) (multiples of 32) as float32 [k1 - k0, 16], for the many-row tiles.
template <typename B>
void dequant_panel(const B* blocks, int64_t k0, int64_t k1, float* out) {
  for (int64_t k = k0; k < k1; k += 32) {
    const B& b = blocks[k / 32];
    for (int i = 0; i < 32; ++i) {
      __m256 lo, hi;
      dequant(b, i, lo, hi);
      _mm256_storeu_ps(out + (k - k0 + i) * kPanel, lo);
      _mm256_storeu_ps(out + (k - k0 + i) * kPanel + 8, hi);
    }
  }
}

// R rows (1-2) x NP panels over [k0, k1), weights rebuilt in registers once for all R rows (decode:
// the rebuild, not the bytes, is the cost). Each row's sums are the 1-row order: rows share weights only.
template <typename B, int NP, int R>
inline void row_q(const float* x, int64_t ldx, const B* const* panels, int64_t k0, int64_t k1, float* y, int64_t ldy,
                  const float* bias, bool first, bool last) {
  __m256 acc[R][2 * NP];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < 2 * NP; ++j) acc[r][j] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(y + r * ldy + 8 * j);
  for (int64_t k = k0; k < k1; k += 32) {
    for (int i = 0; i < 32; ++i) {
      __m256 xi[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) xi[r] = _mm256_broadcast_ss(x + r * ldx + k + i);
#pragma GCC unroll 8
      for (int j = 0; j < NP; ++j) {
        __m256 lo, hi;
        dequant(panels[j][k / 32], i, lo, hi);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          acc[r][2 * j] = _mm256_fmadd_ps(xi[r], lo, acc[r][2 * j]);
          acc[r][2 * j + 1] = _mm256_fmadd_ps(xi[r], hi, acc[r][2 * j + 1]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < 2 * NP; ++j)
      _mm256_storeu_ps(y + r * ldy + 8 * j,
                       last && bias != nullptr ? _mm256_add_ps(acc[r][j], _mm256_loadu_ps(bias + 8 * j)) : acc[r][j]);
}

// Rows [0, M) x k block [k0, k1) into tiles of 6 rows, each interleaved by k: xp[t][k - k0][i] = x[6t + i][k]
// (a short last tile keeps the stride 6). Values are copied, not changed.
void pack_x(const float* x, int64_t M, int64_t K, int64_t k0, int64_t k1, float* xp) {
  const int64_t klen = k1 - k0;
  for (int64_t m = 0; m < M; m += kTile) {
    const int64_t mr = std::min<int64_t>(kTile, M - m);
    float* t = xp + m * klen;
    for (int64_t i = 0; i < mr; ++i)
      for (int64_t k = 0; k < klen; ++k) t[k * kTile + i] = x[(m + i) * K + k0 + k];
  }
}

template <typename W>
void run(const float* x, int64_t M, int64_t K, const W* packed, int64_t P, float* y, const float* bias) {
  const int64_t ldy = P * kPanel;
  // Few rows: groups of 4 panels (a lone row has 8 loads in flight); many rows: one panel at a time,
  // reused from L1 by every 6-row tile. Either way the threads split the panels, never k.
  const int np = M <= 2 ? 4 : 1;
  const int64_t groups = (P + np - 1) / np;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> xp(np == 1 ? (kBlockM + kTile) * kBlockK : 0);
    for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
      const int64_t k1 = std::min(K, k0 + kBlockK);
      // Row blocks of kBlockM: their slice of x (96 x 256 floats), packed, stays in L2 while every
      // panel of this thread passes over it. Blocking rows, panels and k reorders nothing within a sum.
      for (int64_t m0 = 0; m0 < M; m0 += kBlockM) {
        const int64_t mb = std::min(kBlockM, M - m0);
        if (np == 1) pack_x(x + m0 * K, mb, K, k0, k1, xp.data());
        for (int64_t g = g0; g < g1; ++g) {
          const int64_t p0 = g * np;
          const int n = static_cast<int>(std::min<int64_t>(np, P - p0));
          for (int j = 0; j < (n == np ? 1 : n); ++j)
            rows<W>(x + m0 * K, np == 1 ? xp.data() : nullptr, mb, K, packed, p0 + j, n == np ? np : 1, k0, k1, y + m0 * ldy, ldy, bias,
                    k0 == 0, k1 == K);
        }
      }
    }
  });
}

// As ``run``, for coded panels [P, K / 32] blocks. One or two rows: weights rebuilt in registers, 4
// panels at a time for one row, 2 for two (both rows share each rebuilt weight). Many rows: each panel's k block rebuilt once into L1 (16 KB) and shared by the row tiles.
template <typename B>
void run_q(const float* x, int64_t M, int64_t K, const B* packed, int64_t P, float* y, const float* bias) {
  const int64_t ldy = P * kPanel, nkb = K / 32;
  const int np = M <= 2 ? 4 : 1;
  const int64_t groups = (P + np - 1) / np;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> xp(np == 1 ? (kBlockM + kTile) * kBlockK : 0), wbuf(np == 1 ? kBlockK * kPanel : 0);
    for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
      const int64_t k1 = std::min(K, k0 + kBlockK);
      for (int64_t m0 = 0; m0 < M; m0 += kBlockM) {
        const int64_t mb = std::min(kBlockM, M - m0);
        if (np == 1) pack_x(x + m0 * K, mb, K, k0, k1, xp.data());
        for (int64_t g = g0; g < g1; ++g) {
          const int64_t p0 = g * np;
          const int n = static_cast<int>(std::min<int64_t>(np, P - p0));
          const float* b = bias == nullptr ? nullptr : bias + p0 * kPanel;
          if (np == 1) {
            dequant_panel(packed + p0 * nkb, k0, k1, wbuf.data());
            const float* panel = wbuf.data() - k0 * kPanel;  // tile() indexes the panel by absolute k
            rows_at<float>(x + m0 * K, xp.data(), mb, K, &panel, p0, 1, k0, k1, y + m0 * ldy, ldy, bias, k0 == 0,
                           k1 == K);
            continue;
          }
          const B* panels[4];
          for (int j = 0; j < n; ++j) panels[j] = packed + (p0 + j) * nkb;
          const float* xr = x + m0 * K;
          float* yr = y + m0 * ldy + p0 * kPanel;
          if (mb == 2 && n == 4) {  // two rows: 2 panels at a time (16 accumulators would spill)
            row_q<B, 2, 2>(xr, K, panels, k0, k1, yr, ldy, b, k0 == 0, k1 == K);
            row_q<B, 2, 2>(xr, K, panels + 2, k0, k1, yr + 2 * kPanel, ldy, b == nullptr ? nullptr : b + 2 * kPanel,
                           k0 == 0, k1 == K);
          } else if (mb == 1 && n == 4) {
            row_q<B, 4, 1>(xr, K, panels, k0, k1, yr, ldy, b, k0 == 0, k1 == K);
          } else {
            for (int j = 0; j < n; ++j) {
              const float* bj = b == nullptr ? nullptr : b + j * kPanel;
              if (mb == 2)
                row_q<B, 1, 2>(xr, K, panels + j, k0, k1, yr + j * kPanel, ldy, bj, k0 == 0, k1 == K);
              else
                row_q<B, 1, 1>(xr, K, panels + j, k0, k1, yr + j * kPanel, ldy, bj, k0 == 0, k1 == K);
            }
          }
        }
      }
    }
  });
}

}  // namespace

// codes [N, K] uint8 (0..15), d and m [N, K / 32] float32 -> 4-bit panels [ceil(N/16), K / 32, 384] uint8
// (``Q4Block``s; padded columns rebuild to 0).
torch::Tensor pack_q4(torch::Tensor codes, torch::Tensor d, torch::Tensor m) {
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kByte && codes.size(1) % 32 == 0, "pack_q4: codes [N, K] uint8, K % 32 == 0");
  const int64_t N = codes.size(0), K = codes.size(1), nkb = K / 32, P = (N + kPanel - 1) / kPanel;
  TORCH_CHECK(d.scalar_type() == at::kFloat && m.scalar_type() == at::kFloat && d.size(0) == N && d.size(1) == nkb &&
                  m.sizes() == d.sizes(), "pack_q4: d and m [N, K / 32] float32");
  TORCH_CHECK(codes.le(15).all().item<bool>(), "pack_q4: codes are 4-bit");
  auto cc = codes.contiguous(); auto dc = d.contiguous(); auto mc = m.contiguous();
  auto out = torch::zeros({P, nkb, static_cast<int64_t>(sizeof(Q4Block))}, codes.options());
  auto* blocks = reinterpret_cast<Q4Block*>(out.data_ptr<uint8_t>());
  const uint8_t* cp = cc.data_ptr<uint8_t>();
  const float* dp = dc.data_ptr<float>();
  const float* mp = mc.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t p = n / kPanel, j = n % kPanel;
    for (int64_t kb = 0; kb < nkb; ++kb) {
      Q4Block& b = blocks[p * nkb + kb];
      b.d[j] = dp[n * nkb + kb];
      b.m[j] = mp[n * nkb + kb];
      for (int i = 0; i < 32; ++i) {
        const uint8_t q = cp[n * K + kb * 32 + i];
        b.c[i][j % 8] |= static_cast<uint8_t>(j < 8 ? q : q << 4);
      }
    }
  }
  return out;
}

// codes [N, K] int8, d and m [N, K / 32] float32 -> 8-bit panels [ceil(N/16), K / 32, 640] uint8 (``Q8Block``s).
torch::Tensor pack_q8(torch::Tensor codes, torch::Tensor d, torch::Tensor m) {
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kChar && codes.size(1) % 32 == 0, "pack_q8: codes [N, K] int8, K % 32 == 0");
  const int64_t N = codes.size(0), K = codes.size(1), nkb = K / 32, P = (N + kPanel - 1) / kPanel;
  TORCH_CHECK(d.scalar_type() == at::kFloat && m.scalar_type() == at::kFloat && d.size(0) == N && d.size(1) == nkb &&
                  m.sizes() == d.sizes(), "pack_q8: d and m [N, K / 32] float32");
  auto cc = codes.contiguous(); auto dc = d.contiguous(); auto mc = m.contiguous();
  auto out = torch::zeros({P, nkb, static_cast<int64_t>(sizeof(Q8Block))}, codes.options().dtype(at::kByte));
  auto* blocks = reinterpret_cast<Q8Block*>(out.data_ptr<uint8_t>());
  const int8_t* cp = cc.data_ptr<int8_t>();
  const float* dp = dc.data_ptr<float>();
  const float* mp = mc.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t p = n / kPanel, j = n % kPanel;
    for (int64_t kb = 0; kb < nkb; ++kb) {
      Q8Block& b = blocks[p * nkb + kb];
      b.d[j] = dp[n * nkb + kb];
      b.m[j] = mp[n * nkb + kb];
      for (int i = 0; i < 32; ++i) b.c[i][j] = cp[n * K + kb * 32 + i];
    }
  }
  return out;
}

// x [M, K] float32, coded panels from ``pack_q4`` or ``pack_q8``, N outputs, optional bias -> y [M, N]
// float32: the same bits as ``linear`` on the float32 weights the codes rebuild.
torch::Tensor linear_coded(torch::Tensor x, torch::Tensor packed, int64_t N, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu(), "linear_coded: x must be [M, K] float32 on CPU");
  const int64_t bs = packed.dim() == 3 ? packed.size(2) : 0;
  TORCH_CHECK(packed.scalar_type() == at::kByte && (bs == sizeof(Q4Block) || bs == sizeof(Q8Block)) &&
                  packed.size(1) * 32 == x.size(1), "linear_coded: packed weight does not match x");
  TORCH_CHECK(N > (packed.size(0) - 1) * kPanel && N <= packed.size(0) * kPanel, "linear_coded: N does not match the panels");
  auto xc = x.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1), P = packed.size(0);
  const float* b = nullptr;
  torch::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == N, "linear_coded: bias must have N elements");
    bc = torch::zeros({P * kPanel}, xc.options());
    bc.narrow(0, 0, N).copy_(bias->reshape({N}));
    b = bc.data_ptr<float>();
  }
  auto y = torch::empty({M, P * kPanel}, xc.options());
  auto pc = packed.contiguous();
  if (M > 0 && bs == sizeof(Q4Block))
    run_q<Q4Block>(xc.data_ptr<float>(), M, K, reinterpret_cast<const Q4Block*>(pc.data_ptr<uint8_t>()), P, y.data_ptr<float>(), b);
  else if (M > 0)
    run_q<Q8Block>(xc.data_ptr<float>(), M, K, reinterpret_cast<const Q8Block*>(pc.data_ptr<uint8_t>()), P, y.data_ptr<float>(), b);
  return N == P * kPanel ? y : y.narrow(1, 0, N).contiguous();
}

// W [N, K] (float32 or bfloat16) -> panels [ceil(N/16), K, 16] of ``dtype``, zero-padded columns.
torch::Tensor pack(torch::Tensor w, at::ScalarType dtype) {
  TORCH_CHECK(w.dim() == 2 && w.device().is_cpu(), "pack: W must be a 2-D CPU tensor");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "pack: float32 or bfloat16 panels");
  const int64_t N = w.size(0), K = w.size(1), P = (N + kPanel - 1) / kPanel;
  auto padded = torch::zeros({P * kPanel, K}, w.options().dtype(dtype));
  padded.narrow(0, 0, N).copy_(w);
  return padded.view({P, kPanel, K}).transpose(1, 2).contiguous();
}

// x [M, K] float32, packed [P, K, 16] from ``pack``, N outputs, optional bias [N] float32 -> y [M, N] float32.
torch::Tensor linear(torch::Tensor x, torch::Tensor packed, int64_t N, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu(), "linear: x must be [M, K] float32 on CPU");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kPanel && packed.size(1) == x.size(1), "linear: packed weight does not match x");
  TORCH_CHECK(N > (packed.size(0) - 1) * kPanel && N <= packed.size(0) * kPanel, "linear: N does not match the panels");
  auto xc = x.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1), P = packed.size(0);
  // Rows of y are whole panels wide (every load and store is full); cut to N at the end if needed.
  const float* b = nullptr;
  torch::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == N, "linear: bias must have N elements");
    bc = torch::zeros({P * kPanel}, xc.options());
    bc.narrow(0, 0, N).copy_(bias->reshape({N}));
    b = bc.data_ptr<float>();
  }
  auto y = torch::empty({M, P * kPanel}, xc.options());
  if (M > 0) {
    auto pc = packed.contiguous();
    if (pc.scalar_type() == at::kFloat)
      run<float>(xc.data_ptr<float>(), M, K, pc.data_ptr<float>(), P, y.data_ptr<float>(), b);
    else if (pc.scalar_type() == at::kBFloat16)
      run<at::BFloat16>(xc.data_ptr<float>(), M, K, pc.data_ptr<at::BFloat16>(), P, y.data_ptr<float>(), b);
    else
      TORCH_CHECK(false, "linear: packed weight must be float32 or bfloat16");
  }
  return N == P * kPanel ? y : y.narrow(1, 0, N).contiguous();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack", &pack, "W [N, K] -> panels [ceil(N/16), K, 16]");
  m.def("linear", &linear, "x [M, K] @ W.T (+ b), fixed summation order");
  m.def("pack_q4", &pack_q4, "codes [N, K], d, m [N, K/32] -> 4-bit panels [ceil(N/16), K/32, 384]");
  m.def("pack_q8", &pack_q8, "codes [N, K] int8, d, m [N, K/32] -> 8-bit panels [ceil(N/16), K/32, 640]");
  m.def("linear_coded", &linear_coded, "x [M, K] @ W.T (+ b) from 4- or 8-bit panels: the same bits as linear on the rebuilt W");
}
