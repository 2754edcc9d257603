// The vectorised float path of local_attention.cpp for windows that do not move ("mask" and "zero" borders)
// and k in {3, 5, 7, 9}: 8-lane vectors over x (GCC vector extensions, so any x86-64 compiles it; AVX2 + FMA
// when the build enables them), register blocking over the k window columns (logits, dP), over channels
// (outputs, dq), and over window rows and channels in the key-centred gathers for dk / dv (so that no store
// overlaps a later load).
//
// Row layouts per (batch, head) plane, all zero-initialised:
//   query rows  [d][H][Wq]   x at kLp + x          (q, dO; the softmax rows L and dS rows G use [k^2][Wq])
//   key planes  [d][Hp][Wk]  padded column x + wx  (k, v, dk, dv)
// with Wv = W rounded up to 8, Wk = Wv + 2c rounded up to 8, Wq = kLp + Wk. Lanes x >= W compute on zeros
// and are dropped on the way out; their dO is zero, so they add nothing to any gradient.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "vec8.h"

namespace vec {

constexpr int64_t kLp = 8;  // left margin of the query rows: the key-centred gathers read x - wx >= -8

struct Layout {
  int64_t H, W, k, c, T, d, Hp, Wv, Wk, Wq;
  Layout(int64_t H_, int64_t W_, int64_t k_, int64_t T_, int64_t d_)
      : H(H_), W(W_), k(k_), c(k_ / 2), T(T_), d(d_), Hp(H_ + k_ - 1), Wv(up8(W_)), Wk(up8(up8(W_) + k_ - 1)),
        Wq(kLp + up8(up8(W_) + k_ - 1)) {}
  int64_t qrow(int64_t dd, int64_t y) const { return (dd * H + y) * Wq + kLp; }
  int64_t krow(int64_t dd, int64_t ky) const { return (dd * Hp + ky) * Wk; }
};

// (H, W) planes -> query rows / key planes (zeros around); and back.
inline void to_query_rows(const Layout& l, const float* src, float* dst) {
  for (int64_t dd = 0; dd < l.d; ++dd)
    for (int64_t y = 0; y < l.H; ++y) std::memcpy(dst + l.qrow(dd, y), src + (dd * l.H + y) * l.W, l.W * 4);
}
inline void to_key_planes(const Layout& l, const float* src, float* dst) {
  for (int64_t dd = 0; dd < l.d; ++dd)
    for (int64_t y = 0; y < l.H; ++y)
      std::memcpy(dst + l.krow(dd, y + l.c) + l.c, src + (dd * l.H + y) * l.W, l.W * 4);
}
inline void from_key_planes(const Layout& l, const float* src, float* dst) {
  for (int64_t dd = 0; dd < l.d; ++dd)
    for (int64_t y = 0; y < l.H; ++y)
      std::memcpy(dst + (dd * l.H + y) * l.W, src + l.krow(dd, y + l.c) + l.c, l.W * 4);
}
inline void store_lanes(float* dst, v8 v, int64_t n) {
  if (n >= 8) st(dst, v);
  else for (int64_t i = 0; i < n; ++i) dst[i] = v[i];
}

// Per-row scratch, R query rows at a time (row r at offset r * the size):
//   L, G:    [k^2][Wq] softmax and dS rows (slot (wy, wx) at (wy * k + wx) * Wq + kLp)   size slots()
//   QR, QC, GR, GC: [k][Wv] relative logits and their gradients                          size rel()
//   M, S, D, inv: [Wv]                                                                   size Wv
inline int64_t slots(const Layout& l) { return l.k * l.k * l.Wq; }
inline int64_t rel(const Layout& l) { return l.k * l.Wv; }

// Query rows y .. y + R - 1 share their key rows: padded key row y + kr is window row wy = kr - r of query row
// y + r. Loading each shifted key row once for R query rows halves the loads that bound these loops (R = 2).
// with_rows calls f(lo, hi) with the query rows r in [lo, hi] (compile-time) that key row kr serves.
template <int K, int R, typename F>
inline void with_rows(int64_t kr, F f) {
  using lo0 = std::integral_constant<int, 0>;
  using hi0 = std::integral_constant<int, 0>;
  using lo1 = std::integral_constant<int, R - 1>;
  static_assert(R == 1 || R == 2, "one or two query rows at a time");
  if constexpr (R == 1) {
    f(lo0(), hi0());
  } else {
    if (kr == 0) f(lo0(), hi0());
    else if (kr == K) f(lo1(), lo1());
    else f(lo0(), lo1());
  }
}

// The relative logits of query row y (regular windows: relative index = window slot). The embedding of slot
// (wy, wx) is a row part plus a column part, r = Rr[wy] + Rc[wx], so the k^2 slots share 2k dot products per
// pixel (not k^2):  QR[wy][x] = q(y, x) . Rr[wy],  QC[wx][x] = q(y, x) . Rc[wx].
template <int K>
void rel_logits(const Layout& l, const float* Qq, const float* Rr, const float* Rc, int64_t y, float* QR,
                float* QC) {
  for (int64_t x0 = 0; x0 < l.Wv; x0 += 8) {
    v8 ar[K] = {}, ac[K] = {};
    for (int64_t dd = 0; dd < l.d; ++dd) {
      const v8 a = ld(Qq + l.qrow(dd, y) + x0);
      for (int t = 0; t < K; ++t) {
        ar[t] += a * bc(Rr[t * l.d + dd]);
        ac[t] += a * bc(Rc[t * l.d + dd]);
      }
    }
    for (int t = 0; t < K; ++t) {
      st(QR + t * l.Wv + x0, ar[t]);
      st(QC + t * l.Wv + x0, ac[t]);
    }
  }
}

// What dots() stores for each window slot, fused into the pass that computes the products:
//   kLogits: s = scale * (q . k + QR[wy] + QC[wx]) + bias, and the running row maximum M = max_w s (forward);
//   kProbs:  P = 2^(s - lse), the forward's softmax rebuilt from its log-sum-exp (backward);
//            (for these two the caller passes scale * log2 e, so that s and lse are in base 2);
//   kGrad:   G = scale * P (dO . v - D), the logits' gradient dS times the scale, P read from `P` (backward);
//            it also sums G over each window row into GR[wy] and over each window column into GC[wx] (the
//            gradients of the relative logits QR and QC; GC must come in zeroed).
enum class Epi { kLogits, kProbs, kGrad };

// Query rows y .. y + R - 1: L[wy, wx][x] for every window slot, a(y + r, x) against b(y + wy + r, x + wx).
// `row` is M (kLogits), lse (kProbs) or D (kGrad). key_ok[ky]: padded key row ky takes part in the softmax;
// the slots of the other rows are filled with -inf (kLogits) or 0.
template <int K, Epi E, int R>
void dots(const Layout& l, const uint8_t* key_ok, const float* A, const float* B, const float* QR, const float* QC,
          const float* bias, const float* P, int64_t y, float scale, float* row, float* L, float* GR = nullptr,
          float* GC = nullptr) {
  const float fill = E == Epi::kLogits ? -std::numeric_limits<float>::infinity() : 0.0f;
  const int64_t ls = slots(l), rs = rel(l);
  for (int64_t kr = 0; kr < K + R - 1; ++kr) {
    with_rows<K, R>(kr, [&](auto lo_, auto hi_) {
      constexpr int lo = decltype(lo_)::value, hi = decltype(hi_)::value;
      if (!key_ok[y + kr]) {
        for (int r = lo; r <= hi; ++r) {
          const int64_t wy = kr - r;
          for (int64_t wx = 0; wx < K; ++wx) {
            float* out = L + r * ls + (wy * K + wx) * l.Wq + kLp;
            std::fill(out, out + l.Wv, fill);
          }
          if (E == Epi::kGrad) std::fill(GR + r * rs + wy * l.Wv, GR + r * rs + (wy + 1) * l.Wv, 0.0f);
        }
        return;
      }
      for (int64_t x0 = 0; x0 < l.Wv; x0 += 8) {
        v8 acc[R][K] = {};
        for (int64_t dd = 0; dd < l.d; ++dd) {
          v8 a[R];
          for (int r = lo; r <= hi; ++r) a[r] = ld(A + l.qrow(dd, y + r) + x0);
          const float* b = B + l.krow(dd, y + kr) + x0;
          for (int wx = 0; wx < K; ++wx) {
            const v8 bv = hi > lo ? ldr(b + wx) : ld(b + wx);
            for (int r = lo; r <= hi; ++r) acc[r][wx] += a[r] * bv;
          }
        }
        for (int r = lo; r <= hi; ++r) {
          const int64_t wy = kr - r;
          float* rowr = row + r * l.Wv;
          const v8 rv = ld(rowr + x0);
          v8 m = rv, gsum = {}, qr = {};
          if (E != Epi::kGrad) qr = ld(QR + r * rs + wy * l.Wv + x0);
          for (int wx = 0; wx < K; ++wx) {
            float* out = L + r * ls + (wy * K + wx) * l.Wq + kLp + x0;
            if (E == Epi::kGrad) {
              const v8 g = bc(scale) * ld(P + r * ls + (wy * K + wx) * l.Wq + kLp + x0) * (acc[r][wx] - rv);
              st(out, g);
              gsum += g;
              float* gc = GC + r * rs + wx * l.Wv + x0;
              st(gc, ld(gc) + g);
            } else {
              const v8 s = (acc[r][wx] + qr + ld(QC + r * rs + wx * l.Wv + x0)) * bc(scale) +
                           ld(bias + wx * l.Wv + x0);
              if (E == Epi::kLogits) {
                m = m > s ? m : s;
                st(out, s);
              } else {
                st(out, vexp2(s - rv));
              }
            }
          }
          if (E == Epi::kLogits) st(rowr + x0, m);
          if (E == Epi::kGrad) st(GR + r * rs + wy * l.Wv + x0, gsum);
        }
      }
    });
  }
}

// The forward softmax of one row (logits in base 2), unnormalised: L <- 2^(L - M) in place; M <- the base-2
// log-sum-exp, inv <- 1 / sum.
inline void softmax_row(const Layout& l, int64_t slots, float* L, float* M, float* inv) {
  for (int64_t x0 = 0; x0 < l.Wv; x0 += 8) {
    const v8 m = ld(M + x0);
    v8 s = {};
    for (int64_t w = 0; w < slots; ++w) {
      float* p = L + w * l.Wq + kLp + x0;
      const v8 e = vexp2(ld(p) - m);
      st(p, e);
      s += e;
    }
    for (int i = 0; i < 8; ++i) {
      M[x0 + i] += std::log2(s[i]);
      inv[x0 + i] = 1.0f / s[i];
    }
  }
}

// The window sums of query rows y .. y + R - 1 for DB channels from dd0:
//   acc_r[j](x) = sum_(wy, wx) S_r[wy, wx](x) X(dd0 + j, y + r + wy, x + wx)
// (S = P and X = v: the output; S = G and X = k: dq), each shifted load of X serving the R query rows.
// kExp: S holds base-2 logits, and the sums take 2^(S - M_r) in their place, adding those up in total[r]
// (the forward's softmax fused into its output, where one channel block covers the head).
template <int K, int DB, int R, bool kExp = false>
void window_sums(const Layout& l, const uint8_t* key_ok, const float* S, const float* X, int64_t y, int64_t dd0,
                 int64_t x0, v8 (&acc)[R][DB], const float* M = nullptr, v8* total = nullptr) {
  const int64_t ls = slots(l);
  v8 sum[R][DB] = {};  // local, so that the compiler keeps it in registers (acc may alias the loads)
  v8 m[R], tot[R] = {};
  if (kExp)
    for (int r = 0; r < R; ++r) m[r] = ld(M + r * l.Wv + x0);
  for (int64_t kr = 0; kr < K + R - 1; ++kr) {
    if (!key_ok[y + kr]) continue;
    with_rows<K, R>(kr, [&](auto lo_, auto hi_) {
      constexpr int lo = decltype(lo_)::value, hi = decltype(hi_)::value;
      for (int wx = 0; wx < K; ++wx) {
        v8 p[R];
        for (int r = lo; r <= hi; ++r) {
          p[r] = ld(S + r * ls + ((kr - r) * K + wx) * l.Wq + kLp + x0);
          if (kExp) {
            p[r] = vexp2(p[r] - m[r]);
            tot[r] += p[r];
          }
        }
        for (int j = 0; j < DB; ++j) {
          const float* xp = X + l.krow(dd0 + j, y + kr) + x0 + wx;
          const v8 xv = hi > lo ? ldr(xp) : ld(xp);
          for (int r = lo; r <= hi; ++r) sum[r][j] += p[r] * xv;
        }
      }
    });
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < DB; ++j) acc[r][j] = sum[r][j];
    if (kExp) total[r] = tot[r];
  }
}

// out(dd, y + r, x) = inv_r(x) sum_w P_w(x) v_w(dd, x) for DB channels from dd0.
template <int K, int DB, int R>
void weighted_sum(const Layout& l, const uint8_t* key_ok, const float* P, const float* V, const float* inv,
                  int64_t y, int64_t dd0, float* O) {
  for (int64_t x0 = 0; x0 < l.Wv; x0 += 8) {
    v8 acc[R][DB];
    window_sums<K, DB, R>(l, key_ok, P, V, y, dd0, x0, acc);
    for (int r = 0; r < R; ++r) {
      const v8 s = ld(inv + r * l.Wv + x0);
      for (int j = 0; j < DB; ++j) store_lanes(O + ((dd0 + j) * l.H + y + r) * l.W + x0, acc[r][j] * s, l.W - x0);
    }
  }
}

// The softmax and the output in one pass, for heads of DB channels: out(dd, y + r, x) = sum_w 2^(L_w - M) v_w /
// sum_w 2^(L_w - M) from the base-2 logits L and their row maxima M; M <- the base-2 log-sum-exp. (Rows of
// logits outside the softmax are skipped, slots outside it hold -inf, whose 2^ is 0.)
template <int K, int DB, int R>
void softmax_output(const Layout& l, const uint8_t* key_ok, const float* L, const float* V, int64_t y, float* M,
                    float* O) {
  for (int64_t x0 = 0; x0 < l.Wv; x0 += 8) {
    v8 acc[R][DB], total[R];
    window_sums<K, DB, R, true>(l, key_ok, L, V, y, 0, x0, acc, M, total);
    for (int r = 0; r < R; ++r) {
      for (int j = 0; j < DB; ++j)
        store_lanes(O + (j * l.H + y + r) * l.W + x0, acc[r][j] / total[r], l.W - x0);
      for (int i = 0; i < 8; ++i) M[r * l.Wv + x0 + i] += std::log2(total[r][i]);
    }
  }
}

// dq(dd, y + r, x) = sum_w G_w(x) k_w(dd) + sum_wy GR_wy(x) Rr[wy](dd) + sum_wx GC_wx(x) Rc[wx](dd).
template <int K, int DB, int R>
void grad_query(const Layout& l, const uint8_t* key_ok, const float* G, const float* GR, const float* GC,
                const float* Kp, const float* Rr, const float* Rc, int64_t y, int64_t dd0, float* dQ) {
  const int64_t rs = rel(l);
  for (int64_t x0 = 0; x0 < l.Wv; x0 += 8) {
    v8 acc[R][DB];
    window_sums<K, DB, R>(l, key_ok, G, Kp, y, dd0, x0, acc);
    for (int r = 0; r < R; ++r) {
      for (int t = 0; t < K; ++t) {
        const v8 gr = ld(GR + r * rs + t * l.Wv + x0), gc = ld(GC + r * rs + t * l.Wv + x0);
        for (int j = 0; j < DB; ++j) acc[r][j] += gr * bc(Rr[t * l.d + dd0 + j]) + gc * bc(Rc[t * l.d + dd0 + j]);
      }
      for (int j = 0; j < DB; ++j) store_lanes(dQ + ((dd0 + j) * l.H + y + r) * l.W + x0, acc[r][j], l.W - x0);
    }
  }
}

// The relative embeddings' gradients of one plane, dR[t][dd] = sum_(y, x) GS_y[t](x) q(dd, y, x), from the
// window-row (GS = GR: dRr) or window-column (GS = GC: dRc) sums of G kept for every query row
// (GS: [H][k][Wv]); DB channels from dd0, k x DB accumulators in registers.
template <int K, int DB>
void grad_rel_block(const Layout& l, const float* GS, const float* Qq, int64_t dd0, float* dR) {
  v8 acc[K][DB] = {};
  for (int64_t y = 0; y < l.H; ++y)
    for (int64_t x0 = 0; x0 < l.Wv; x0 += 8) {
      v8 q[DB];
      for (int j = 0; j < DB; ++j) q[j] = ldr(Qq + l.qrow(dd0 + j, y) + x0);
      for (int t = 0; t < K; ++t) {
        const v8 g = ldr(GS + (y * K + t) * l.Wv + x0);
        for (int j = 0; j < DB; ++j) acc[t][j] += g * q[j];
      }
    }
  for (int t = 0; t < K; ++t)
    for (int j = 0; j < DB; ++j) dR[t * l.d + dd0 + j] = hsum(acc[t][j]);
}

template <int K>
void grad_rel(const Layout& l, const float* GS, const float* Qq, float* dR) {
  constexpr int kBlock = K <= 7 ? 3 : 2;  // k * DB accumulators, DB operands and one G in 32 registers
  int64_t dd = 0;
  for (; dd + kBlock <= l.d; dd += kBlock) grad_rel_block<K, kBlock>(l, GS, Qq, dd, dR);
  for (; dd < l.d; ++dd) grad_rel_block<K, 1>(l, GS, Qq, dd, dR);
}

// The key-side gradients of query row y, gathered per key chunk (so that no store overlaps a later load):
//   dst(dd, y + wy, kx) += sum_wx S_(wy,wx)(kx - wx) X(dd, y, kx - wx)   for every window row wy,
// dk with S = G and X = q, dv with S = P and X = dO. Key rows y + wy are padded rows (the "mask" border's
// outside rows hold S = 0 and are dropped on the way out). The accumulators cover all k window rows and DB
// channels, so each shifted load of X serves k products and each load of S serves DB.
template <int K, int DB>
void grad_keys(const Layout& l, const float* S, const float* X, int64_t y, int64_t dd0, float* dst) {
  for (int64_t kx0 = 0; kx0 < l.Wk; kx0 += 8) {
    v8 acc[K][DB];
    for (int wy = 0; wy < K; ++wy)
      for (int j = 0; j < DB; ++j) acc[wy][j] = ld(dst + l.krow(dd0 + j, y + wy) + kx0);
    for (int wx = 0; wx < K; ++wx) {
      const int64_t xs = kLp + kx0 - wx;
      v8 xv[DB];
      for (int j = 0; j < DB; ++j) xv[j] = ld(X + l.qrow(dd0 + j, y) - kLp + xs);
      for (int wy = 0; wy < K; ++wy) {
        const v8 sv = ld(S + (wy * K + wx) * l.Wq + xs);
        for (int j = 0; j < DB; ++j) acc[wy][j] += sv * xv[j];
      }
    }
    for (int wy = 0; wy < K; ++wy)
      for (int j = 0; j < DB; ++j) st(dst + l.krow(dd0 + j, y + wy) + kx0, acc[wy][j]);
  }
}

// grad_keys over all d channels in blocks of DB = 3 (K <= 7) or 2 (K = 9: 32 vector registers hold k * DB
// accumulators, DB operands and one S).
template <int K>
void grad_keys_all(const Layout& l, const float* S, const float* X, int64_t y, float* dst) {
  constexpr int kBlock = K <= 7 ? 3 : 2;
  int64_t dd = 0;
  for (; dd + kBlock <= l.d; dd += kBlock) grad_keys<K, kBlock>(l, S, X, y, dd, dst);
  if (kBlock == 3 && dd + 2 <= l.d) {
    grad_keys<K, 2>(l, S, X, y, dd, dst);
    dd += 2;
  }
  for (; dd < l.d; ++dd) grad_keys<K, 1>(l, S, X, y, dd, dst);
}

}  // namespace vec
