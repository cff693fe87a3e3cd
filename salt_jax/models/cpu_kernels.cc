// XLA:CPU FFI kernels of salt_jax (cpu_kernels.py builds, registers and calls them), float32, NHWC.
//
// Grouped 3x3 convolution, padding 1: forward, input gradient, kernel gradient. XLA:CPU runs a
// grouped convolution as a generic loop and its kernel gradient through copies of shifted inputs;
// these loops keep blocks of output channels in vector registers. Two forms, chosen by the
// channels per group (cpg):
//   shift (cpg 1-8):   y[c] += x[c + d] * wd[d][c] for d in (-cpg, cpg), wd zero outside c's
//                      group: every operand a contiguous channel vector, (2 cpg - 1) / cpg the work
//                      (a neighbouring group's inf or NaN, times that zero, reaches c as NaN);
//   bcast (cpg 16-64): a 16-lane vector of output channels lies in one group, so
//                      y[lanes] += x[group input channel] (broadcast) * w[ci][lanes].
// The input gradient is the same loop over dy with each group's kernel transposed, gathering the
// output pixels that read each input pixel (any stride).
//
// The kernel gradient of a dense convolution (1x1 and 3x3 in the UNet), x and dy read in place, and
// the forward of a dense stride-1 "same" convolution, x and the kernel read in place (below).
#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int CB = 64;  // channels per block: a multiple of every supported cpg
constexpr int NV = CB / 16;
constexpr int P = 4;  // output pixels per register block (P * NV accumulators)

typedef float v16 __attribute__((vector_size(64), aligned(4)));
inline v16 ld(const float* p) { return *reinterpret_cast<const v16*>(p); }
inline void st(float* p, v16 v) { *reinterpret_cast<v16*>(p) = v; }

struct Geo {
  int n, hs, ws, c;  // source (x, or dy for the input gradient): images, height, width, channels
  int ho, wo;        // output rows and columns
  int stride, cpg;
  bool shift() const { return cpg < 16; }
  int halo() const { return shift() ? cpg - 1 : 0; }
  int lw() const { return CB + 2 * halo(); }  // floats per staged pixel
  int nd() const { return shift() ? 2 * cpg - 1 : cpg; }  // weight rows per tap
};

int cpu_count() {  // the CPUs this process may use
  cpu_set_t set;
  return sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
}

// Runs f(begin, end) over [0, tasks), split evenly over cpu_count() threads.
template <class F>
void parallel_for(int tasks, F f) {
  int nt = std::max(1, std::min(cpu_count(), tasks));
  std::vector<std::thread> threads;
  for (int t = 1; t < nt; ++t) threads.emplace_back(f, tasks * t / nt, tasks * (t + 1) / nt);
  f(0, tasks / nt);
  for (auto& t : threads) t.join();
}

// Copies source row `row` of image `img`, channels [c0 - halo, c0 + CB + halo), into ws + 2
// staged pixels (one zero pixel each side); zeros outside the image and the channels.
void stage_row(const float* src, const Geo& g, int img, int row, int c0, float* dst) {
  int lw = g.lw(), lo = c0 - g.halo(), hi = lo + lw;
  std::memset(dst, 0, lw * 4);
  std::memset(dst + (g.ws + 1) * lw, 0, lw * 4);
  int a = std::max(lo, 0), b = std::min(hi, g.c);
  for (int j = 0; j < g.ws; ++j) {
    float* d = dst + (j + 1) * lw;
    const float* s = src + ((int64_t)(img * g.hs + row) * g.ws + j) * g.c;
    if (a > lo) std::memset(d, 0, (a - lo) * 4);
    std::memcpy(d + (a - lo), s + a, (b - a) * 4);
    if (hi > b) std::memset(d + (b - lo), 0, (hi - b) * 4);
  }
}

// acc[p] += sum over weight rows r of x_p(r) * w[r], for one tap: xs[p] is pixel p's staged channels.
inline void tap_fma(const Geo& g, const float* const* xs, const float* w, int c0, v16 (&acc)[P][NV]) {
  if (g.shift()) {
    for (int d = 0; d < g.nd(); ++d) {
      const float* wr = w + (int64_t)d * g.c + c0;
      v16 wv[NV];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) wv[j] = ld(wr + 16 * j);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[p][j] += ld(xs[p] + d + 16 * j) * wv[j];
    }
  } else {
    for (int ci = 0; ci < g.cpg; ++ci) {
      const float* wr = w + (int64_t)ci * g.c + c0;
      v16 wv[NV];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) wv[j] = ld(wr + 16 * j);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[p][j] += xs[p][(16 * j) / g.cpg * g.cpg + ci] * wv[j];
    }
  }
}

// Output rows [r0, r1) of a convolution. transposed = false: y = conv(x, w) with the given stride.
// transposed = true: the input gradient, y = dx from src = dy, w already transposed per group.
void conv_rows(const float* src, const float* w, float* y, const Geo& g, bool transposed, int r0, int r1) {
  int lw = g.lw(), sw = g.ws + 2, s = g.stride;
  std::vector<float> rows(3 * sw * lw);
  for (int r = r0; r < r1; ++r) {
    int img = r / g.ho, orow = r % g.ho;
    int src_row[3];
    for (int kh = 0; kh < 3; ++kh) {
      int num = transposed ? orow + 1 - kh : orow * s + kh - 1;
      bool ok = transposed ? num % s == 0 : true;
      int sr = transposed ? num / s : num;
      src_row[kh] = ok && num >= 0 && sr < g.hs ? sr : -1;
    }
    float* yrow = y + (int64_t)r * g.wo * g.c;
    for (int c0 = 0; c0 < g.c; c0 += CB) {
      for (int kh = 0; kh < 3; ++kh)
        if (src_row[kh] >= 0) stage_row(src, g, img, src_row[kh], c0, rows.data() + kh * sw * lw);
      int phases = transposed ? s : 1;
      for (int ph = 0; ph < phases; ++ph) {
        int cols = transposed ? (g.wo - ph + s - 1) / s : g.wo;  // output columns ph + s * b
        for (int b0 = 0; b0 < cols; b0 += P) {
          int np = std::min(P, cols - b0);
          v16 acc[P][NV] = {};
          for (int kh = 0; kh < 3; ++kh) {
            if (src_row[kh] < 0) continue;
            const float* row = rows.data() + kh * sw * lw;
            for (int kw = 0; kw < 3; ++kw) {
              int first, step;  // staged index of pixel p: first + p * step
              if (transposed) {
                int num = ph + 1 - kw;
                if (((num % s) + s) % s) continue;
                first = b0 + num / s + 1, step = 1;
              } else {
                first = b0 * s + kw, step = s;
              }
              const float* xs[P];
              for (int p = 0; p < P; ++p) xs[p] = row + (p < np ? first + p * step : 0) * lw;
              tap_fma(g, xs, w + (int64_t)(kh * 3 + kw) * g.nd() * g.c, c0, acc);
            }
          }
          for (int p = 0; p < np; ++p) {
            int col = transposed ? ph + s * (b0 + p) : b0 + p;
            std::memcpy(yrow + (int64_t)col * g.c + c0, acc[p], CB * 4);
          }
        }
      }
    }
  }
}

// Kernel gradient of rows [r0, r1) of one image into acc (weight rows as tap_fma reads them).
void kernel_grad_rows(const float* x, const float* dy, float* acc, const Geo& g, int r0, int r1) {
  int lw = g.lw(), sw = g.ws + 2, s = g.stride, nd = g.nd();
  std::vector<float> rows(3 * sw * lw);
  const float zero[CB] = {};
  for (int r = r0; r < r1; ++r) {
    int img = r / g.ho, orow = r % g.ho;
    const float* dyrow = dy + (int64_t)r * g.wo * g.c;
    for (int c0 = 0; c0 < g.c; c0 += CB) {
      for (int kh = 0; kh < 3; ++kh) {
        int sr = orow * s + kh - 1;
        if (sr >= 0 && sr < g.hs) stage_row(x, g, img, sr, c0, rows.data() + kh * sw * lw);
      }
      for (int b0 = 0; b0 < g.wo; b0 += P) {
        int np = std::min(P, g.wo - b0);
        v16 dv[P][NV];
        for (int p = 0; p < P; ++p) {
          const float* d = p < np ? dyrow + (int64_t)(b0 + p) * g.c + c0 : zero;
#pragma GCC unroll 8
          for (int j = 0; j < NV; ++j) dv[p][j] = ld(d + 16 * j);
        }
        for (int kh = 0; kh < 3; ++kh) {
          int sr = orow * s + kh - 1;
          if (sr < 0 || sr >= g.hs) continue;
          const float* row = rows.data() + kh * sw * lw;
          for (int kw = 0; kw < 3; ++kw) {
            const float* xs[P];
            for (int p = 0; p < P; ++p) xs[p] = row + (p < np ? b0 * s + kw + p * s : 0) * lw;
            float* a = acc + (int64_t)(kh * 3 + kw) * nd * g.c + c0;
            for (int d = 0; d < nd; ++d) {
              v16 av[NV];
#pragma GCC unroll 8
              for (int j = 0; j < NV; ++j) av[j] = ld(a + (int64_t)d * g.c + 16 * j);
#pragma GCC unroll 8
              for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
                for (int j = 0; j < NV; ++j)
                  av[j] += (g.shift() ? ld(xs[p] + d + 16 * j)
                                      : v16{} + xs[p][(16 * j) / g.cpg * g.cpg + d]) * dv[p][j];
#pragma GCC unroll 8
              for (int j = 0; j < NV; ++j) st(a + (int64_t)d * g.c + 16 * j, av[j]);
            }
          }
        }
      }
    }
  }
}

// w (3, 3, cpg, c) -> the rows tap_fma reads; transpose: swap input and output channels per group.
std::vector<float> prepare_kernel(const float* w, const Geo& g, bool transpose) {
  int nd = g.nd(), halo = g.halo();
  std::vector<float> out((size_t)9 * nd * g.c, 0.f);
  for (int t = 0; t < 9; ++t)
    for (int c = 0; c < g.c; ++c) {
      int base = c / g.cpg * g.cpg, lane = c % g.cpg;
      for (int ci = 0; ci < g.cpg; ++ci) {
        float v = transpose ? w[(t * g.cpg + lane) * g.c + base + ci] : w[(t * g.cpg + ci) * g.c + c];
        int row = g.shift() ? ci - lane + halo : ci;
        out[((size_t)t * nd + row) * g.c + c] = v;
      }
    }
  return out;
}

ffi::Error check(const Geo& g) {
  if (g.c % CB || CB % g.cpg || (g.cpg > 8 && g.cpg % 16))
    return ffi::Error::InvalidArgument("grouped_conv: unsupported channels per group / channels");
  return ffi::Error::Success();
}

// out = conv(src = x, w) (transposed = false) or the input gradient out = dx from src = dy
// (transposed = true): the same loops, the geometry from src's and out's shapes.
ffi::Error Conv(ffi::Buffer<ffi::F32> src, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> out, int64_t stride,
                bool transposed) {
  auto sd = src.dimensions(), od = out->dimensions();
  Geo g{(int)sd[0], (int)sd[1], (int)sd[2], (int)sd[3], (int)od[1], (int)od[2], (int)stride, (int)w.dimensions()[2]};
  if (auto e = check(g); e.failure()) return e;
  auto wp = prepare_kernel(w.typed_data(), g, transposed);
  parallel_for(g.n * g.ho, [&](int a, int b) { conv_rows(src.typed_data(), wp.data(), out->typed_data(), g, transposed, a, b); });
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y, int64_t stride) {
  return Conv(x, w, y, stride, false);
}

ffi::Error InputGrad(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx, int64_t stride) {
  return Conv(dy, w, dx, stride, true);
}

// dw (n, 3, 3, cpg, c): each image's kernel gradient (summed by the caller, so that the call
// partitions along the batch like the other two); threads take row ranges of single images.
ffi::Error KernelGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw, int64_t stride) {
  auto xd = x.dimensions(), dd = dy.dimensions();
  Geo g{(int)xd[0], (int)xd[1], (int)xd[2], (int)xd[3], (int)dd[1], (int)dd[2], (int)stride, (int)dw->dimensions()[3]};
  if (auto e = check(g); e.failure()) return e;
  int parts = std::max(1, std::min(g.ho, (cpu_count() + g.n - 1) / g.n));  // row ranges per image
  size_t size = (size_t)9 * g.nd() * g.c;
  std::vector<float> acc(size * g.n * parts, 0.f);
  parallel_for(g.n * parts, [&](int a, int b) {
    for (int t = a; t < b; ++t) {
      int img = t / parts, part = t % parts;
      int r0 = img * g.ho + g.ho * part / parts, r1 = img * g.ho + g.ho * (part + 1) / parts;
      kernel_grad_rows(x.typed_data(), dy.typed_data(), acc.data() + size * t, g, r0, r1);
    }
  });
  float* out = dw->typed_data();
  int cpg = g.cpg, halo = g.halo(), nd = g.nd();
  for (int img = 0; img < g.n; ++img)
    for (int t = 0; t < 9; ++t)
      for (int ci = 0; ci < cpg; ++ci)
        for (int c = 0; c < g.c; ++c) {
          size_t at = ((size_t)t * nd + (g.shift() ? ci - c % cpg + halo : ci)) * g.c + c;
          float v = 0.f;
          for (int part = 0; part < parts; ++part) v += acc[size * (img * parts + part) + at];
          out[(((size_t)img * 9 + t) * cpg + ci) * g.c + c] = v;
        }
  return ffi::Error::Success();
}

// The kernel gradient of a dense k x k convolution (stride s, any padding), k = 1 included:
// dw[a][b] (ci, co) = sum over output pixels of x(pixel's tap (a, b) input) (ci) dy(pixel) (co),
// reading x and dy where they lie. XLA:CPU computes it as one dot per tap over a shifted copy of
// x, and inside a train step feeds each dot a transposed copy (recomputing the BatchNorm backward
// into it). Tiles of RI rows x V vectors of dw stay in registers while a chunk of >= MC pixels
// (row segments, in L2) streams through.
constexpr int RI = 4, MC = 256;

struct Segment {  // len output pixels of one row: dy at d (contiguous), x at x (every xstep floats)
  const float* x;
  const float* d;
  int len;
};

template <int V>
void tn_tile(const Segment* seg, int nseg, int xstep, float* dw, int co, int i, int o) {
  v16 acc[RI][V];
#pragma GCC unroll 4
  for (int r = 0; r < RI; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) acc[r][j] = ld(dw + (int64_t)(i + r) * co + o + 16 * j);
  for (int q = 0; q < nseg; ++q)
    for (int m = 0; m < seg[q].len; ++m) {
      const float* xr = seg[q].x + (int64_t)m * xstep + i;
      v16 d[V];
#pragma GCC unroll 4
      for (int j = 0; j < V; ++j) d[j] = ld(seg[q].d + (int64_t)m * co + o + 16 * j);
#pragma GCC unroll 4
      for (int r = 0; r < RI; ++r)
#pragma GCC unroll 4
        for (int j = 0; j < V; ++j) acc[r][j] += xr[r] * d[j];
    }
#pragma GCC unroll 4
  for (int r = 0; r < RI; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) st(dw + (int64_t)(i + r) * co + o + 16 * j, acc[r][j]);
}

struct Dense {
  int n, h, w, ci, ho, wo, co, k, stride, top, left;
};

// Calls f(std::integral_constant<int, V>()) for v = V in 1..4 vectors of 16 output channels: the
// tile functions take V as a template argument, so that their accumulators stay in registers.
template <class F>
void by_vectors(int v, F f) {
  switch (v) {
    case 4: f(std::integral_constant<int, 4>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 1: f(std::integral_constant<int, 1>()); break;
  }
}

// Rows [i0, i1) (multiples of RI) of every tap's dw.
void dense_kernel_grad_rows(const float* x, const float* dy, float* dw, const Dense& g, int i0, int i1) {
  int s = g.stride;
  std::vector<Segment> seg;
  for (int a = 0; a < g.k; ++a)
    for (int b = 0; b < g.k; ++b) {
      float* dwt = dw + (int64_t)(a * g.k + b) * g.ci * g.co;
      for (int i = i0; i < i1; ++i) std::memset(dwt + (int64_t)i * g.co, 0, g.co * 4);
      // output columns whose tap-b input column (ow * s + b - left) lies inside the image
      int first = std::max(0, (g.left - b + s - 1) / s), last = std::min(g.wo, (g.w - 1 + g.left - b) / s + 1);
      if (g.w - 1 + g.left - b < 0 || first >= last) continue;
      auto flush = [&] {
        for (int i = i0; i < i1; i += RI)
          for (int o = 0; o < g.co; o += 64)
            by_vectors(std::min(4, (g.co - o) / 16),
                       [&](auto v) { tn_tile<decltype(v)::value>(seg.data(), seg.size(), s * g.ci, dwt, g.co, i, o); });
        seg.clear();
      };
      int pixels = 0;
      for (int img = 0; img < g.n; ++img)
        for (int oh = 0; oh < g.ho; ++oh) {
          int ih = oh * s + a - g.top;
          if (ih < 0 || ih >= g.h) continue;
          seg.push_back({x + ((int64_t)(img * g.h + ih) * g.w + first * s + b - g.left) * g.ci,
                         dy + ((int64_t)(img * g.ho + oh) * g.wo + first) * g.co, last - first});
          if ((pixels += last - first) >= MC) flush(), pixels = 0;
        }
      if (!seg.empty()) flush();
    }
}

// dw (k, k, ci, co) from x (n, h, w, ci) and dy (n, ho, wo, co); attributes stride, top, left.
ffi::Error DenseKernelGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                           int64_t stride, int64_t top, int64_t left) {
  auto xd = x.dimensions(), dd = dy.dimensions(), wd = dw->dimensions();
  Dense g{(int)xd[0], (int)xd[1], (int)xd[2], (int)xd[3], (int)dd[1], (int)dd[2], (int)dd[3], (int)wd[0],
          (int)stride, (int)top, (int)left};
  if (g.ci % RI || g.co % 16)
    return ffi::Error::InvalidArgument("dense_kernel_grad: channels must be multiples of 4 (in) and 16 (out)");
  parallel_for(g.ci / RI, [&](int a, int b) { dense_kernel_grad_rows(x.typed_data(), dy.typed_data(), dw->typed_data(), g, a * RI, b * RI); });
  return ffi::Error::Success();
}

// The forward of a dense k x k convolution, stride 1, padding (k - 1) / 2 on every side (odd k):
// y(pixel)(co) = sum over taps (a, b) and ci of x(the pixel's tap input)(ci) w[a][b](ci, co), x and
// w read where they lie. XLA's tap matmuls copy each tap of the kernel every call (~70 ms of the
// SaltUNet-50's inference for the decoder's kernels that outweigh their maps); im2col would copy
// the input nine times instead. Tiles of R pixels x V vectors of y stay in registers while a block
// of KC input channels of one tap (KC x 64 weights, in L2) streams through.
constexpr int KC = 256;

template <int R, int V>
void nn_tile(const float* x, int ci, const float* w, int co, float* y, int c0, int c1, int o) {
  v16 acc[R][V];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) acc[r][j] = ld(y + (int64_t)r * co + o + 16 * j);
  for (int i = c0; i < c1; ++i) {
    v16 wv[V];
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) wv[j] = ld(w + (int64_t)i * co + o + 16 * j);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      float xv = x[(int64_t)r * ci + i];
#pragma GCC unroll 4
      for (int j = 0; j < V; ++j) acc[r][j] += xv * wv[j];
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) st(y + (int64_t)r * co + o + 16 * j, acc[r][j]);
}

template <int V>
void nn_row(const float* x, int ci, const float* w, int co, float* y, int len, int c0, int c1, int o) {
  int p = 0;
  for (; p + P <= len; p += P) nn_tile<P, V>(x + (int64_t)p * ci, ci, w, co, y + (int64_t)p * co, c0, c1, o);
  switch (len - p) {
    case 3: nn_tile<3, V>(x + (int64_t)p * ci, ci, w, co, y + (int64_t)p * co, c0, c1, o); break;
    case 2: nn_tile<2, V>(x + (int64_t)p * ci, ci, w, co, y + (int64_t)p * co, c0, c1, o); break;
    case 1: nn_tile<1, V>(x + (int64_t)p * ci, ci, w, co, y + (int64_t)p * co, c0, c1, o); break;
  }
}

// Output rows [r0, r1) of the n * h rows of y (n, h, w, co), from x (n, h, w, ci) and w (k, k, ci, co).
void dense_forward_rows(const float* x, const float* w, float* y, const Dense& g, int r0, int r1) {
  std::memset(y + (int64_t)r0 * g.w * g.co, 0, (int64_t)(r1 - r0) * g.w * g.co * 4);
  for (int c0 = 0; c0 < g.ci; c0 += KC) {
    int c1 = std::min(g.ci, c0 + KC);
    for (int a = 0; a < g.k; ++a)
      for (int b = 0; b < g.k; ++b) {
        const float* wt = w + (int64_t)(a * g.k + b) * g.ci * g.co;
        // output columns whose tap-b input column (ow + b - left) lies inside the image
        int first = std::max(0, g.left - b), last = std::min(g.w, g.w + g.left - b);
        if (first >= last) continue;
        for (int o = 0; o < g.co; o += 64)
          for (int row = r0; row < r1; ++row) {
            int img = row / g.h, ih = row % g.h + a - g.top;
            if (ih < 0 || ih >= g.h) continue;
            const float* xr = x + ((int64_t)(img * g.h + ih) * g.w + first + b - g.left) * g.ci;
            float* yr = y + ((int64_t)row * g.w + first) * g.co;
            by_vectors(std::min(4, (g.co - o) / 16),
                       [&](auto v) { nn_row<decltype(v)::value>(xr, g.ci, wt, g.co, yr, last - first, c0, c1, o); });
          }
      }
  }
}

// y (n, h, w, co) from x (n, h, w, ci) and w (k, k, ci, co); attribute stride (must be 1).
ffi::Error DenseConvForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                            int64_t stride) {
  auto xd = x.dimensions(), wd = w.dimensions();
  int pad = (int)(wd[0] - 1) / 2;
  Dense g{(int)xd[0], (int)xd[1], (int)xd[2], (int)xd[3], (int)xd[1], (int)xd[2], (int)wd[3], (int)wd[0], 1, pad, pad};
  if (stride != 1 || wd[0] != wd[1] || wd[0] % 2 == 0 || wd[2] != xd[3] || g.co % 16)
    return ffi::Error::InvalidArgument("dense_conv_forward: stride 1, an odd square kernel, out channels a multiple of 16");
  parallel_for(g.n * g.h, [&](int a, int b) { dense_forward_rows(x.typed_data(), w.typed_data(), y->typed_data(), g, a, b); });
  return ffi::Error::Success();
}

}  // namespace

#define BUF ffi::Buffer<ffi::F32>
XLA_FFI_DEFINE_HANDLER_SYMBOL(SaltGroupedConvForward, Forward,
                              ffi::Ffi::Bind().Arg<BUF>().Arg<BUF>().Ret<BUF>().Attr<int64_t>("stride"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SaltGroupedConvInputGrad, InputGrad,
                              ffi::Ffi::Bind().Arg<BUF>().Arg<BUF>().Ret<BUF>().Attr<int64_t>("stride"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SaltGroupedConvKernelGrad, KernelGrad,
                              ffi::Ffi::Bind().Arg<BUF>().Arg<BUF>().Ret<BUF>().Attr<int64_t>("stride"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SaltDenseKernelGrad, DenseKernelGrad,
                              ffi::Ffi::Bind().Arg<BUF>().Arg<BUF>().Ret<BUF>().Attr<int64_t>("stride")
                                  .Attr<int64_t>("top").Attr<int64_t>("left"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SaltDenseConvForward, DenseConvForward,
                              ffi::Ffi::Bind().Arg<BUF>().Arg<BUF>().Ret<BUF>().Attr<int64_t>("stride"));
