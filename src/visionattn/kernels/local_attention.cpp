// Fused local (windowed) self-attention for the CPU: forward and backward, never k^2 copies of keys or values.
//
// Ramachandran et al. 2019, "Stand-Alone Self-Attention in Vision Models", eq. 2-3, per head:
//   s_w = scale * q . (k_w + r_w),  P = softmax_w(s),  o = sum_w P_w v_w      (w: the k x k window slots)
// The forward saves only the log-sum-exp of every softmax (as flash attention does); the backward recomputes
// the logits from it:
//   dP_w = dO . v_w,  D = dO . o,  dS_w = P_w (dP_w - D),
//   dq = scale * sum_w dS_w (k_w + r_w),  dk_w += scale dS_w q,  dr_w += scale dS_w q,  dv_w += P_w dO.
// The relative embedding of slot (wy, wx) is r = rel_rows[rel(wy)] + rel_cols[rel(wx)] (SASA's concatenation of
// a row and a column embedding is this sum, each table zero outside its half of the channels), so the k^2
// slots of a pixel share 2k relative dot products, and dr reduces to sums of dS over window rows and columns.
//
// Layout: the input is the (B, 3C, H, W) output of the q/k/v projection, C = heads * d, in the order
// (q | k | v); every channel is a contiguous (H, W) plane, so the work for one query row is a set of
// contiguous, vectorisable loops over x, with the keys of window slot (wy, wx) the key row shifted by wx.
// One task is one (batch, head) plane; it copies its keys and values into a zero-padded scratch plane, so the
// borders need no branches ("zero" reads the zeros, "mask" adds -inf to the outside logits) and the backward
// scatters its key/value gradients without races. "clamp" (neighbourhood attention) moves the window at the
// border, so its key column depends on x: that case goes through per-axis index tables (a gather).
//
// Three paths: float "mask" / "zero" with k in {3, 5, 7, 9} take the lanes path (local_attention_lanes.h: a task
// is 8 planes, one per vector lane, every load aligned) where there are at least as many groups of 8 planes as
// threads, else the row path (local_attention_vec.h: a task is one plane, lanes over the pixels of a row);
// everything else (double, "clamp", other k) the generic path (local_attention_generic.h).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <limits>
#include <type_traits>
#include <vector>

#include "local_attention_generic.h"
#include "local_attention_lanes.h"
#include "local_attention_vec.h"

namespace {

using namespace lattn;

// ---- the vectorised float path ("mask" / "zero", k in {3, 5, 7, 9}); see local_attention_vec.h ----

// Padded key rows that take part in the softmax: all for "zero", those inside the image for "mask".
std::vector<uint8_t> key_rows_ok(const Geometry& g) {
  std::vector<uint8_t> ok(g.Hp, 0);
  for (int64_t y = 0; y < g.H; ++y)
    for (int64_t wy = 0; wy < g.k; ++wy) ok[y + wy] = g.rows.ok[y * g.k + wy];
  return ok;
}

// Runs f(y, integral_constant R) over the query rows: two at a time (R = 2, the last one of an odd H alone) where
// two rows' softmax buffers take at most 20 KB, so that they stay in a 32 KB L1 cache beside the key rows (in
// A/B timings pairs were faster at 28 x 28 and below, and slower at 56 x 56, where they do not); else one at a
// time.
template <typename F>
void query_rows(const vec::Layout& l, F f) {
  int64_t y = 0;
  if (2 * vec::slots(l) * sizeof(float) <= 20 * 1024)
    for (; y + 2 <= l.H; y += 2) f(y, std::integral_constant<int, 2>());
  for (; y < l.H; ++y) f(y, std::integral_constant<int, 1>());
}

// Channel blocks of 8, 4 and 1: f(dd, integral_constant DB).
template <typename F>
void channel_blocks(int64_t d, F f) {
  int64_t dd = 0;
  for (; dd + 8 <= d; dd += 8) f(dd, std::integral_constant<int, 8>());
  for (; dd + 4 <= d; dd += 4) f(dd, std::integral_constant<int, 4>());
  for (; dd < d; ++dd) f(dd, std::integral_constant<int, 1>());
}

template <int K>
void forward_planes_vec(const Geometry& g, const float* qkv, const float* rel_rows, const float* rel_cols,
                        float scale, float* out, float* lse, TaskQueue& tasks) {
  const vec::Layout l(g.H, g.W, K, g.T, g.d);
  const int64_t HW = g.H * g.W, C = g.heads * g.d, ls = vec::slots(l), rs = vec::rel(l);
  Scratch<float> Qq(l.d * l.H * l.Wq, 0.0f), Kp(l.d * l.Hp * l.Wk, 0.0f), Vp(l.d * l.Hp * l.Wk, 0.0f);
  Scratch<float> L(2 * ls, 0.0f), M(2 * l.Wv), inv(2 * l.Wv), QR(2 * rs), QC(2 * rs);
  const std::vector<float> bias = column_bias<float>(g, 1, l.Wv, K * l.Wv);
  const std::vector<uint8_t> ok = key_rows_ok(g);
  for (int64_t task = tasks.next(); task >= 0; task = tasks.next()) {
    const int64_t b = task / g.heads, h = task % g.heads;
    const float* Q = qkv + (b * 3 * C + h * g.d) * HW;
    vec::to_query_rows(l, Q, Qq.data());
    vec::to_key_planes(l, Q + C * HW, Kp.data());
    vec::to_key_planes(l, Q + 2 * C * HW, Vp.data());
    const float* Rr = rel_rows + h * g.T * g.d;
    const float* Rc = rel_cols + h * g.T * g.d;
    float* O = out + (b * C + h * g.d) * HW;
    query_rows(l, [&](int64_t y, auto R_) {
      constexpr int R = decltype(R_)::value;
      std::fill(M.begin(), M.end(), -std::numeric_limits<float>::infinity());
      for (int r = 0; r < R; ++r) vec::rel_logits<K>(l, Qq.data(), Rr, Rc, y + r, &QR[r * rs], &QC[r * rs]);
      vec::dots<K, vec::Epi::kLogits, R>(l, ok.data(), Qq.data(), Kp.data(), QR.data(), QC.data(), bias.data(),
                                         nullptr, y, scale * vec::kLog2e, M.data(), L.data());
      if (g.d == 8) {  // one channel block: the exponentials go straight into the output sums
        vec::softmax_output<K, 8, R>(l, ok.data(), L.data(), Vp.data(), y, M.data(), O);
      } else {
        for (int r = 0; r < R; ++r) vec::softmax_row(l, K * K, &L[r * ls], &M[r * l.Wv], &inv[r * l.Wv]);
        channel_blocks(g.d, [&](int64_t dd, auto DB) {
          vec::weighted_sum<K, decltype(DB)::value, R>(l, ok.data(), L.data(), Vp.data(), inv.data(), y, dd, O);
        });
      }
      for (int r = 0; r < R; ++r)  // M is now the base-2 log-sum-exp
        for (int64_t x = 0; x < g.W; ++x) lse[task * HW + (y + r) * g.W + x] = M[r * l.Wv + x] * vec::kLn2;
    });
  }
}

template <int K>
void backward_planes_vec(const Geometry& g, const float* qkv, const float* rel_rows, const float* rel_cols,
                         const float* out, const float* lse, const float* gout, float scale, float* gqkv,
                         float* grel_parts, TaskQueue& tasks) {
  const vec::Layout l(g.H, g.W, K, g.T, g.d);
  const int64_t HW = g.H * g.W, C = g.heads * g.d, keys = l.d * l.Hp * l.Wk, ls = vec::slots(l),
                rs = vec::rel(l);
  Scratch<float> Qq(l.d * l.H * l.Wq, 0.0f), dOq(l.d * l.H * l.Wq, 0.0f);
  Scratch<float> Kp(keys, 0.0f), Vp(keys, 0.0f), dKp(keys), dVp(keys);
  Scratch<float> L(2 * ls, 0.0f), G(2 * ls, 0.0f), D(2 * l.Wv, 0.0f), S(2 * l.Wv, 0.0f);
  Scratch<float> QR(2 * rs), QC(2 * rs), GR(l.H * rs), GC(l.H * rs);  // GR, GC: every query row
  const std::vector<float> bias = column_bias<float>(g, 1, l.Wv, K * l.Wv);
  const std::vector<uint8_t> ok = key_rows_ok(g);
  for (int64_t task = tasks.next(); task >= 0; task = tasks.next()) {
    const int64_t b = task / g.heads, h = task % g.heads;
    const int64_t q_off = (b * 3 * C + h * g.d) * HW, o_off = (b * C + h * g.d) * HW;
    vec::to_query_rows(l, qkv + q_off, Qq.data());
    vec::to_query_rows(l, gout + o_off, dOq.data());
    vec::to_key_planes(l, qkv + q_off + C * HW, Kp.data());
    vec::to_key_planes(l, qkv + q_off + 2 * C * HW, Vp.data());
    std::fill(dKp.begin(), dKp.end(), 0.0f);
    std::fill(dVp.begin(), dVp.end(), 0.0f);
    const float* Rr = rel_rows + h * g.T * g.d;
    const float* Rc = rel_cols + h * g.T * g.d;
    const float* O = out + o_off;
    const float* dO = gout + o_off;
    float* dQ = gqkv + q_off;
    query_rows(l, [&](int64_t y, auto R_) {
      constexpr int R = decltype(R_)::value;
      for (int r = 0; r < R; ++r) {
        for (int64_t x = 0; x < g.W; ++x) S[r * l.Wv + x] = lse[task * HW + (y + r) * g.W + x] * vec::kLog2e;
        vec::rel_logits<K>(l, Qq.data(), Rr, Rc, y + r, &QR[r * rs], &QC[r * rs]);
        float* Dr = &D[r * l.Wv];
        std::fill(Dr, Dr + l.Wv, 0.0f);
        for (int64_t dd = 0; dd < g.d; ++dd)
          for (int64_t x = 0; x < g.W; ++x) Dr[x] += dO[(dd * g.H + y + r) * g.W + x] * O[(dd * g.H + y + r) * g.W + x];
      }
      vec::dots<K, vec::Epi::kProbs, R>(l, ok.data(), Qq.data(), Kp.data(), QR.data(), QC.data(), bias.data(),
                                        nullptr, y, scale * vec::kLog2e, S.data(), L.data());
      float *GRy = &GR[y * rs], *GCy = &GC[y * rs];
      std::fill(GCy, GCy + R * rs, 0.0f);
      vec::dots<K, vec::Epi::kGrad, R>(l, ok.data(), dOq.data(), Vp.data(), nullptr, nullptr, nullptr, L.data(), y,
                                       scale, D.data(), G.data(), GRy, GCy);
      channel_blocks(g.d, [&](int64_t dd, auto DB) {
        vec::grad_query<K, decltype(DB)::value, R>(l, ok.data(), G.data(), GRy, GCy, Kp.data(), Rr, Rc, y, dd, dQ);
      });
      for (int r = 0; r < R; ++r) {
        vec::grad_keys_all<K>(l, &G[r * ls], Qq.data(), y + r, dKp.data());
        vec::grad_keys_all<K>(l, &L[r * ls], dOq.data(), y + r, dVp.data());
      }
    });
    vec::from_key_planes(l, dKp.data(), gqkv + q_off + C * HW);
    vec::from_key_planes(l, dVp.data(), gqkv + q_off + 2 * C * HW);
    float* dR = grel_parts + task * 2 * g.T * g.d;  // rel_rows, then rel_cols
    vec::grad_rel<K>(l, GR.data(), Qq.data(), dR);
    vec::grad_rel<K>(l, GC.data(), Qq.data(), dR + g.T * g.d);
  }
}

// ---- the lanes path: 8 (batch, head) planes per task, one in each vector lane; see local_attention_lanes.h ----

// The planes of group `task` (8 planes from 8 * task), as pointers into a (B, n * heads * d, H, W) tensor whose
// `part`-th block of heads * d channels they index; nullptr past the last plane.
struct GroupPlanes {
  const float* in[lanes::kLanes];
  float* out[lanes::kLanes];
};
GroupPlanes group_planes(const Geometry& g, int64_t planes, int64_t task, const float* base, int64_t parts,
                         int64_t part, float* out_base = nullptr) {
  GroupPlanes p{};
  for (int64_t l = 0; l < lanes::kLanes; ++l) {
    const int64_t plane = task * lanes::kLanes + l;
    if (plane >= planes) break;
    const int64_t b = plane / g.heads, h = plane % g.heads;
    const int64_t off = ((b * parts + part) * g.heads + h) * g.d * g.H * g.W;
    p.in[l] = base ? base + off : nullptr;
    p.out[l] = out_base ? out_base + off : nullptr;
  }
  return p;
}

// rows / cols of each lane's head: [T][d] v8.
void pack_rel(const Geometry& g, int64_t planes, int64_t task, const float* rel, lanes::v8* dst) {
  std::fill(dst, dst + g.T * g.d, lanes::v8{});
  for (int64_t l = 0; l < lanes::kLanes && task * lanes::kLanes + l < planes; ++l) {
    const int64_t h = (task * lanes::kLanes + l) % g.heads;
    for (int64_t i = 0; i < g.T * g.d; ++i) dst[i][l] = rel[h * g.T * g.d + i];
  }
}

template <int K>
void forward_groups(const Geometry& g, int64_t planes, const float* qkv, const float* rel_rows,
                    const float* rel_cols, float scale, float* out, float* lse, TaskQueue& tasks) {
  const lanes::Group gr(g.H, g.W, K, g.d);
  const int64_t HW = g.H * g.W;
  Scratch<lanes::v8> Q(HW * g.d), Kp(gr.Hp * gr.Wp * g.d), Vp(gr.Hp * gr.Wp * g.d), O(HW * g.d), S(HW);
  Scratch<lanes::v8> rows(g.T * g.d), cols(g.T * g.d);
  const std::vector<float> bias = column_bias<float>(g, g.k, 1, g.W * g.k);
  for (int64_t task = tasks.next(); task >= 0; task = tasks.next()) {
    lanes::pack(gr, group_planes(g, planes, task, qkv, 3, 0).in, false, Q.data());
    lanes::pack(gr, group_planes(g, planes, task, qkv, 3, 1).in, true, Kp.data());
    lanes::pack(gr, group_planes(g, planes, task, qkv, 3, 2).in, true, Vp.data());
    pack_rel(g, planes, task, rel_rows, rows.data());
    pack_rel(g, planes, task, rel_cols, cols.data());
    lanes::forward<K>(gr, g.border == kZero, Q.data(), Kp.data(), Vp.data(), rows.data(), cols.data(),
                      bias.data(), scale, O.data(), S.data());
    lanes::unpack(gr, O.data(), false, group_planes(g, planes, task, nullptr, 1, 0, out).out);
    for (int64_t l = 0; l < lanes::kLanes && task * lanes::kLanes + l < planes; ++l)
      for (int64_t i = 0; i < HW; ++i) lse[(task * lanes::kLanes + l) * HW + i] = S[i][l];
  }
}

template <int K>
void backward_groups(const Geometry& g, int64_t planes, const float* qkv, const float* rel_rows,
                     const float* rel_cols, const float* out, const float* lse, const float* gout, float scale,
                     float* gqkv, float* grel_parts, TaskQueue& tasks) {
  const lanes::Group gr(g.H, g.W, K, g.d);
  const int64_t HW = g.H * g.W, keys = gr.Hp * gr.Wp * g.d;
  Scratch<lanes::v8> Q(HW * g.d), dO(HW * g.d), dQ(HW * g.d), Kp(keys), Vp(keys), dK(keys), dV(keys);
  Scratch<lanes::v8> S(HW), D(HW), rows(g.T * g.d), cols(g.T * g.d), dR(2 * g.T * g.d);
  Scratch<lanes::v8> Prow(g.W * K * K), Grow(g.W * K * K);
  Scratch<float> Dl(HW);  // dO . O of one plane
  const std::vector<float> bias = column_bias<float>(g, g.k, 1, g.W * g.k);
  for (int64_t task = tasks.next(); task >= 0; task = tasks.next()) {
    if ((task + 1) * lanes::kLanes > planes)  // a partial group: its empty lanes compute on zeros
      for (auto* buf : {&S, &D}) std::fill(buf->begin(), buf->end(), lanes::v8{});
    lanes::pack(gr, group_planes(g, planes, task, qkv, 3, 0).in, false, Q.data());
    lanes::pack(gr, group_planes(g, planes, task, qkv, 3, 1).in, true, Kp.data());
    lanes::pack(gr, group_planes(g, planes, task, qkv, 3, 2).in, true, Vp.data());
    lanes::pack(gr, group_planes(g, planes, task, gout, 1, 0).in, false, dO.data());
    pack_rel(g, planes, task, rel_rows, rows.data());
    pack_rel(g, planes, task, rel_cols, cols.data());
    for (int64_t l = 0; l < lanes::kLanes && task * lanes::kLanes + l < planes; ++l) {
      const int64_t plane = task * lanes::kLanes + l;
      const float *o = out + plane * g.d * HW, *go = gout + plane * g.d * HW;
      std::fill(Dl.begin(), Dl.end(), 0.0f);
      for (int64_t dd = 0; dd < g.d; ++dd)
        for (int64_t i = 0; i < HW; ++i) Dl[i] += o[dd * HW + i] * go[dd * HW + i];
      for (int64_t i = 0; i < HW; ++i) {
        D[i][l] = Dl[i];
        S[i][l] = lse[plane * HW + i];
      }
    }
    std::fill(dK.begin(), dK.end(), lanes::v8{});
    std::fill(dV.begin(), dV.end(), lanes::v8{});
    std::fill(dR.begin(), dR.end(), lanes::v8{});
    lanes::backward<K>(gr, g.border == kZero, Q.data(), Kp.data(), Vp.data(), rows.data(), cols.data(),
                       bias.data(), dO.data(), D.data(), S.data(), scale, dQ.data(), dK.data(), dV.data(),
                       dR.data(), Prow.data(), Grow.data());
    lanes::unpack(gr, dQ.data(), false, group_planes(g, planes, task, nullptr, 3, 0, gqkv).out);
    lanes::unpack(gr, dK.data(), true, group_planes(g, planes, task, nullptr, 3, 1, gqkv).out);
    lanes::unpack(gr, dV.data(), true, group_planes(g, planes, task, nullptr, 3, 2, gqkv).out);
    for (int64_t l = 0; l < lanes::kLanes && task * lanes::kLanes + l < planes; ++l)
      for (int64_t i = 0; i < 2 * g.T * g.d; ++i)
        grel_parts[(task * lanes::kLanes + l) * 2 * g.T * g.d + i] = dR[i][l];
  }
}

// Runs f(std::integral_constant<int, K>) for the vectorised window sizes; false if k is not one of them.
template <typename F>
bool with_vec_kernel(const Geometry& g, F f) {
  if (!g.regular) return false;
  switch (g.k) {
    case 3: f(std::integral_constant<int, 3>()); return true;
    case 5: f(std::integral_constant<int, 5>()); return true;
    case 7: f(std::integral_constant<int, 7>()); return true;
    case 9: f(std::integral_constant<int, 9>()); return true;
    default: return false;
  }
}

int64_t lane_groups(int64_t planes) { return (planes + lanes::kLanes - 1) / lanes::kLanes; }

// The lanes path where its window sizes apply (as the row path's), on maps of at least 4k x 4k, and with at
// least two groups of 8 planes per thread. Its scratch is 8 planes per thread (the row path's one), padded by
// k - 1 on each axis: on small maps the padding dominates, and with fewer groups than that the threads would
// hold most of the batch at once; there (and where it measured barely faster: 14 x 14 and 7 x 7) the row path
// runs. VISIONATTN_KERNEL_PATH=rows or lanes forces one, for comparisons and tests.
bool use_lanes(const Geometry& g, int64_t planes) {
  const bool windows = with_vec_kernel(g, [](auto) {});  // the window sizes both vectorised paths take
  const char* force = std::getenv("VISIONATTN_KERNEL_PATH");
  if (force && std::string(force) == "rows") return false;
  if (force && std::string(force) == "lanes") return windows;
  return windows && std::min(g.H, g.W) >= 4 * g.k && lane_groups(planes) >= 2 * at::get_num_threads();
}

// The lanes path for float tensors where use_lanes says so; false where it does not run.
template <typename T>
bool forward_lanes(const Geometry& g, int64_t planes, const T* qkv, const T* rr, const T* rc, double scale, T* out,
                   T* lse) {
  if constexpr (std::is_same_v<T, float>) {
    if (!use_lanes(g, planes)) return false;
    parallel_planes(lane_groups(planes), [&](TaskQueue& tasks) {
      with_vec_kernel(g, [&](auto K) {
        forward_groups<decltype(K)::value>(g, planes, qkv, rr, rc, static_cast<float>(scale), out, lse, tasks);
      });
    });
    return true;
  }
  return false;
}

template <typename T>
bool backward_lanes(const Geometry& g, int64_t planes, const T* qkv, const T* rr, const T* rc, const T* out,
                    const T* lse, const T* gout, double scale, T* gqkv, T* parts) {
  if constexpr (std::is_same_v<T, float>) {
    if (!use_lanes(g, planes)) return false;
    parallel_planes(lane_groups(planes), [&](TaskQueue& tasks) {
      with_vec_kernel(g, [&](auto K) {
        backward_groups<decltype(K)::value>(g, planes, qkv, rr, rc, out, lse, gout, static_cast<float>(scale), gqkv,
                                            parts, tasks);
      });
    });
    return true;
  }
  return false;
}

Geometry checked_geometry(const torch::Tensor& qkv, const torch::Tensor& rel_rows, const torch::Tensor& rel_cols,
                          int64_t heads, int64_t k, int64_t border) {
  TORCH_CHECK(qkv.dim() == 4 && qkv.is_contiguous() && qkv.device().is_cpu(),
              "qkv must be a contiguous (B, 3C, H, W) CPU tensor");
  TORCH_CHECK(k % 2 == 1 && k >= 1, "kernel_size must be odd, got ", k);
  TORCH_CHECK(border >= kMask && border <= kClamp, "border must be 0 (mask), 1 (zero) or 2 (clamp)");
  TORCH_CHECK(qkv.size(1) % (3 * heads) == 0, "qkv channels must be 3 * heads * d");
  const int64_t d = qkv.size(1) / (3 * heads);
  Geometry g = make_geometry(qkv.size(2), qkv.size(3), k, d, heads, border);
  for (const torch::Tensor* rel : {&rel_rows, &rel_cols}) {
    TORCH_CHECK(rel->is_contiguous() && rel->dim() == 3 && rel->size(0) == heads && rel->size(1) == g.T &&
                    rel->size(2) == d,
                "rel_rows and rel_cols must be contiguous (heads, T, d) tensors");
    TORCH_CHECK(rel->scalar_type() == qkv.scalar_type(), "rel_rows, rel_cols and qkv must share a dtype");
  }
  return g;
}

std::vector<torch::Tensor> local_attention_forward(torch::Tensor qkv, torch::Tensor rel_rows, torch::Tensor rel_cols,
                                                   int64_t heads, int64_t kernel_size, int64_t border, double scale) {
  const Geometry g = checked_geometry(qkv, rel_rows, rel_cols, heads, kernel_size, border);
  const int64_t B = qkv.size(0);
  auto out = torch::empty({B, heads * g.d, g.H, g.W}, qkv.options());
  auto lse = torch::empty({B, heads, g.H, g.W}, qkv.options());
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "local_attention_forward", [&] {
    const scalar_t* q = qkv.data_ptr<scalar_t>();
    const scalar_t* rr = rel_rows.data_ptr<scalar_t>();
    const scalar_t* rc = rel_cols.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* s = lse.data_ptr<scalar_t>();
    const int64_t planes = B * heads;
    if (forward_lanes(g, planes, q, rr, rc, scale, o, s)) return;
    parallel_planes(planes, [&](TaskQueue& tasks) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        const bool done = with_vec_kernel(g, [&](auto K) {
          forward_planes_vec<decltype(K)::value>(g, q, rr, rc, static_cast<float>(scale), o, s, tasks);
        });
        if (done) return;
      }
      forward_planes<scalar_t>(g, q, rr, rc, static_cast<scalar_t>(scale), o, s, tasks);
    });
  });
  return {out, lse};
}

std::vector<torch::Tensor> local_attention_backward(torch::Tensor grad_out, torch::Tensor qkv, torch::Tensor rel_rows,
                                                    torch::Tensor rel_cols, torch::Tensor out, torch::Tensor lse,
                                                    int64_t heads, int64_t kernel_size, int64_t border,
                                                    double scale) {
  const Geometry g = checked_geometry(qkv, rel_rows, rel_cols, heads, kernel_size, border);
  TORCH_CHECK(grad_out.is_contiguous() && out.is_contiguous() && lse.is_contiguous(),
              "grad_out, out and lse must be contiguous");
  TORCH_CHECK(grad_out.sizes() == out.sizes() && grad_out.scalar_type() == qkv.scalar_type(),
              "grad_out must match the output");
  const int64_t B = qkv.size(0);
  auto gqkv = torch::empty_like(qkv);
  auto parts = torch::zeros({B, heads, 2, g.T, g.d}, qkv.options());  // per plane: d rel_rows, then d rel_cols
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "local_attention_backward", [&] {
    const scalar_t* rr = rel_rows.data_ptr<scalar_t>();
    const scalar_t* rc = rel_cols.data_ptr<scalar_t>();
    const int64_t planes = B * heads;
    if (backward_lanes(g, planes, qkv.data_ptr<scalar_t>(), rr, rc, out.data_ptr<scalar_t>(),
                       lse.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(), scale, gqkv.data_ptr<scalar_t>(),
                       parts.data_ptr<scalar_t>()))
      return;
    parallel_planes(planes, [&](TaskQueue& tasks) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        const bool done = with_vec_kernel(g, [&](auto K) {
          backward_planes_vec<decltype(K)::value>(g, qkv.data_ptr<float>(), rr, rc, out.data_ptr<float>(),
                                                  lse.data_ptr<float>(), grad_out.data_ptr<float>(),
                                                  static_cast<float>(scale), gqkv.data_ptr<float>(),
                                                  parts.data_ptr<float>(), tasks);
        });
        if (done) return;
      }
      backward_planes<scalar_t>(g, qkv.data_ptr<scalar_t>(), rr, rc, out.data_ptr<scalar_t>(),
                                lse.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
                                static_cast<scalar_t>(scale), gqkv.data_ptr<scalar_t>(),
                                parts.data_ptr<scalar_t>(), tasks);
    });
  });
  const auto grel = parts.sum(0);
  return {gqkv, grel.select(1, 0).clone(), grel.select(1, 1).clone()};  // outputs of a custom op must not alias
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scratch_peak_bytes", [](bool reset) {
    ScratchStats& s = scratch_stats();
    const int64_t peak = s.peak.load();
    if (reset) s.peak = s.now.load();
    return peak;
  }, "the most bytes of kernel scratch held at once since the last reset; reset=True starts a new count");
  m.def("forward", &local_attention_forward, "fused local attention forward: (out, lse)");
  m.def("backward", &local_attention_backward,
        "fused local attention backward: (grad_qkv, grad_rel_rows, grad_rel_cols)");
}
