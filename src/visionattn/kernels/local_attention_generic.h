// The generic path of local_attention.cpp: any odd k, every border (including "clamp", whose window moves at
// the border and so needs a gather through per-axis index tables), float and double. Plain loops over x that
// the compiler vectorises where it can; the float "mask" / "zero" cases with k <= 9 take local_attention_vec.h.

#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "local_attention_vec.h"

namespace lattn {

enum Border : int64_t { kMask = 0, kZero = 1, kClamp = 2 };

// The kernels' scratch buffers count their bytes, now and at most since the last reset (all threads), so
// that a benchmark can add the working memory freed before an op returns to the tensors' peak.
struct ScratchStats {
  std::atomic<int64_t> now{0}, peak{0};
};
inline ScratchStats& scratch_stats() {
  static ScratchStats stats;
  return stats;
}

template <typename T>
struct CountingAllocator {
  using value_type = T;
  CountingAllocator() = default;
  template <typename U>
  CountingAllocator(const CountingAllocator<U>&) {}
  T* allocate(size_t n) {
    ScratchStats& s = scratch_stats();
    const int64_t now = s.now.fetch_add(n * sizeof(T)) + n * sizeof(T);
    for (int64_t peak = s.peak.load(); now > peak && !s.peak.compare_exchange_weak(peak, now);) {
    }
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, size_t n) {
    scratch_stats().now.fetch_sub(n * sizeof(T));
    std::allocator<T>().deallocate(p, n);
  }
  template <typename U>
  bool operator==(const CountingAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CountingAllocator<U>&) const { return false; }
};
template <typename T>
using Scratch = std::vector<T, CountingAllocator<T>>;

// The (batch, head) planes still to do, handed out one at a time: at::parallel_for splits its range evenly
// between the threads up front, so on a shared machine one slowed-down thread would hold everyone up.
class TaskQueue {
 public:
  explicit TaskQueue(int64_t n) : n_(n) {}
  int64_t next() {
    const int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
    return t < n_ ? t : -1;
  }

 private:
  std::atomic<int64_t> next_{0};
  const int64_t n_;
};

// Runs work(queue) on every thread (each thread keeps its scratch buffers across the planes it takes).
template <typename F>
void parallel_planes(int64_t n, F work) {
  TaskQueue queue(n);
  at::parallel_for(0, std::min<int64_t>(n, at::get_num_threads()), 1, [&](int64_t, int64_t) { work(queue); });
}

// Where window slot w of query position i lies, along one axis; positions are in padded coordinates.
struct Axis {
  std::vector<int32_t> key;  // [i * k + w] padded position of the key
  std::vector<int32_t> rel;  // [i * k + w] index into the relative table
  std::vector<uint8_t> ok;   // [i * k + w] the slot takes part in the softmax
};

Axis make_axis(int64_t n, int64_t k, int64_t border) {
  const int64_t c = k / 2;
  Axis a;
  a.key.resize(n * k);
  a.rel.resize(n * k);
  a.ok.resize(n * k);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t w = 0; w < k; ++w) {
      int64_t pos, rel;
      if (border == kClamp) {
        const int64_t start = std::min(std::max<int64_t>(i - c, 0), std::max<int64_t>(n - k, 0));
        pos = start + w;
        rel = pos - i + k - 1;
      } else {
        pos = i - c + w;
        rel = w;
      }
      const bool inside = pos >= 0 && pos < n;
      if (!inside && border != kZero) pos = std::min(std::max<int64_t>(pos, 0), n - 1);
      a.key[i * k + w] = static_cast<int32_t>(pos + c);
      a.rel[i * k + w] = static_cast<int32_t>(rel);
      a.ok[i * k + w] = (border == kZero || inside) ? 1 : 0;
    }
  }
  return a;
}

struct Geometry {
  int64_t H, W, k, c, T, Hp, Wp, d, heads, border;
  bool regular;  // key column = x + wx, relative column = wx (mask, zero)
  Axis rows, cols;
  std::vector<int32_t> col_key;  // [wx * W + x] padded key column (the gather of "clamp")
  std::vector<int32_t> col_rel;  // [wx * W + x]
};

// The logits' column mask: bias[x * x_stride + wx * w_stride] is 0 where window column wx of query column x
// takes part in the softmax and -inf where it does not; `size` entries, the rest (padding lanes) 0.
template <typename T>
std::vector<T> column_bias(const Geometry& g, int64_t x_stride, int64_t w_stride, int64_t size) {
  std::vector<T> bias(size, T(0));
  for (int64_t x = 0; x < g.W; ++x)
    for (int64_t wx = 0; wx < g.k; ++wx)
      if (!g.cols.ok[x * g.k + wx]) bias[x * x_stride + wx * w_stride] = -std::numeric_limits<T>::infinity();
  return bias;
}

Geometry make_geometry(int64_t H, int64_t W, int64_t k, int64_t d, int64_t heads, int64_t border) {
  Geometry g;
  g.H = H; g.W = W; g.k = k; g.c = k / 2; g.d = d; g.heads = heads; g.border = border;
  g.T = border == kClamp ? 2 * k - 1 : k;
  g.Hp = H + 2 * g.c;
  g.Wp = W + 2 * g.c;
  g.regular = border != kClamp;
  g.rows = make_axis(H, k, border);
  g.cols = make_axis(W, k, border);
  g.col_key.resize(k * W);
  g.col_rel.resize(k * W);
  for (int64_t wx = 0; wx < k; ++wx)
    for (int64_t x = 0; x < W; ++x) {
      g.col_key[wx * W + x] = g.cols.key[x * k + wx];
      g.col_rel[wx * W + x] = g.cols.rel[x * k + wx];
    }
  return g;
}

// exp of a contiguous run, 8 lanes at a time (as 2^(x log2 e), vec::vexp2), the tail with std::exp.
inline void exp_inplace(float* v, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) vec::st(v + i, vec::vexp2(vec::ld(v + i) * vec::kLog2e));
  for (; i < n; ++i) v[i] = std::exp(v[i]);
}

inline void exp_inplace(double* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) v[i] = std::exp(v[i]);
}

// Copy d planes (H, W) into zero-padded planes (Hp, Wp).
template <typename T>
void pad_planes(const Geometry& g, const T* src, T* dst) {
  std::fill(dst, dst + g.d * g.Hp * g.Wp, T(0));
  for (int64_t dd = 0; dd < g.d; ++dd)
    for (int64_t y = 0; y < g.H; ++y)
      std::memcpy(dst + (dd * g.Hp + y + g.c) * g.Wp + g.c, src + (dd * g.H + y) * g.W, g.W * sizeof(T));
}

template <typename T>
void unpad_planes(const Geometry& g, const T* src, T* dst) {
  for (int64_t dd = 0; dd < g.d; ++dd)
    for (int64_t y = 0; y < g.H; ++y)
      std::memcpy(dst + (dd * g.H + y) * g.W, src + (dd * g.Hp + y + g.c) * g.Wp + g.c, g.W * sizeof(T));
}

// L[w * W + x] = scale * q(y, x) . (k_w + r_w) + bias, for the query row y; -inf for slots outside the softmax.
// r_w = Rr[row offset] + Rc[column offset].
template <typename T>
void row_logits(const Geometry& g, const T* Q, const T* Kp, const T* Rr, const T* Rc, const T* bias, int64_t y,
                T scale, T* __restrict__ L) {
  const int64_t W = g.W, k = g.k, HW = g.H * g.W, plane = g.Hp * g.Wp, d = g.d;
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t wy = 0; wy < k; ++wy) {
    const int64_t kr = g.rows.key[y * k + wy], rr = g.rows.rel[y * k + wy];
    for (int64_t wx = 0; wx < k; ++wx) {
      T* __restrict__ Lw = L + (wy * k + wx) * W;
      if (!g.rows.ok[y * k + wy]) {
        std::fill(Lw, Lw + W, ninf);
        continue;
      }
      std::fill(Lw, Lw + W, T(0));
      for (int64_t dd = 0; dd < d; ++dd) {
        const T* __restrict__ q = Q + dd * HW + y * W;
        const T* __restrict__ kk = Kp + dd * plane + kr * g.Wp;
        if (g.regular) {
          const T r = Rr[rr * d + dd] + Rc[wx * d + dd];
          kk += wx;
#pragma omp simd
          for (int64_t x = 0; x < W; ++x) Lw[x] += q[x] * (kk[x] + r);
        } else {
          const int32_t* ck = g.col_key.data() + wx * W;
          const int32_t* cr = g.col_rel.data() + wx * W;
          const T r = Rr[rr * d + dd];
          const T* Rcol = Rc + dd;
          for (int64_t x = 0; x < W; ++x) Lw[x] += q[x] * (kk[ck[x]] + r + Rcol[cr[x] * d]);
        }
      }
      const T* b = bias + wx * W;
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) Lw[x] = Lw[x] * scale + b[x];
    }
  }
}

// softmax over the k^2 slots of every x of the row, in place; writes the log-sum-exp.
template <typename T>
void row_softmax(int64_t slots, int64_t W, int64_t stride, T* __restrict__ L, T* __restrict__ m, T* __restrict__ s,
                 T* __restrict__ lse) {
  std::fill(m, m + W, -std::numeric_limits<T>::infinity());
  for (int64_t w = 0; w < slots; ++w) {
    const T* Lw = L + w * stride;
#pragma omp simd
    for (int64_t x = 0; x < W; ++x) m[x] = std::max(m[x], Lw[x]);
  }
  std::fill(s, s + W, T(0));
  for (int64_t w = 0; w < slots; ++w) {
    T* Lw = L + w * stride;
#pragma omp simd
    for (int64_t x = 0; x < W; ++x) Lw[x] -= m[x];
    exp_inplace(Lw, W);
#pragma omp simd
    for (int64_t x = 0; x < W; ++x) s[x] += Lw[x];
  }
  for (int64_t x = 0; x < W; ++x) {
    lse[x] = m[x] + std::log(s[x]);
    s[x] = T(1) / s[x];
  }
  for (int64_t w = 0; w < slots; ++w) {
    T* Lw = L + w * stride;
#pragma omp simd
    for (int64_t x = 0; x < W; ++x) Lw[x] *= s[x];
  }
}

// P = exp(L - lse), the softmax of the forward pass rebuilt from its saved statistics.
template <typename T>
void row_probs(int64_t slots, int64_t W, int64_t stride, const T* __restrict__ lse, T* __restrict__ L) {
  for (int64_t w = 0; w < slots; ++w) {
    T* Lw = L + w * stride;
#pragma omp simd
    for (int64_t x = 0; x < W; ++x) Lw[x] -= lse[x];
    exp_inplace(Lw, W);
  }
}

// out[dd](y, :) = sum_w P_w v_w for every channel of the head (v from the padded planes Vp).
template <typename T>
void row_output(const Geometry& g, const T* P, const T* Vp, int64_t y, T* O) {
  const int64_t W = g.W, k = g.k, HW = g.H * g.W, plane = g.Hp * g.Wp;
  for (int64_t dd = 0; dd < g.d; ++dd) {
    T* __restrict__ o = O + dd * HW + y * W;
    std::fill(o, o + W, T(0));
    for (int64_t wy = 0; wy < k; ++wy) {
      if (!g.rows.ok[y * k + wy]) continue;
      const T* vrow = Vp + dd * plane + g.rows.key[y * k + wy] * g.Wp;
      for (int64_t wx = 0; wx < k; ++wx) {
        const T* __restrict__ Pw = P + (wy * k + wx) * W;
        if (g.regular) {
          const T* __restrict__ vv = vrow + wx;
#pragma omp simd
          for (int64_t x = 0; x < W; ++x) o[x] += Pw[x] * vv[x];
        } else {
          const int32_t* ck = g.col_key.data() + wx * W;
          for (int64_t x = 0; x < W; ++x) o[x] += Pw[x] * vrow[ck[x]];
        }
      }
    }
  }
}

template <typename T>
void forward_planes(const Geometry& g, const T* qkv, const T* rel_rows, const T* rel_cols, T scale, T* out, T* lse,
                    TaskQueue& tasks) {
  const int64_t HW = g.H * g.W, C = g.heads * g.d, slots = g.k * g.k;
  Scratch<T> Kp(g.d * g.Hp * g.Wp), Vp(g.d * g.Hp * g.Wp), L(slots * g.W), m(g.W), s(g.W);
  const std::vector<T> bias = column_bias<T>(g, 1, g.W, g.k * g.W);
  for (int64_t task = tasks.next(); task >= 0; task = tasks.next()) {
    const int64_t b = task / g.heads, h = task % g.heads;
    const T* Q = qkv + (b * 3 * C + h * g.d) * HW;
    pad_planes(g, Q + C * HW, Kp.data());
    pad_planes(g, Q + 2 * C * HW, Vp.data());
    const T* Rr = rel_rows + h * g.T * g.d;
    const T* Rc = rel_cols + h * g.T * g.d;
    T* O = out + (b * C + h * g.d) * HW;
    T* S = lse + task * HW;
    for (int64_t y = 0; y < g.H; ++y) {
      row_logits(g, Q, Kp.data(), Rr, Rc, bias.data(), y, scale, L.data());
      row_softmax(slots, g.W, g.W, L.data(), m.data(), s.data(), S + y * g.W);
      row_output(g, L.data(), Vp.data(), y, O);
    }
  }
}

// The backward of one query row: P in L (from row_probs), G scratch of the same size.
template <typename T>
void row_backward(const Geometry& g, const T* Q, const T* Kp, const T* Vp, const T* Rr, const T* Rc, const T* dO,
                  const T* O, int64_t y, T scale, T* __restrict__ L, T* __restrict__ G, T* __restrict__ D, T* dQ,
                  T* dKp, T* dVp, T* dRr, T* dRc) {
  const int64_t W = g.W, k = g.k, HW = g.H * g.W, plane = g.Hp * g.Wp, d = g.d, slots = k * k;
  std::fill(D, D + W, T(0));
  std::fill(G, G + slots * W, T(0));
  for (int64_t dd = 0; dd < d; ++dd) {
    const T* __restrict__ go = dO + dd * HW + y * W;
    const T* __restrict__ o = O + dd * HW + y * W;
#pragma omp simd
    for (int64_t x = 0; x < W; ++x) D[x] += go[x] * o[x];
    for (int64_t wy = 0; wy < k; ++wy) {
      if (!g.rows.ok[y * k + wy]) continue;
      const T* vrow = Vp + dd * plane + g.rows.key[y * k + wy] * g.Wp;
      for (int64_t wx = 0; wx < k; ++wx) {
        T* __restrict__ Gw = G + (wy * k + wx) * W;
        if (g.regular) {
          const T* __restrict__ vv = vrow + wx;
#pragma omp simd
          for (int64_t x = 0; x < W; ++x) Gw[x] += go[x] * vv[x];
        } else {
          const int32_t* ck = g.col_key.data() + wx * W;
          for (int64_t x = 0; x < W; ++x) Gw[x] += go[x] * vrow[ck[x]];
        }
      }
    }
  }
  // G <- scale * dS = scale * P (dP - D)
  for (int64_t w = 0; w < slots; ++w) {
    T* __restrict__ Gw = G + w * W;
    const T* __restrict__ Pw = L + w * W;
#pragma omp simd
    for (int64_t x = 0; x < W; ++x) Gw[x] = scale * Pw[x] * (Gw[x] - D[x]);
  }
  for (int64_t dd = 0; dd < d; ++dd) {
    const T* __restrict__ q = Q + dd * HW + y * W;
    const T* __restrict__ go = dO + dd * HW + y * W;
    T* __restrict__ gq = dQ + dd * HW + y * W;
    std::fill(gq, gq + W, T(0));
    for (int64_t wy = 0; wy < k; ++wy) {
      if (!g.rows.ok[y * k + wy]) continue;
      const int64_t off = dd * plane + g.rows.key[y * k + wy] * g.Wp, rr = g.rows.rel[y * k + wy];
      for (int64_t wx = 0; wx < k; ++wx) {
        const T* __restrict__ Gw = G + (wy * k + wx) * W;
        const T* __restrict__ Pw = L + (wy * k + wx) * W;
        if (g.regular) {
          const T* __restrict__ kk = Kp + off + wx;
          T* __restrict__ gk = dKp + off + wx;
          T* __restrict__ gv = dVp + off + wx;
          const T r = Rr[rr * d + dd] + Rc[wx * d + dd];
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t x = 0; x < W; ++x) {
            gq[x] += Gw[x] * (kk[x] + r);
            const T t = Gw[x] * q[x];
            gk[x] += t;
            acc += t;
            gv[x] += Pw[x] * go[x];
          }
          dRr[rr * d + dd] += acc;
          dRc[wx * d + dd] += acc;
        } else {
          const int32_t* ck = g.col_key.data() + wx * W;
          const int32_t* cr = g.col_rel.data() + wx * W;
          const T r = Rr[rr * d + dd];
          T acc = 0;
          for (int64_t x = 0; x < W; ++x) {
            const int64_t kx = off + ck[x], ci = cr[x] * d + dd;
            gq[x] += Gw[x] * (Kp[kx] + r + Rc[ci]);
            const T t = Gw[x] * q[x];
            dKp[kx] += t;
            acc += t;
            dRc[ci] += t;
            dVp[kx] += Pw[x] * go[x];
          }
          dRr[rr * d + dd] += acc;
        }
      }
    }
  }
}

template <typename T>
void backward_planes(const Geometry& g, const T* qkv, const T* rel_rows, const T* rel_cols, const T* out,
                     const T* lse, const T* gout, T scale, T* gqkv, T* grel_parts, TaskQueue& tasks) {
  const int64_t HW = g.H * g.W, C = g.heads * g.d, slots = g.k * g.k, padded = g.d * g.Hp * g.Wp;
  Scratch<T> Kp(padded), Vp(padded), dKp(padded), dVp(padded), L(slots * g.W), G(slots * g.W), D(g.W);
  const std::vector<T> bias = column_bias<T>(g, 1, g.W, g.k * g.W);
  for (int64_t task = tasks.next(); task >= 0; task = tasks.next()) {
    const int64_t b = task / g.heads, h = task % g.heads;
    const int64_t q_off = (b * 3 * C + h * g.d) * HW, o_off = (b * C + h * g.d) * HW;
    const T* Q = qkv + q_off;
    pad_planes(g, Q + C * HW, Kp.data());
    pad_planes(g, Q + 2 * C * HW, Vp.data());
    std::fill(dKp.begin(), dKp.end(), T(0));
    std::fill(dVp.begin(), dVp.end(), T(0));
    const T* Rr = rel_rows + h * g.T * g.d;
    const T* Rc = rel_cols + h * g.T * g.d;
    T* dRr = grel_parts + task * 2 * g.T * g.d;  // then dRc, T * d further
    T* dRc = dRr + g.T * g.d;
    const T* S = lse + task * HW;
    for (int64_t y = 0; y < g.H; ++y) {
      row_logits(g, Q, Kp.data(), Rr, Rc, bias.data(), y, scale, L.data());
      row_probs(slots, g.W, g.W, S + y * g.W, L.data());
      row_backward(g, Q, Kp.data(), Vp.data(), Rr, Rc, gout + o_off, out + o_off, y, scale, L.data(), G.data(),
                   D.data(), gqkv + q_off, dKp.data(), dVp.data(), dRr, dRc);
    }
    unpad_planes(g, dKp.data(), gqkv + q_off + C * HW);
    unpad_planes(g, dVp.data(), gqkv + q_off + 2 * C * HW);
  }
}

}  // namespace lattn
