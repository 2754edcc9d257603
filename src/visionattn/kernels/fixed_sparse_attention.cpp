// The Sparse Transformer's fixed pattern on the CPU, forward and backward: Child et al. 2019, "Generating Long
// Sequences with Sparse Transformers", sec. 4.3 (the pattern) and eq. 7 (one head over the union of its factors).
//
// With stride l and c summary positions per block, query i of block b = floor(i / l) attends
//   A(1)_i = {j <= i : floor(j / l) = b}                 its own block so far
//   A(2)_i = {j <= i : j mod l >= l - c}                 the last c positions of every block so far
// For every query of block b the keys of A(1) u A(2) are the same list, which this kernel attends as one dense
// row per query: the summaries of the earlier blocks (gathered once per sequence into G = b c contiguous rows,
// a prefix of the same (m c) rows for every block) followed by its own block from offset `own` on, causal
// (bottom-right aligned: own-block key t for query row s when own + t <= s). One kernel serves three sets:
//   merged A(1) u A(2):   c summaries per earlier block, own = 0
//   A(1) alone:           c = 0, own = 0
//   A(2) alone:           c summaries per earlier block, own = l - c (the block's own summaries so far)
// A query with no key (A(2) alone, the first l - c queries of block 0) gets output 0 and log-sum-exp -inf, the
// attention core's rule for an empty row.
//
// One task is one (sequence, block): its logits are an l x (G + l - own) matrix, made by two matrix products
// (summaries, own block); then a softmax per row (the forward keeps only its log-sum-exp, as flash attention does)
// and two products for the output, whose rows are divided by the softmax sums (fewer values than the weights). The backward rebuilds P from the log-sum-exp:
//   dP = dO V^T,  D = rowsum(dO * O),  dS = P (dP - D),
//   dq = scale dS K,  dk = scale dS^T q,  dv = P^T dO
// (ten products per task). The own block's dk and dv belong to the task alone; the summaries' are summed over
// every later block of the sequence, so each chunk of tasks (one per thread) sums them in its own buffer and
// the buffers are added to dk and dv at the end, in a fixed order: the result does not depend on scheduling.
// Tasks run in an order that pairs cheap early blocks with costly late ones (0, m - 1, 1, m - 2, ...), so that
// equal-length chunks of tasks cost about the same.
//
// The products go to the BLAS that PyTorch links (sgemm_ / dgemm_, as its own CPU flash attention does through
// cpublas) where it exports one, else to at::mm_out on views (the same results, with the dispatcher's cost).
// Layout: q, k (N, m l, d), v (N, m l, dv), contiguous, N = batch x heads, the sequence padded to m blocks.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "vec8.h"

extern "C" {
// Fortran BLAS, weak: null where the loaded libraries export none.
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace {

bool g_use_blas = true;  // tests switch to the at::mm_out path to check it too

template <typename T>
bool have_blas() {
  if constexpr (std::is_same_v<T, float>) return g_use_blas && sgemm_ != nullptr;
  else return g_use_blas && dgemm_ != nullptr;
}

// Row-major C (M x N, ldc) = alpha op(A) op(B) + beta C, op(A) M x K, op(B) K x N; ta: A is stored K x M
// (lda) and transposed, tb likewise for B. Row-major C is column-major C^T = op(B)^T op(A)^T, so the column-major
// BLAS gets B first with the same transposition flags.
template <typename T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t r = 0; r < M; ++r)
      for (int64_t s = 0; s < N; ++s) C[r * ldc + s] = beta == T(0) ? T(0) : beta * C[r * ldc + s];
    return;
  }
  if (have_blas<T>()) {
    const char opa = ta ? 'T' : 'N', opb = tb ? 'T' : 'N';
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
    if constexpr (std::is_same_v<T, float>) sgemm_(&opb, &opa, &m, &n, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
    else dgemm_(&opb, &opa, &m, &n, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
    return;
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto a = ta ? at::from_blob(const_cast<T*>(A), {M, K}, {1, lda}, opts)
              : at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts);
  auto b = tb ? at::from_blob(const_cast<T*>(B), {K, N}, {1, ldb}, opts)
              : at::from_blob(const_cast<T*>(B), {K, N}, {ldb, 1}, opts);
  auto c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == T(0)) at::mm_out(c, a, b).mul_(alpha);
  else at::addmm_out(c, c, a, b, beta, alpha);
}

struct Geometry {
  int64_t N, m, l, c, own, d, dv, width;  // width: keys of the last block, G + l - own at its largest
  double scale;
  int64_t n() const { return m * l; }
  int64_t summaries(int64_t b) const { return b * c; }  // G of block b
  int64_t keys(int64_t b) const { return b * c + l - own; }
  int64_t valid(int64_t b, int64_t s) const { return b * c + std::max<int64_t>(0, s - own + 1); }  // row s's keys
  // task t (sequence-major) -> (sequence, block), blocks in the order 0, m - 1, 1, m - 2, ...
  std::pair<int64_t, int64_t> task(int64_t t) const {
    const int64_t i = t / m, j = t % m;
    return {i, j % 2 == 0 ? j / 2 : m - 1 - j / 2};
  }
};

// ---- softmax rows: base-2 logits x (scale * log2 e folded into the products); float by 8 lanes ----

// The largest of a row's `valid` (> 0) logits.
template <typename T>
T row_max(const T* x, int64_t valid) {
  T top = x[0];
  int64_t t = 1;
  if constexpr (std::is_same_v<T, float>) {
    if (valid >= 8) {
      vec::v8 m = vec::ld(x);
      for (t = 8; t + 8 <= valid; t += 8) {
        const vec::v8 v = vec::ld(x + t);
        m = m > v ? m : v;
      }
      for (int lane = 0; lane < 8; ++lane) top = std::max(top, m[lane]);
    }
  }
  for (; t < valid; ++t) top = std::max(top, x[t]);
  return top;
}

// Row of `valid` base-2 logits (then zeros up to `width`) -> 2^(x - max), not yet divided by their sum (the
// forward divides the output row instead, l x dv values rather than l x keys); returns the base-2 log-sum-exp
// and 1 / sum (-inf and 0 for an empty row).
template <typename T>
std::pair<T, T> exp_row(T* x, int64_t valid, int64_t width) {
  std::fill(x + valid, x + width, T(0));
  if (valid == 0) return {-std::numeric_limits<T>::infinity(), T(0)};
  const T top = row_max(x, valid);
  T sum = 0;
  int64_t t = 0;
  if constexpr (std::is_same_v<T, float>) {
    vec::v8 acc = vec::bc(0.0f), mx = vec::bc(top);
    for (; t + 8 <= valid; t += 8) {
      const vec::v8 e = vec::vexp2(vec::ld(x + t) - mx);
      vec::st(x + t, e);
      acc += e;
    }
    sum = vec::hsum(acc);
  }
  for (; t < valid; ++t) sum += (x[t] = std::exp2(x[t] - top));
  return {top + std::log2(sum), T(1) / sum};
}

// Row of `valid` base-2 logits -> 2^(x - lse2), zeros beyond (the forward's probabilities, rebuilt).
template <typename T>
void probs_row(T* x, int64_t valid, int64_t width, T lse2) {
  std::fill(x + valid, x + width, T(0));
  int64_t t = 0;
  if constexpr (std::is_same_v<T, float>) {
    const vec::v8 shift = vec::bc(lse2);
    for (; t + 8 <= valid; t += 8) vec::st(x + t, vec::vexp2(vec::ld(x + t) - shift));
  }
  for (; t < valid; ++t) x[t] = std::exp2(x[t] - lse2);
}

// g <- p (g - dot), over the row's `valid` entries (beyond it p is zero, and so is dS).
template <typename T>
void grad_logits_row(const T* p, T* g, int64_t valid, int64_t width, T dot) {
  int64_t t = 0;
  if constexpr (std::is_same_v<T, float>) {
    const vec::v8 dv = vec::bc(dot);
    for (; t + 8 <= valid; t += 8) vec::st(g + t, vec::ld(p + t) * (vec::ld(g + t) - dv));
  }
  for (; t < valid; ++t) g[t] = p[t] * (g[t] - dot);
  std::fill(g + valid, g + width, T(0));
}

// The logits of block b's task, base 2: S (l x K) = scale log2(e) q_b [summaries; own keys]^T.
template <typename T>
void logits(const Geometry& g, int64_t b, const T* qb, const T* ks, const T* kb, T* S) {
  const int64_t G = g.summaries(b), K = g.keys(b);
  const T alpha = static_cast<T>(g.scale / std::log(2.0));
  gemm<T>(false, true, g.l, G, g.d, alpha, qb, g.d, ks, g.d, T(0), S, K);
  gemm<T>(false, true, g.l, g.l - g.own, g.d, alpha, qb, g.d, kb + g.own * g.d, g.d, T(0), S + G, K);
}

// ks (N, m c, d), vs (N, m c, dv): the summary rows of every block, gathered.
std::pair<at::Tensor, at::Tensor> gather_summaries(const Geometry& g, const at::Tensor& k, const at::Tensor& v) {
  auto kv = [&](const at::Tensor& x) {  // contiguous: with c = 1 the reshape alone is a strided view
    const int64_t width = x.size(-1);
    return x.view({g.N, g.m, g.l, width}).narrow(2, g.l - g.c, g.c).reshape({g.N, g.m * g.c, width}).contiguous();
  };
  if (g.c == 0) return {k.new_empty({g.N, 0, g.d}), v.new_empty({g.N, 0, g.dv})};
  return {kv(k), kv(v)};
}

Geometry geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t l, int64_t c, int64_t own,
                  double scale) {
  TORCH_CHECK(q.dim() == 3 && k.sizes() == q.sizes() && v.dim() == 3 && v.size(0) == q.size(0) &&
                  v.size(1) == q.size(1), "fixed sparse attention: q, k (N, n, d) and v (N, n, dv) expected");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "q, k and v must be contiguous");
  TORCH_CHECK(l > 0 && q.size(1) % l == 0, "the sequence must be whole blocks of l");
  TORCH_CHECK(c >= 0 && c <= l && own >= 0 && own < l, "0 <= c <= l and 0 <= own < l");
  Geometry g{q.size(0), q.size(1) / l, l, c, own, q.size(2), v.size(2), 0, scale};
  g.width = g.keys(std::max<int64_t>(g.m - 1, 0));
  return g;
}

// The tasks of chunk `chunk` of `chunks` (contiguous, sequence-major).
std::pair<int64_t, int64_t> chunk_range(int64_t tasks, int64_t chunks, int64_t chunk) {
  return {tasks * chunk / chunks, tasks * (chunk + 1) / chunks};
}

template <typename T>
void forward_impl(const Geometry& g, const T* q, const T* k, const T* v, const T* ks, const T* vs, T* out,
                  T* lse) {
  const int64_t tasks = g.N * g.m, n = g.n(), sc = g.m * g.c;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> S(g.l * g.width), inv(g.l);
    for (int64_t t = begin; t < end; ++t) {
      const auto [i, b] = g.task(t);
      const int64_t G = g.summaries(b), K = g.keys(b), row0 = i * n + b * g.l;
      const T* kb = k + row0 * g.d;
      logits<T>(g, b, q + row0 * g.d, ks + i * sc * g.d, kb, S.data());
      for (int64_t s = 0; s < g.l; ++s) {
        const auto [lse2, inverse] = exp_row<T>(S.data() + s * K, g.valid(b, s), K);
        lse[row0 + s] = lse2 * static_cast<T>(std::log(2.0));
        inv[s] = inverse;
      }
      T* ob = out + row0 * g.dv;
      gemm<T>(false, false, g.l, g.dv, G, T(1), S.data(), K, vs + i * sc * g.dv, g.dv, T(0), ob, g.dv);
      gemm<T>(false, false, g.l, g.dv, g.l - g.own, T(1), S.data() + G, K, v + (row0 + g.own) * g.dv, g.dv,
              G > 0 ? T(1) : T(0), ob, g.dv);
      for (int64_t s = 0; s < g.l; ++s)
        for (int64_t x = 0; x < g.dv; ++x) ob[s * g.dv + x] *= inv[s];
    }
  });
}

template <typename T>
void backward_impl(const Geometry& g, const T* q, const T* k, const T* v, const T* ks, const T* vs, const T* out,
                   const T* lse, const T* dout, T* dq, T* dk, T* dv) {
  const int64_t tasks = g.N * g.m, n = g.n(), sc = g.m * g.c, d = g.d, e = g.dv;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
  // per chunk: the summaries' dk | dv of the sequences its tasks touch (first .. last)
  std::vector<std::vector<T>> sums(chunks);
  std::vector<int64_t> firsts(chunks);
  const T lse_scale = static_cast<T>(1.0 / std::log(2.0)), scale = static_cast<T>(g.scale);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<T> P(g.l * g.width), dS(g.l * g.width), D(g.l);
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      const auto [begin, end] = chunk_range(tasks, chunks, chunk);
      const int64_t first = begin / g.m, count = begin < end ? (end - 1) / g.m - first + 1 : 0;
      firsts[chunk] = first;
      std::vector<T>& acc = sums[chunk];
      acc.assign(count * sc * (d + e), T(0));
      for (int64_t t = begin; t < end; ++t) {
        const auto [i, b] = g.task(t);
        const int64_t G = g.summaries(b), K = g.keys(b), row0 = i * n + b * g.l, own = g.l - g.own;
        const T *qb = q + row0 * d, *kb = k + row0 * d, *vb = v + row0 * e, *dob = dout + row0 * e;
        const T *ksi = ks + i * sc * d, *vsi = vs + i * sc * e;
        T* acck = acc.data() + (i - first) * sc * (d + e);
        T* accv = acck + sc * d;
        logits<T>(g, b, qb, ksi, kb, P.data());
        for (int64_t s = 0; s < g.l; ++s) {
          probs_row<T>(P.data() + s * K, g.valid(b, s), K, lse[row0 + s] * lse_scale);
          const T* o = out + (row0 + s) * e;
          const T* go = dob + s * e;
          T dot = 0;
          for (int64_t x = 0; x < e; ++x) dot += o[x] * go[x];
          D[s] = dot;
        }
        // dP = dO [vs; v_own]^T, then dS = P (dP - D)
        gemm<T>(false, true, g.l, G, e, T(1), dob, e, vsi, e, T(0), dS.data(), K);
        gemm<T>(false, true, g.l, own, e, T(1), dob, e, vb + g.own * e, e, T(0), dS.data() + G, K);
        for (int64_t s = 0; s < g.l; ++s)
          grad_logits_row<T>(P.data() + s * K, dS.data() + s * K, g.valid(b, s), K, D[s]);
        // dq = scale dS [ks; k_own]
        T* dqb = dq + row0 * d;
        gemm<T>(false, false, g.l, d, G, scale, dS.data(), K, ksi, d, T(0), dqb, d);
        gemm<T>(false, false, g.l, d, own, scale, dS.data() + G, K, kb + g.own * d, d, G > 0 ? T(1) : T(0), dqb, d);
        // dk = scale dS^T q, dv = P^T dO: the summaries' into the chunk's sums, the own block's in place
        gemm<T>(true, false, G, d, g.l, scale, dS.data(), K, qb, d, T(1), acck, d);
        gemm<T>(true, false, G, e, g.l, T(1), P.data(), K, dob, e, T(1), accv, e);
        T *dkb = dk + row0 * d, *dvb = dv + row0 * e;
        if (g.own > 0) {
          std::fill(dkb, dkb + g.own * d, T(0));
          std::fill(dvb, dvb + g.own * e, T(0));
        }
        gemm<T>(true, false, own, d, g.l, scale, dS.data() + G, K, qb, d, T(0), dkb + g.own * d, d);
        gemm<T>(true, false, own, e, g.l, T(1), P.data() + G, K, dob, e, T(0), dvb + g.own * e, e);
      }
    }
  });
  if (g.c == 0) return;
  // the summaries' sums into dk and dv: sequence i's rows get every chunk's part that covers i, chunk by chunk
  at::parallel_for(0, g.N, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        const int64_t count = static_cast<int64_t>(sums[chunk].size()) / (sc * (d + e));
        if (i < firsts[chunk] || i >= firsts[chunk] + count) continue;
        const T* acck = sums[chunk].data() + (i - firsts[chunk]) * sc * (d + e);
        const T* accv = acck + sc * d;
        for (int64_t b = 0; b < g.m; ++b)
          for (int64_t r = 0; r < g.c; ++r) {
            const int64_t row = i * n + b * g.l + g.l - g.c + r, src = b * g.c + r;
            for (int64_t x = 0; x < d; ++x) dk[row * d + x] += acck[src * d + x];
            for (int64_t x = 0; x < e; ++x) dv[row * e + x] += accv[src * e + x];
          }
      }
  });
}

std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t l, int64_t c,
                                int64_t own, double scale) {
  const Geometry g = geometry(q, k, v, l, c, own, scale);
  auto out = at::empty_like(v);
  auto lse = at::empty({g.N, g.n()}, q.options());
  auto [ks, vs] = gather_summaries(g, k, v);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "fixed_sparse_attention_forward", [&] {
    forward_impl<scalar_t>(g, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                           ks.data_ptr<scalar_t>(), vs.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                           lse.data_ptr<scalar_t>());
  });
  return {out, lse};
}

std::vector<at::Tensor> backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, int64_t l,
                                 int64_t c, int64_t own, double scale) {
  const Geometry g = geometry(q, k, v, l, c, own, scale);
  TORCH_CHECK(dout.sizes() == v.sizes() && out.sizes() == v.sizes() && dout.is_contiguous() && out.is_contiguous(),
              "dout and out must be contiguous, shaped as v");
  TORCH_CHECK(lse.is_contiguous() && lse.scalar_type() == q.scalar_type() && lse.numel() == g.N * g.n(),
              "lse must be the forward's (N, n) log-sum-exp");
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  auto [ks, vs] = gather_summaries(g, k, v);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "fixed_sparse_attention_backward", [&] {
    backward_impl<scalar_t>(g, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                            ks.data_ptr<scalar_t>(), vs.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                            lse.data_ptr<scalar_t>(), dout.data_ptr<scalar_t>(), dq.data_ptr<scalar_t>(),
                            dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>());
  });
  return {dq, dk, dv};
}

bool use_blas(bool on) {
  const bool was = g_use_blas;
  g_use_blas = on;
  return was;
}

bool blas_available() { return sgemm_ != nullptr && dgemm_ != nullptr; }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fixed sparse attention: (out, lse)");
  m.def("backward", &backward, "fixed sparse attention: (dq, dk, dv)");
  m.def("use_blas", &use_blas, "switch between the linked BLAS and at::mm_out (tests); returns the old setting");
  m.def("blas_available", &blas_available, "whether the loaded libraries export sgemm_ and dgemm_");
}
