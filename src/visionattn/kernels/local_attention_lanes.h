// The vectorised float path of local_attention.cpp with the 8 vector lanes over 8 (batch, head) planes: every
// plane has the same windows and borders, so each lane computes the same thing for its own plane, and every
// key, value and window slot is a whole vector at an aligned address. (Lanes over the pixels of a row, as in
// local_attention_vec.h, need the key row shifted by each window column: misaligned loads, which bound that
// path.) "mask" and "zero" borders, k in {3, 5, 7, 9}, any head width d.
//
// Layouts per group of 8 planes, v8 elements, lane l = plane p0 + l (zeros for lanes past the last plane):
//   Q, dO, O-side outputs  [H][W][d]
//   K, V, dK, dV           [Hp][Wp][d], zero-padded by c = k / 2 on every side
//   rows, cols             [T][d] relative embeddings of each lane's head

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "local_attention_generic.h"
#include "local_attention_vec.h"

namespace lanes {

using vec::bc;
using vec::v8;
using vec::vexp2;
constexpr int kLanes = 8;

struct Group {
  int64_t H, W, k, c, d, Hp, Wp;
  Group(int64_t H_, int64_t W_, int64_t k_, int64_t d_)
      : H(H_), W(W_), k(k_), c(k_ / 2), d(d_), Hp(H_ + k_ - 1), Wp(W_ + k_ - 1) {}
  int64_t q(int64_t y, int64_t x) const { return (y * W + x) * d; }
  int64_t kv(int64_t ky, int64_t kx) const { return (ky * Wp + kx) * d; }  // padded coordinates
};

// log2 of 8 lanes >= 1 (softmax sums): exponent plus log2 of the mantissa m in [sqrt(1/2), sqrt(2)), from
// log(1 + f) = f - f^2 / 2 + f^3 P(f) with Cephes' single-precision P (about 1 ulp).
inline v8 vlog2(v8 x) {
  typedef int32_t i8 __attribute__((vector_size(32)));
  const i8 bits = reinterpret_cast<const i8&>(x);
  i8 e = (bits >> 23) - 127;
  i8 mbits = (bits & 0x7FFFFF) | 0x3F800000;
  v8 m = reinterpret_cast<const v8&>(mbits);
  const auto big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const v8 f = m - 1.0f, z = f * f;
  v8 p = f * 7.0376836292e-2f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const v8 ln = f - z * 0.5f + z * f * p;
  v8 ef;
  for (int i = 0; i < kLanes; ++i) ef[i] = static_cast<float>(e[i]);
  return ef + ln * vec::kLog2e;
}

// Window rows of query row y that take part: all for "zero", those inside the image for "mask".
inline void window_rows(const Group& g, bool zero, int64_t y, int64_t& lo, int64_t& hi) {
  lo = zero ? 0 : std::max<int64_t>(0, g.c - y);
  hi = zero ? g.k : std::min<int64_t>(g.k, g.H + g.c - y);
}

// q . r for the k row offsets and the k column offsets: qr[t] = q . rows[t], qc[t] = q . cols[t].
template <int K>
inline void rel_logits(const Group& g, const v8* q, const v8* rows, const v8* cols, v8* qr, v8* qc) {
  for (int t = 0; t < K; ++t) qr[t] = qc[t] = v8{};
  for (int64_t dd = 0; dd < g.d; ++dd) {
    const v8 a = q[dd];
    for (int t = 0; t < K; ++t) {
      qr[t] += a * rows[t * g.d + dd];
      qc[t] += a * cols[t * g.d + dd];
    }
  }
}

// Base-2 logits of one window row of query (y, x): s[wx] = scale2 * (q . k + qr + qc[wx]) + bias[wx].
template <int K>
inline void row_logits(const Group& g, const v8* q, const v8* krow, v8 qr, const v8* qc, const float* bias,
                       float scale2, v8* s) {
  v8 acc[K] = {};
  for (int64_t dd = 0; dd < g.d; ++dd) {
    const v8 a = q[dd];
    for (int wx = 0; wx < K; ++wx) acc[wx] += a * krow[wx * g.d + dd];
  }
  for (int wx = 0; wx < K; ++wx) s[wx] = (acc[wx] + qr + qc[wx]) * scale2 + bias[wx];
}

// out[dd] = sum_w P_w v_w[dd] * inv for the window rows [lo, hi) of query (y, x), channels in blocks of 8.
template <int K>
inline void weighted_values(const Group& g, const v8* P, const v8* V, int64_t y, int64_t x, int64_t lo,
                            int64_t hi, v8 inv, v8* out) {
  int64_t dd0 = 0;
  for (; dd0 + 8 <= g.d; dd0 += 8) {
    v8 acc[8] = {};
    for (int64_t wy = lo; wy < hi; ++wy) {
      const v8* vrow = V + g.kv(y + wy, x) + dd0;
      for (int wx = 0; wx < K; ++wx) {
        const v8 p = P[wy * K + wx];
        for (int j = 0; j < 8; ++j) acc[j] += p * vrow[wx * g.d + j];
      }
    }
    for (int j = 0; j < 8; ++j) out[dd0 + j] = acc[j] * inv;
  }
  for (; dd0 < g.d; ++dd0) {
    v8 acc = {};
    for (int64_t wy = lo; wy < hi; ++wy)
      for (int wx = 0; wx < K; ++wx) acc += P[wy * K + wx] * V[g.kv(y + wy, x + wx) + dd0];
    out[dd0] = acc * inv;
  }
}

// The forward of one group: O = softmax(logits) V, lse = the natural log-sum-exp of every softmax.
// bias: [W][K] 0 or -inf for the window columns outside the softmax ("mask").
template <int K>
void forward(const Group& g, bool zero, const v8* Q, const v8* Kp, const v8* Vp, const v8* rows, const v8* cols,
             const float* bias, float scale, v8* O, v8* lse) {
  const float scale2 = scale * vec::kLog2e;
  v8 P[K * K], qr[K], qc[K];
  for (int64_t y = 0; y < g.H; ++y) {
    int64_t lo, hi;
    window_rows(g, zero, y, lo, hi);
    for (int64_t x = 0; x < g.W; ++x) {
      const v8* q = Q + g.q(y, x);
      rel_logits<K>(g, q, rows, cols, qr, qc);
      v8 m = bc(-std::numeric_limits<float>::infinity());
      for (int64_t wy = lo; wy < hi; ++wy) {
        row_logits<K>(g, q, Kp + g.kv(y + wy, x), qr[wy], qc, bias + x * K, scale2, P + wy * K);
        for (int wx = 0; wx < K; ++wx) m = m > P[wy * K + wx] ? m : P[wy * K + wx];
      }
      v8 sum = {};
      for (int64_t w = lo * K; w < hi * K; ++w) {
        P[w] = vexp2(P[w] - m);
        sum += P[w];
      }
      weighted_values<K>(g, P, Vp, y, x, lo, hi, 1.0f / sum, O + g.q(y, x));
      lse[y * g.W + x] = (m + vlog2(sum)) * vec::kLn2;
    }
  }
}

// dk, dv of window row wy of query row y, gathered per key (so that each key's sums stay in registers):
// dK(y + wy, kx) += sum_wx G_x[wy, wx] q(y, x), dV likewise with P and dO, x = kx - wx; DB channels from dd0.
template <int K, int DB>
inline void gather_keys(const Group& g, const v8* Prow, const v8* Grow, const v8* Q, const v8* dO, int64_t y,
                        int64_t wy, int64_t dd0, v8* dK, v8* dV) {
  for (int64_t kx = 0; kx < g.Wp; ++kx) {
    v8 ak[DB] = {}, av[DB] = {};
    const int64_t wx_lo = std::max<int64_t>(0, kx - g.W + 1), wx_hi = std::min<int64_t>(K - 1, kx);
    for (int64_t wx = wx_lo; wx <= wx_hi; ++wx) {
      const int64_t x = kx - wx, slot = x * K * K + wy * K + wx;
      const v8 gw = Grow[slot], pw = Prow[slot];
      const v8 *q = Q + g.q(y, x) + dd0, *go = dO + g.q(y, x) + dd0;
      for (int j = 0; j < DB; ++j) {
        ak[j] += gw * q[j];
        av[j] += pw * go[j];
      }
    }
    v8 *k = dK + g.kv(y + wy, kx) + dd0, *v = dV + g.kv(y + wy, kx) + dd0;
    for (int j = 0; j < DB; ++j) {
      k[j] += ak[j];
      v[j] += av[j];
    }
  }
}

// dq(y, x) = sum_w G_w k_w + sum_t GR_t rows[t] + GC_t cols[t] for DB channels from dd0.
template <int K, int DB>
inline void grad_query(const Group& g, const v8* Kp, const v8* rows, const v8* cols, const v8* G, const v8* GR,
                       const v8* GC, int64_t y, int64_t x, int64_t lo, int64_t hi, int64_t dd0, v8* dQ) {
  v8 acc[DB] = {};
  for (int64_t wy = lo; wy < hi; ++wy) {
    const v8* krow = Kp + g.kv(y + wy, x) + dd0;
    for (int wx = 0; wx < K; ++wx) {
      const v8 gw = G[wy * K + wx];
      for (int j = 0; j < DB; ++j) acc[j] += gw * krow[wx * g.d + j];
    }
  }
  for (int t = 0; t < K; ++t)
    for (int j = 0; j < DB; ++j) acc[j] += GR[t] * rows[t * g.d + dd0 + j] + GC[t] * cols[t * g.d + dd0 + j];
  for (int j = 0; j < DB; ++j) dQ[g.q(y, x) + dd0 + j] = acc[j];
}

// The embeddings' gradients of query row y: dR[t][dd] += sum_x GR_x[t] q(y, x)[dd] (rows table), and the
// columns table (at dR + k d) from GC; DB channels from dd0.
template <int K, int DB>
inline void grad_rel(const Group& g, const v8* GRrow, const v8* GCrow, const v8* Q, int64_t y, int64_t dd0,
                     v8* dR) {
  for (int t = 0; t < K; ++t) {
    v8 ar[DB] = {}, ac[DB] = {};
    for (int64_t x = 0; x < g.W; ++x) {
      const v8 gr = GRrow[x * K + t], gc = GCrow[x * K + t];
      const v8* q = Q + g.q(y, x) + dd0;
      for (int j = 0; j < DB; ++j) {
        ar[j] += gr * q[j];
        ac[j] += gc * q[j];
      }
    }
    for (int j = 0; j < DB; ++j) {
      dR[t * g.d + dd0 + j] += ar[j];
      dR[(K + t) * g.d + dd0 + j] += ac[j];
    }
  }
}

// The backward of one group. D: [H][W] dO . O per pixel; dK, dV zeroed on entry; dR: [2][T][d] accumulators
// of the rows' and the columns' embedding gradients; Prow, Grow: [W][k^2] scratch.
template <int K>
void backward(const Group& g, bool zero, const v8* Q, const v8* Kp, const v8* Vp, const v8* rows, const v8* cols,
              const float* bias, const v8* dO, const v8* D, const v8* lse, float scale, v8* dQ, v8* dK, v8* dV,
              v8* dR, v8* Prow, v8* Grow) {
  const float scale2 = scale * vec::kLog2e;
  v8 qr[K], qc[K], GR[K], GC[K];
  lattn::Scratch<v8> GRrow(g.W * K), GCrow(g.W * K);
  for (int64_t y = 0; y < g.H; ++y) {
    int64_t lo, hi;
    window_rows(g, zero, y, lo, hi);
    for (int64_t x = 0; x < g.W; ++x) {
      const v8 *q = Q + g.q(y, x), *go = dO + g.q(y, x);
      v8 *P = Prow + x * K * K, *G = Grow + x * K * K;
      const v8 s2 = lse[y * g.W + x] * vec::kLog2e, dd_ = D[y * g.W + x];
      rel_logits<K>(g, q, rows, cols, qr, qc);
      for (int t = 0; t < K; ++t) GR[t] = GC[t] = v8{};
      for (int64_t wy = lo; wy < hi; ++wy) {
        const v8* vrow = Vp + g.kv(y + wy, x);
        v8 dp[K] = {};
        for (int64_t dd = 0; dd < g.d; ++dd) {
          const v8 b = go[dd];
          for (int wx = 0; wx < K; ++wx) dp[wx] += b * vrow[wx * g.d + dd];
        }
        row_logits<K>(g, q, Kp + g.kv(y + wy, x), qr[wy], qc, bias + x * K, scale2, P + wy * K);
        for (int wx = 0; wx < K; ++wx) {
          const v8 p = vexp2(P[wy * K + wx] - s2), gr = bc(scale) * p * (dp[wx] - dd_);
          P[wy * K + wx] = p;
          G[wy * K + wx] = gr;
          GR[wy] += gr;
          GC[wx] += gr;
        }
      }
      int64_t dd = 0;
      for (; dd + 8 <= g.d; dd += 8) grad_query<K, 8>(g, Kp, rows, cols, G, GR, GC, y, x, lo, hi, dd, dQ);
      for (; dd < g.d; ++dd) grad_query<K, 1>(g, Kp, rows, cols, G, GR, GC, y, x, lo, hi, dd, dQ);
      for (int t = 0; t < K; ++t) {
        GRrow[x * K + t] = GR[t];
        GCrow[x * K + t] = GC[t];
      }
    }
    int64_t dd = 0;
    for (; dd + 8 <= g.d; dd += 8) grad_rel<K, 8>(g, GRrow.data(), GCrow.data(), Q, y, dd, dR);
    for (; dd < g.d; ++dd) grad_rel<K, 1>(g, GRrow.data(), GCrow.data(), Q, y, dd, dR);
    for (int64_t wy = lo; wy < hi; ++wy) {
      int64_t dd = 0;
      for (; dd + 8 <= g.d; dd += 8) gather_keys<K, 8>(g, Prow, Grow, Q, dO, y, wy, dd, dK, dV);
      for (; dd < g.d; ++dd) gather_keys<K, 1>(g, Prow, Grow, Q, dO, y, wy, dd, dK, dV);
    }
  }
}

// 8 x 8 transpose: out[i][l] = in[l][i].
inline void transpose8(const v8 (&in)[kLanes], v8 (&out)[kLanes]) {
  typedef int32_t m8 __attribute__((vector_size(32)));
  const m8 lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
  const m8 lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
  const m8 first = {0, 1, 2, 3, 8, 9, 10, 11}, second = {4, 5, 6, 7, 12, 13, 14, 15};
  v8 t[kLanes], u[kLanes];
  for (int i = 0; i < kLanes; i += 2) {
    t[i] = __builtin_shuffle(in[i], in[i + 1], lo);
    t[i + 1] = __builtin_shuffle(in[i], in[i + 1], hi);
  }
  for (int i = 0; i < kLanes; i += 4)
    for (int j = 0; j < 2; ++j) {
      u[i + j] = __builtin_shuffle(t[i + j], t[i + j + 2], lo2);
      u[i + j + 2] = __builtin_shuffle(t[i + j], t[i + j + 2], hi2);
    }
  // u[0..3]: pixels {0, 1, 2, 3 | 4, 5, 6, 7} of lanes 0-3 in the two halves; u[4..7]: lanes 4-7
  const int order[4] = {0, 2, 1, 3};
  for (int i = 0; i < 4; ++i) {
    out[i] = __builtin_shuffle(u[order[i]], u[4 + order[i]], first);
    out[i + 4] = __builtin_shuffle(u[order[i]], u[4 + order[i]], second);
  }
}

// Planes <-> lanes: src[l] is lane l's plane of d channels (H, W) each (nullptr past the group's last plane:
// zeros); `padded` places the pixels inside the zero border of K and V.
inline void pack(const Group& g, const float* const* src, bool padded, v8* dst) {
  const int64_t pad = padded ? g.c : 0, Wd = padded ? g.Wp : g.W;
  for (int64_t dd = 0; dd < g.d; ++dd)
    for (int64_t y = 0; y < g.H; ++y) {
      v8* o = dst + ((y + pad) * Wd + pad) * g.d + dd;
      int64_t x0 = 0;
      for (; x0 + kLanes <= g.W; x0 += kLanes) {
        v8 in[kLanes], out[kLanes];
        for (int l = 0; l < kLanes; ++l) in[l] = src[l] ? vec::ld(src[l] + (dd * g.H + y) * g.W + x0) : v8{};
        transpose8(in, out);
        for (int i = 0; i < kLanes; ++i) o[(x0 + i) * g.d] = out[i];
      }
      for (; x0 < g.W; ++x0)
        for (int l = 0; l < kLanes; ++l) o[x0 * g.d][l] = src[l] ? src[l][(dd * g.H + y) * g.W + x0] : 0.0f;
    }
}

inline void unpack(const Group& g, const v8* src, bool padded, float* const* dst) {
  const int64_t pad = padded ? g.c : 0, Wd = padded ? g.Wp : g.W;
  for (int64_t dd = 0; dd < g.d; ++dd)
    for (int64_t y = 0; y < g.H; ++y) {
      const v8* s = src + ((y + pad) * Wd + pad) * g.d + dd;
      int64_t x0 = 0;
      for (; x0 + kLanes <= g.W; x0 += kLanes) {
        v8 in[kLanes], out[kLanes];
        for (int i = 0; i < kLanes; ++i) in[i] = s[(x0 + i) * g.d];
        transpose8(in, out);
        for (int l = 0; l < kLanes && dst[l]; ++l) vec::st(dst[l] + (dd * g.H + y) * g.W + x0, out[l]);
      }
      for (; x0 < g.W; ++x0)
        for (int l = 0; l < kLanes && dst[l]; ++l) dst[l][(dd * g.H + y) * g.W + x0] = s[x0 * g.d][l];
    }
}

}  // namespace lanes
