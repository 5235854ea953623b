// Fused kernels of the training step outside the analog layer (src/train/step_ops): the causal
// softmax of attention and its gradient, the per-row distillation KL and its gradient, and
// AdamW's three in-place updates. Built from candle's generic ops these were ~20 launches and
// as many passes over the (batch, heads, tokens, tokens) scores or the (tokens, vocab) logits.
// The CPU twins are in src/train/step_ops/cpu.rs; tests compare the two. f32 only (the student
// runs in f32); compiled with --fmad=false like the other kernel files.

#include <stdint.h>

typedef long long i64;

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- causal softmax: one warp per row of s keys ---------------------------------------------
// Row r is query r % t, which sees keys 0 ..= r % t + off (off = s - t: the cached keys).

extern "C" __global__ void causal_softmax_f32(const float* x, float* y, i64 rows, int t, int s,
                                              int off, float scale) {
  i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float* xr = x + row * s;
  float* yr = y + row * s;
  int last = (int)(row % t) + off;  // last visible key
  float m = -INFINITY;
  for (int j = lane; j <= last; j += 32) m = fmaxf(m, xr[j] * scale);
  m = warp_max(m);
  float z = 0.f;
  for (int j = lane; j <= last; j += 32) z += expf(xr[j] * scale - m);
  z = warp_sum(z);
  for (int j = lane; j < s; j += 32) yr[j] = j <= last ? expf(xr[j] * scale - m) / z : 0.f;
}

// dx = scale * y * (g - sum_k g_k y_k)
extern "C" __global__ void causal_softmax_grad_f32(const float* y, const float* g, float* dx,
                                                   i64 rows, int s, float scale) {
  i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float* yr = y + row * s;
  const float* gr = g + row * s;
  float d = 0.f;
  for (int j = lane; j < s; j += 32) d += gr[j] * yr[j];
  d = warp_sum(d);
  for (int j = lane; j < s; j += 32) dx[row * s + j] = scale * (yr[j] * (gr[j] - d));
}

// ---- distillation KL: one block of 1024 threads per row of v logits -------------------------

// (max, sum of exp(a - max)) pairs merged: the online log-sum-exp.
__device__ __forceinline__ void lse_merge(float& m, float& z, float m2, float z2) {
  float nm = fmaxf(m, m2);
  if (nm == -INFINITY) return;
  z = z * expf(m - nm) + z2 * expf(m2 - nm);
  m = nm;
}

// Block-wide merge of each thread's (m, z); every thread gets the result.
__device__ void block_lse(float& m, float& z) {
  __shared__ float sm[32], sz[32];
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), z2 = __shfl_xor_sync(0xffffffffu, z, o);
    lse_merge(m, z, m2, z2);
  }
  int lane = threadIdx.x % 32, w = threadIdx.x / 32, nw = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) { sm[w] = m; sz[w] = z; }
  __syncthreads();
  m = -INFINITY;
  z = 0.f;
  for (int k = 0; k < nw; k++) lse_merge(m, z, sm[k], sz[k]);
}

__device__ float block_sum(float v) {
  __shared__ float sv[32];
  v = warp_sum(v);
  int lane = threadIdx.x % 32, w = threadIdx.x / 32, nw = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) sv[w] = v;
  __syncthreads();
  float s = 0.f;
  for (int k = 0; k < nw; k++) s += sv[k];
  return s;
}

// Log-sum-exp of a = x * inv_t over one row, for the teacher and the student at once.
__device__ void row_lse(const float* tr, const float* sr, int v, float inv_t, float& lt,
                        float& ls) {
  float mt = -INFINITY, zt = 0.f, ms = -INFINITY, zs = 0.f;
  for (int j = threadIdx.x; j < v; j += blockDim.x) {
    lse_merge(mt, zt, tr[j] * inv_t, 1.f);
    lse_merge(ms, zs, sr[j] * inv_t, 1.f);
  }
  block_lse(mt, zt);
  block_lse(ms, zs);
  lt = mt + logf(zt);
  ls = ms + logf(zs);
}

// kl[r] = sum_j p_j (log p_j - log q_j), p = softmax(t / T), q = softmax(s / T).
extern "C" __global__ void kl_rows_f32(const float* t, const float* s, float* kl, int v,
                                       float inv_t) {
  i64 row = blockIdx.x;
  const float* tr = t + row * v;
  const float* sr = s + row * v;
  float lt, ls;
  row_lse(tr, sr, v, inv_t, lt, ls);
  float acc = 0.f;
  for (int j = threadIdx.x; j < v; j += blockDim.x) {
    float a = tr[j] * inv_t - lt, b = sr[j] * inv_t - ls;
    acc += expf(a) * (a - b);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) kl[row] = acc;
}

// ds[r, j] = g[r] * inv_t * (q_j - p_j)
extern "C" __global__ void kl_grad_f32(const float* t, const float* s, const float* g, float* ds,
                                       int v, float inv_t) {
  i64 row = blockIdx.x;
  const float* tr = t + row * v;
  const float* sr = s + row * v;
  float lt, ls;
  row_lse(tr, sr, v, inv_t, lt, ls);
  float k = g[row] * inv_t;
  for (int j = threadIdx.x; j < v; j += blockDim.x)
    ds[row * v + j] = k * (expf(sr[j] * inv_t - ls) - expf(tr[j] * inv_t - lt));
}

// ---- AdamW, in place; each line is one of the generic path's f32 operations -----------------

// m = m * b1 + gs * (1 - b1), gs = g * scale (the clip's factor)
extern "C" __global__ void adam_m_f32(float* m, const float* g, i64 n, float b1, float one_b1,
                                      float scale) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
    m[i] = m[i] * b1 + (g[i] * scale) * one_b1;
}

// v = v * b2 + gs^2 * (1 - b2)
extern "C" __global__ void adam_v_f32(float* v, const float* g, i64 n, float b2, float one_b2,
                                      float scale) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
    float gs = g[i] * scale;
    float gg = gs * gs;
    v[i] = v[i] * b2 + gg * one_b2;
  }
}

// w = w * keep - ((m * ic1) / (sqrt(v * ic2) + eps)) * lr
extern "C" __global__ void adam_w_f32(float* w, const float* m, const float* v, i64 n, float keep,
                                      float ic1, float ic2, float eps, float lr) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
    float den = sqrtf(v[i] * ic2) + eps;
    float u = (m[i] * ic1) / den;
    w[i] = w[i] * keep - u * lr;
  }
}

// ---- RMSNorm: one warp per row of n features --------------------------------------------------
// y = (x / sqrt(mean(x^2) + eps)) * w, as candle's generic composition rounds it.

extern "C" __global__ void rms_norm_f32(const float* x, const float* w, float* y, i64 rows, int n,
                                        float eps) {
  i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float* xr = x + row * n;
  float ss = 0.f;
  for (int j = lane; j < n; j += 32) ss += xr[j] * xr[j];
  float d = sqrtf(warp_sum(ss) / (float)n + eps);
  for (int j = lane; j < n; j += 32) y[row * n + j] = (xr[j] / d) * w[j];
}

// out[0] = dx = (w g) / d - x / (n d^3) * sum_j(w_j g_j x_j); out[1] = g * x / d (summed over
// rows by the caller for dw).
extern "C" __global__ void rms_norm_grad_f32(const float* x, const float* w, const float* g,
                                             float* out, i64 rows, int n, float eps) {
  i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float* xr = x + row * n;
  const float* gr = g + row * n;
  float ss = 0.f, dot = 0.f;
  for (int j = lane; j < n; j += 32) {
    ss += xr[j] * xr[j];
    dot += w[j] * gr[j] * xr[j];
  }
  float d = sqrtf(warp_sum(ss) / (float)n + eps);
  dot = warp_sum(dot);
  float k = dot / ((float)n * d * d * d);
  float* dx = out + row * n;
  float* gx = out + rows * n + row * n;
  for (int j = lane; j < n; j += 32) {
    dx[j] = (w[j] * gr[j]) / d - xr[j] * k;
    gx[j] = gr[j] * (xr[j] / d);
  }
}

// ---- weight clipping: one warp per output channel (row of n), in place -----------------------
// w = clamp(w, -alpha * std, alpha * std), std with n - 1 in the denominator.

extern "C" __global__ void clip_rows_f32(float* w, i64 rows, int n, float alpha) {
  i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (row >= rows) return;
  float* wr = w + row * n;
  float s = 0.f;
  for (int j = lane; j < n; j += 32) s += wr[j];
  float mean = warp_sum(s) / (float)n;
  float ss = 0.f;
  for (int j = lane; j < n; j += 32) {
    float d = wr[j] - mean;
    ss += d * d;
  }
  float lim = sqrtf(warp_sum(ss) / (float)max(n - 1, 1)) * alpha;
  for (int j = lane; j < n; j += 32) wr[j] = fmaxf(fminf(wr[j], lim), -lim);
}

// ---- SwiGLU: y = silu(a) * b, element-wise ----------------------------------------------------

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

extern "C" __global__ void swiglu_f32(const float* a, const float* b, float* y, i64 n) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
    y[i] = a[i] * sigmoid(a[i]) * b[i];
}

// out[0..n] = da = g * b * silu'(a), out[n..2n] = db = g * silu(a);
// silu'(a) = s + a * s * (1 - s) with s = sigmoid(a).
extern "C" __global__ void swiglu_grad_f32(const float* a, const float* b, const float* g,
                                           float* out, i64 n) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
    float s = sigmoid(a[i]);
    out[i] = g[i] * b[i] * (s + a[i] * s * (1.f - s));
    out[n + i] = g[i] * (a[i] * s);
  }
}

// ---- rotary embedding of x (rows of d = 2h; row r is token r % t), and its inverse ------------
// y[i] = x[i] c - x[i + h] s, y[i + h] = x[i + h] c + x[i] s with c, s = cos, sin[token, i];
// `inverse` rotates by -angle (the backward).

extern "C" __global__ void rope_f32(const float* x, const float* cs, const float* sn, float* y,
                                    i64 rows, int t, int h, int inverse) {
  i64 n = rows * h;
  for (i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (i64)gridDim.x * blockDim.x) {
    i64 r = k / h;
    int i = (int)(k % h);
    int tok = (int)(r % t);
    float c = cs[tok * h + i], s = sn[tok * h + i];
    if (inverse) s = -s;
    const float* xr = x + r * 2 * h;
    float x1 = xr[i], x2 = xr[i + h];
    y[r * 2 * h + i] = x1 * c - x2 * s;
    y[r * 2 * h + i + h] = x2 * c + x1 * s;
  }
}
