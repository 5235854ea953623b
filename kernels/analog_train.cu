// Fused kernels of the analog training layer (src/train/fused): everything of DESIGN §3.1/§3.4
// around the matrix products, which stay with cuBLAS. The CPU twins are in
// src/train/fused/cpu.rs; tests compare the two.
//
// Layouts: row blocks split the inputs as `split_with_head` does (an optional head block of
// `head` inputs, then the first `extra` blocks hold `base + 1` inputs, the others `base`);
// blocked tensors are padded to R = max block length with
// zeros, so one strided-batched GEMM covers all blocks: xb (nb, T, R), wb (nb, out, R),
// yb (nb, T, out). Compiled with --fmad=false so the noise and the rounding match the CPU bit
// for bit (no fused multiply-add where the CPU has none).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

typedef long long i64;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }

// With a head block (head > 0) block 0 holds the first `head` inputs and blocks 1.. split the
// rest; head = 0 is the plain split.
__device__ __forceinline__ int blk_start(int s, int base, int extra, int head) {
  if (head > 0) {
    if (s == 0) return 0;
    s -= 1;
  }
  return head + s * base + min(s, extra);
}
__device__ __forceinline__ int blk_len(int s, int base, int extra, int head) {
  if (head > 0) {
    if (s == 0) return head;
    s -= 1;
  }
  return base + (s < extra ? 1 : 0);
}

// ---- counter-based normals: a line-by-line port of src/rng/fast.rs -------------------------

__device__ __forceinline__ uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  return x ^ (x >> 16);
}

__device__ __forceinline__ float ln_poly(float x) {
  uint32_t bits = __float_as_uint(x);
  float e = (float)((int)(bits >> 23) - 127);
  float m = __uint_as_float((bits & 0x007fffffu) | 0x3f800000u);
  bool big = m > 1.41421353816986083984375f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1.0f : e;
  float f = m - 1.0f;
  float z = f * f;
  float y = 7.0376836e-2f;
  y = y * f - 1.1514610e-1f;
  y = y * f + 1.1676999e-1f;
  y = y * f - 1.2420141e-1f;
  y = y * f + 1.4249323e-1f;
  y = y * f - 1.6668058e-1f;
  y = y * f + 2.0000714e-1f;
  y = y * f - 2.4999994e-1f;
  y = y * f + 3.3333330e-1f;
  y = y * f * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return f + y + 0.693359375f * e;
}

// fl(x / c) for the two constant divisors of sincos_turns, as a product and one FMA correction
// instead of the IEEE division (a reciprocal, four FMAs and a slow-path check): for every x
// the noise stream reaches (the 2^24 values z2 can take), this gives the quotient's bits, as
// the test `rng::fast::tests::constant_divisions_are_exact_where_the_stream_reaches` checks.
__device__ __forceinline__ float div_const(float x, float c) {
  float r = 1.0f / c, q = x * r;
  return __fmaf_rn(__fmaf_rn(-q, c, x), r, q);
}

__device__ __forceinline__ void sincos_turns(float turns, float *s_out, float *c_out) {
  bool far = fabsf(turns) > 0.25f;
  float folded = turns >= 0.0f ? 0.5f - turns : -0.5f - turns;
  float z = (far ? folded : turns) * 6.28318548202514648438f;
  float z2 = z * z;
  float s = z * (1.0f + z2 * (-1.0f / 6.0f +
                              z2 * (1.0f / 120.0f +
                                    z2 * (-1.0f / 5040.0f +
                                          z2 * (1.0f / 362880.0f - div_const(z2, 39916800.0f))))));
  float c = 1.0f + z2 * (-0.5f + z2 * (1.0f / 24.0f +
                                       z2 * (-1.0f / 720.0f +
                                             z2 * (1.0f / 40320.0f +
                                                   z2 * (-1.0f / 3628800.0f +
                                                         div_const(z2, 479001600.0f))))));
  *s_out = s;
  *c_out = far ? -c : c;
}

// SplitMix64 finalizer and the key derivation of src/rng/mod.rs: block s of a layer draws from
// StreamKey::new(seed, layer, s, effect).child(call), started here from layer_key(seed, layer).
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ void block_keys(uint64_t layer_key, uint64_t tag, uint64_t call, int s,
                                           uint32_t *k0, uint32_t *k1) {
  uint64_t k = mix64(mix64(layer_key ^ (uint64_t)s) ^ tag);
  k = mix64(k ^ mix64(call + 0x5851F42D4C957F2Dull));
  *k0 = (uint32_t)k;
  *k1 = (uint32_t)(k >> 32);
}

__device__ __forceinline__ void normal_pair(uint32_t k0, uint32_t k1, uint32_t n, float *a,
                                            float *b) {
  uint32_t h0 = hash32(hash32((n * 2u) ^ k0) ^ k1);
  uint32_t h1 = hash32(hash32((n * 2u + 1u) ^ k0) ^ k1);
  float u0 = (float)((h0 >> 8) + 1u) * (1.0f / 16777216.0f);
  float u1 = (float)(h1 >> 8) * (1.0f / 16777216.0f) - 0.5f;
  float r = sqrtf(-2.0f * ln_poly(u0));
  float s, c;
  sincos_turns(u1, &s, &c);
  *a = r * c;
  *b = r * s;
}

// Eight adjacent elements in registers: one 16-byte load or store for bf16/f16, two for f32,
// where `vec` (the row length is a multiple of 8 and the tensors are 16-byte aligned); else
// element by element, the first `n` only. The ADC kernels are bound by memory: one 2-byte load
// per thread and block reached only 1-2 TB/s on an H200 (benches/RESULTS.md, session 12).
template <typename T> struct alignas(16) Pack8 {
  T v[8];
};

__device__ __forceinline__ bool aligned16(const void *p) { return ((size_t)p & 15) == 0; }

template <typename T>
__device__ __forceinline__ Pack8<T> load8(const T *p, bool vec, int n) {
  Pack8<T> r;
  if (vec) {
    const uint4 *q = (const uint4 *)p;
    uint4 *d = (uint4 *)r.v;
#pragma unroll
    for (int k = 0; k < (int)(sizeof(Pack8<T>) / 16); k++) d[k] = q[k];
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++) r.v[k] = k < n ? p[k] : from_f<T>(0.0f);
  }
  return r;
}

template <typename T>
__device__ __forceinline__ void store8(T *p, const Pack8<T> &v, bool vec, int n) {
  if (vec) {
    uint4 *q = (uint4 *)p;
    const uint4 *s = (const uint4 *)v.v;
#pragma unroll
    for (int k = 0; k < (int)(sizeof(Pack8<T>) / 16); k++) q[k] = s[k];
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++)
      if (k < n) p[k] = v.v[k];
  }
}

// Grids: one thread block per row (a token, or a token of one row block: blockIdx.y), threads
// striding along the row, so no thread divides a 64-bit index.

// ---- DAC: clip to the block's range and round to its levels; blocked and padded ----------

// Whether a block's rows, starting at element `start` of rows of `n_in` in `p` and copied
// to rows of `r` in `q`, can move in 16-byte packs.
__device__ __forceinline__ bool vec_rows(int start, int n_in, int r, const void *p,
                                         const void *q) {
  return (start % 8 | n_in % 8 | r % 8) == 0 && aligned16(p) && aligned16(q);
}

// round(y / res) with the quotient exactly as the IEEE division gives it, without dividing:
// a = y * (1 / res) lies within 3 ulp of fl(y / res), so both round to the same integer unless a
// lies within 4 ulp of a half-integer (or is not finite); there the division decides. `win` is
// that window for every |a| up to the ADC's L levels + 3 (adc_window): a wider |a| clamps
// whichever neighbouring integer it rounds to (|r| >= L + 2 > L), so the clamped output and the
// clamp are the same either way, and one window for all serves, two operations per output
// fewer than a window proportional to |a|. The ADC kernel is bound by arithmetic, and the
// division was most of it.
__device__ __forceinline__ float adc_level(float y, float res, float inv_res, float win) {
  float a = y * inv_res;
  float r = rintf(a);
  if (!(fabsf(a - r) < win)) return roundf(y / res);
  return r;
}

// adc_level's window for an ADC of 1 / inv_states = 2 L states: 4 ulp of L + 3 below a half.
__device__ __forceinline__ float adc_window(float inv_states) {
  return 0.5f - 4.8e-7f * (0.5f / inv_states + 3.0f);
}

// Whether the calling thread's block is the last of `blocks` (grid_last: of its grid) to get
// here (one thread per block calls it, after its own writes and atomics): `done` counts the
// blocks and is left zero for the next launch. The device's scratch (`with_grid_sync` in
// src/train/fused/cuda.rs) holds zero slots between launches, so finishing a sum over the grid
// needs neither a memset nor a second kernel; the last block reads the others' results in a
// fixed order (deterministic).
__device__ __forceinline__ bool last_of(unsigned long long *done, unsigned long long blocks) {
  __threadfence();
  if (atomicAdd(done, 1ull) != blocks - 1) return false;
  *done = 0ull;
  __threadfence();
  return true;
}
__device__ __forceinline__ bool grid_last(unsigned long long *done) {
  return last_of(done, (unsigned long long)gridDim.x * gridDim.y * gridDim.z);
}

// Grid (ceil(tokens / (DAC_ROWS * blockDim.y)), nb): DAC_ROWS * blockDim.y tokens' rows of block s
// per thread block (a row of 512 inputs needs 64 threads, and 64-thread blocks left the kernel at
// ~2 TB/s), eight adjacent inputs of DAC_ROWS rows per thread at a time. With `sync` (two zero
// slots of the device's scratch, see grid_last), also the count of the inputs with |x| >= range
// in blocks whose range is in use, into sync[0]: integers, so the sum is exact in any order; the
// grid's last block writes total = prev (0 if null) + that count and leaves the slots zero, so
// the statistics need no kernel of their own. (One partial per token, summed by nb blocks
// after, took 29 us at 16384 tokens.) With `mask`, the same test's bits, one byte per thread's
// eight inputs: bit j % 8 of byte (s * tokens + t) * ceil(r / 8) + j / 8 is |x| >= range for
// input j of block s (what dac_grad_sparse visits).
#define DAC_ROWS 4
template <typename T>
__device__ void dac_fwd(const T *x, const float *ranges, T *xb, unsigned long long *sync,
                        const float *prev, float *total, uint8_t *mask, int tokens, int n_in,
                        int base, int extra, int head, int r, float inv_states, int used,
                        int dac) {
  int s = blockIdx.y, t0 = blockIdx.x * DAC_ROWS * blockDim.y + threadIdx.y;
  int start = blk_start(s, base, extra, head), len = blk_len(s, base, extra, head);
  float b = ranges[s];
  bool act = used && b > 0.0f;
  float res = (b * 2.0f) * inv_states;
  // adc_level's rounding by 1 / res (|v / res| <= L after the clip, inside its window's range):
  // the IEEE quotient's roundf without a division per input.
  float inv_res = act && dac ? 1.0f / res : 0.0f, win = dac ? adc_window(inv_states) : 0.0f;
  int mb = (r + 7) / 8;
  bool vec = vec_rows(start, n_in, r, x, xb);
  int cnt = 0;
  for (int j = threadIdx.x * 8; j < r; j += blockDim.x * 8) {
    int n = min(8, r - j), nl = max(0, min(8, len - j));
    // All rows' loads first: one 16-byte load per thread in flight left the kernel at ~1.8 TB/s.
    Pack8<T> in[DAC_ROWS];
#pragma unroll
    for (int q = 0; q < DAC_ROWS; q++) {
      int t = t0 + q * blockDim.y;
      if (t < tokens) in[q] = load8(x + (i64)t * n_in + start + j, vec && nl == 8, nl);
    }
#pragma unroll
    for (int q = 0; q < DAC_ROWS; q++) {
      int t = t0 + q * blockDim.y;
      if (t >= tokens) continue;
      Pack8<T> y;
      unsigned bits = 0;
#pragma unroll
      for (int k = 0; k < 8; k++) {
        float v = 0.0f;
        if (k < nl) {
          v = to_f(in[q].v[k]);
          if (v >= b || v <= -b) bits |= 1u << k;
          if (act) {
            v = fmaxf(fminf(v, b), -b);
            if (dac) v = adc_level(v, res, inv_res, win) * res;
          }
        }
        y.v[k] = from_f<T>(v);
      }
      store8(xb + ((i64)s * tokens + t) * r + j, y, vec && n == 8, n);
      cnt += __popc(bits);
      if (mask) mask[((i64)s * tokens + t) * mb + j / 8] = (uint8_t)bits;
    }
  }
  if (!sync) return;
  // Whole warps (blockDim.x is a multiple of 32): shuffles, then the warps' sums (integers:
  // exact).
  __shared__ int wc[8];  // at most 256 threads
  int lin = threadIdx.y * blockDim.x + threadIdx.x;
  for (int off = 16; off > 0; off >>= 1) cnt += __shfl_down_sync(0xffffffffu, cnt, off);
  if (lin % 32 == 0) wc[lin / 32] = cnt;
  __syncthreads();
  if (lin == 0) {
    int c = 0;
    for (int w = 0; w < (int)(blockDim.x * blockDim.y) / 32; w++) c += wc[w];
    if (c > 0 && act) atomicAdd(sync, (unsigned long long)c);
    if (grid_last(sync + 1)) {
      unsigned long long n = atomicExch(sync, 0ull);
      *total = (prev ? *prev : 0.0f) + (float)n;
    }
  }
}

// The sums over the block's threads (a power of two) of the entries each thread wrote to a and
// b, in a fixed tree order (deterministic): after it, a[0] and b[0] hold them, seen by all.
template <typename F> __device__ __forceinline__ void tree_sum2(F *a, F *b) {
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) {
      a[threadIdx.x] += a[threadIdx.x + w];
      b[threadIdx.x] += b[threadIdx.x + w];
    }
    __syncthreads();
  }
}

// One input's share of its range's gradient: an input at or beyond the range pulls it by the
// part of its gradient that would widen it, and counts as clipped.
__device__ __forceinline__ void range_pull(float xv, float gv, float b, float *pull, float *cnt) {
  if (xv >= b) {
    *pull += fminf(gv, 0.0f);
    *cnt += 1.0f;
  }
  if (xv <= -b) {
    *pull -= fmaxf(gv, 0.0f);
    *cnt += 1.0f;
  }
}

// Block s's (pull, count) sums over its chunks, in a fixed order (deterministic): each thread
// sums a stride of chunks in double (past L1: other blocks wrote them), then a tree in shared
// memory (blockDim.x a power of two, at most 256). Thread 0 gets the totals.
__device__ void part_totals(const float *part, int s, int chunks, double *pull, double *cnt) {
  __shared__ double tp[256];
  __shared__ double tc[256];
  double p = 0.0, c = 0.0;
  for (int k = threadIdx.x; k < chunks; k += blockDim.x) {
    p += __ldcg(part + ((i64)s * chunks + k) * 2);
    c += __ldcg(part + ((i64)s * chunks + k) * 2 + 1);
  }
  tp[threadIdx.x] = p;
  tc[threadIdx.x] = c;
  tree_sum2(tp, tc);
  *pull = tp[0];
  *cnt = tc[0];
}

// What the range gradient needs besides the partial sums: gb (nb) the output, `done` the
// device scratch's zero slot per row block (see grid_last), and the decay's settings.
struct RangeOut {
  float *gb;
  unsigned long long *done;
  float decay, min_inside;
};

// The block's (pull, count) into part[(s * chunks + blockIdx.x) * 2 + {0, 1}], summed over its
// threads in a fixed tree order (deterministic); the last of row block s's chunks to finish then
// sums them all (part_totals) into gb[s] = range * pull, plus the decay while enough of the
// block's `len` inputs per token are inside (0 where the range is not in use). Folded in here
// rather than a kernel of its own (~3-4 us and a launch per backward).
__device__ void finish_part(float *part, int s, int chunks, float pull, float cnt, float b,
                            bool act, int tokens, int len, RangeOut ro) {
  __shared__ float sp[256];
  __shared__ float sc[256];
  __shared__ bool last;
  sp[threadIdx.x] = pull;
  sc[threadIdx.x] = cnt;
  tree_sum2(sp, sc);
  if (threadIdx.x == 0) {
    part[((i64)s * chunks + blockIdx.x) * 2] = sp[0];
    part[((i64)s * chunks + blockIdx.x) * 2 + 1] = sc[0];
    last = last_of(ro.done + s, (unsigned long long)chunks);
  }
  __syncthreads();
  if (!last) return;
  double tp, tc;
  part_totals(part, s, chunks, &tp, &tc);
  if (threadIdx.x != 0) return;
  if (!act) {
    ro.gb[s] = 0.0f;
    return;
  }
  float g = (float)tp * b;
  if (ro.decay > 0.0f) {
    float n = (float)((double)tokens * len);
    float inside = 1.0f - (float)tc / n;
    if (inside > ro.min_inside) g += b * ro.decay;
  }
  ro.gb[s] = g;
}

// The range gradient's pull and the clipped count per (row block, chunk of tokens), reduced in
// shared memory in a fixed order (deterministic), and the gradient of x through the DAC for
// the same rows: straight through, zero where the input was clipped (|x| > range); both read
// g and x once. Grid (chunks, nb); part[(s * chunks + chunk) * 2 + {0, 1}], and the ranges'
// gradient from them (finish_part).
template <typename T>
__device__ void dac_grad(const T *gxb, const T *x, const float *ranges, float *part, T *gx,
                         int tokens, int n_in, int base, int extra, int head, int r, int chunks,
                         int used, RangeOut ro) {
  int s = blockIdx.y;
  int len = blk_len(s, base, extra, head);
  int start = blk_start(s, base, extra, head);
  float b = ranges[s];
  bool act = used && b > 0.0f;
  float pull = 0.0f, cnt = 0.0f;
  bool vec = vec_rows(start, n_in, r, x, gxb) && aligned16(gx);
  for (int t = blockIdx.x; t < tokens; t += chunks) {
    const T *xr = x + (i64)t * n_in + start;
    const T *g = gxb + ((i64)s * tokens + t) * r;
    for (int j = threadIdx.x * 8; j < len; j += blockDim.x * 8) {
      int n = min(8, len - j);
      Pack8<T> x8 = load8(xr + j, vec && n == 8, n);
      Pack8<T> g8 = load8(g + j, vec && n == 8, n);
#pragma unroll
      for (int k = 0; k < 8; k++) {
        if (k >= n) break;
        float xv = to_f(x8.v[k]);
        range_pull(xv, to_f(g8.v[k]), b, &pull, &cnt);
        if (act && fabsf(xv) > b) g8.v[k] = from_f<T>(0.0f);
      }
      store8(gx + (i64)t * n_in + start + j, g8, vec && n == 8, n);
    }
  }
  finish_part(part, s, chunks, pull, cnt, b, act, tokens, len, ro);
}

// dac_grad for blocks of equal length (r each) with gx (T, n_in) already in place (the product
// wrote it there): only the inputs dac_fwd's mask marks (|x| >= range) matter, for the pull,
// the count and the zeros (|x| > range), so each thread block reads its rows' mask, four bytes
// a thread at a time, and touches x and gx only at set bits. Grid (chunks, nb); part as
// dac_grad writes it, summed per thread in a fixed order, then the same tree (deterministic),
// and the ranges' gradient from them. A block whose range is not in use passes gx as it is
// (its range's gradient is 0).
template <typename T>
__device__ void dac_grad_sparse(T *gx, const T *x, const uint8_t *mask, const float *ranges,
                                float *part, int tokens, int n_in, int r, int chunks, int used,
                                RangeOut ro) {
  int s = blockIdx.y;
  float b = ranges[s];
  float pull = 0.0f, cnt = 0.0f;
  bool act = used && b > 0.0f;
  if (act) {
    int rb = (r + 7) / 8, wpr = (rb + 3) / 4;
    bool words = rb % 4 == 0 && ((size_t)mask & 3) == 0;
    int rows = tokens > (int)blockIdx.x ? (tokens - 1 - (int)blockIdx.x) / chunks + 1 : 0;
    for (int e = threadIdx.x; e < rows * wpr; e += blockDim.x) {
      int t = blockIdx.x + (e / wpr) * chunks, w = e % wpr;
      const uint8_t *mb = mask + ((i64)s * tokens + t) * rb + w * 4;
      unsigned m;
      if (words) {
        m = *(const unsigned *)mb;
      } else {
        m = 0;
        for (int k = 0; k < 4 && w * 4 + k < rb; k++) m |= (unsigned)mb[k] << (8 * k);
      }
      while (m) {
        int j = w * 32 + __ffs(m) - 1;
        m &= m - 1;
        i64 at = (i64)t * n_in + (i64)s * r + j;
        float xv = to_f(x[at]);
        range_pull(xv, to_f(gx[at]), b, &pull, &cnt);
        if (fabsf(xv) > b) gx[at] = from_f<T>(0.0f);
      }
    }
  }
  finish_part(part, s, chunks, pull, cnt, b, act, tokens, r, ro);
}

// ---- weights: per (block, channel) max |w|, then the noisy blocked copy --------------------

// The noise std of a weight at r = |w| / wmax of its block channel, relative to wmax: 1, or
// with `pcm` the AFM paper's programming-noise fit at wmax = 180 units (device::afm_sigma,
// NoiseShape::rel_std on the host).
__device__ __forceinline__ float noise_rel(float r, int pcm) {
  if (!pcm) return 1.0f;
  double u = (double)fminf(fmaxf(r, 0.0f), 1.0f) * 180.0;
  double sg = u <= 52.5 ? 2.939751381126213e-05 * u * u * u - 0.00371581208142707 * u * u +
                              0.22419685954327148 * u + 2.5797410660159494
                        : 1.2329755395573392e-05 * u * u * u - 0.003054993405157235 * u * u +
                              0.2453487119885723 * u + 2.110295720240385;
  return (float)(sg / 180.0);
}

// wb[s, c, j] = w[c, start_s + j] + (wmax[s, c] * gamma * noise_rel(|w| / wmax)) * n, n the
// element c * len_s + j of block s's counter-based stream (pair el / 2, component el % 2), with
// w as T rounds it (the weights may come in f32: the cast to the compute type happens here) and
// wmax[s, c] its max |w| over the block, written too. Each lane draws one pair and writes both
// its elements (where a row starts at an odd element, its first element's pair is drawn again,
// for that element alone). Grid (ceil(out / NOISE_ROWS), nb) of NOISE_ROWS warps: a warp takes
// one channel alone (its max by shuffles, no block barrier), each lane every 32nd pair of the
// row, so a lane has len / 64 independent draws in flight rather than one per barrier, and
// derives the block's stream key (four 64-bit mixes, a third of a pair's work) once for them.
#define NOISE_ROWS 8
template <typename T, typename W> __device__ __forceinline__ float as_t(W v) {
  return to_f(from_f<T>(to_f(v)));
}

// The noise of one weight already loaded (raw, before T rounds it), with its shape fixed at
// compile time. The division |w| / wmax only where the noise depends on it: computed for its
// argument, it was ~12 instructions per weight of a kernel bound by instruction issue, for a
// factor 1.
template <typename T, bool PCM>
__device__ __forceinline__ float noisy_v(float raw, float n, float m, float sc) {
  float v = to_f(from_f<T>(raw));
  float rel = PCM ? noise_rel(m > 0.0f ? fabsf(v) / m : 0.0f, 1) : 1.0f;
  return v + n * sc * rel;
}

template <typename T, typename W>
__device__ __forceinline__ float noisy_w(const W *row, int j, float n, float m, float sc, int pcm) {
  float raw = to_f(row[j]);
  return pcm ? noisy_v<T, true>(raw, n, m, sc) : noisy_v<T, false>(raw, n, m, sc);
}

// Two adjacent elements in one load or store (the caller checks the alignment).
__device__ __forceinline__ float2 load2(const float *p) { return *(const float2 *)p; }
__device__ __forceinline__ float2 load2(const __nv_bfloat16 *p) {
  return __bfloat1622float2(*(const __nv_bfloat162 *)p);
}
__device__ __forceinline__ float2 load2(const __half *p) {
  return __half22float2(*(const __half2 *)p);
}
__device__ __forceinline__ void store2(float *p, float a, float b) {
  *(float2 *)p = make_float2(a, b);
}
__device__ __forceinline__ void store2(__nv_bfloat16 *p, float a, float b) {
  *(__nv_bfloat162 *)p = __floats2bfloat162_rn(a, b);
}
__device__ __forceinline__ void store2(__half *p, float a, float b) {
  *(__half2 *)p = __floats2half2_rn(a, b);
}

// A row whose pairs start at even elements of the stream (el0 even), of even length, with
// both rows aligned for pairs: each lane loads, draws for and stores whole pairs, with no
// per-element bounds or shape tests (the kernel 273 -> 231 us at 8192 x 4096 under ncu, against
// the generic loop below alone; session 37).
template <typename T, typename W, bool PCM>
__device__ __forceinline__ void noisy_pairs(const W *row, T *o, int len, int lane, uint32_t k0,
                                            uint32_t k1, uint32_t el0, float m, float sc) {
#pragma unroll 4
  for (int j = 2 * lane; j < len; j += 64) {
    float a, b;
    normal_pair(k0, k1, (el0 + (uint32_t)j) >> 1, &a, &b);
    float2 v = load2(row + j);
    store2(o + j, noisy_v<T, PCM>(v.x, a, m, sc), noisy_v<T, PCM>(v.y, b, m, sc));
  }
}

template <typename T, typename W>
__device__ void noisy_wblocks(const W *w, float *wmax, T *wb, uint64_t layer_key, uint64_t tag,
                              uint64_t call, int out, int n_in, int base, int extra, int head,
                              int r, float gamma, int pcm) {
  int s = blockIdx.y, lane = threadIdx.x % 32;
  int c = blockIdx.x * NOISE_ROWS + (int)threadIdx.x / 32;
  if (c >= out) return;
  int start = blk_start(s, base, extra, head), len = blk_len(s, base, extra, head);
  const W *row = w + (i64)c * n_in + start;
  T *o = wb + ((i64)s * out + c) * r;
  // The channel's max |w| (fmaxf: the same in any order).
  float m = 0.0f;
  for (int j = lane; j < len; j += 32) m = fmaxf(m, fabsf(as_t<T>(row[j])));
  for (int d = 16; d > 0; d >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, d));
  if (lane == 0) wmax[(i64)s * out + c] = m;
  for (int j = len + lane; j < r; j += 32) o[j] = from_f<T>(0.0f);
  if (!(gamma > 0.0f)) {
    for (int j = lane; j < len; j += 32) o[j] = from_f<T>(as_t<T>(row[j]));
    return;
  }
  uint32_t k0, k1;
  block_keys(layer_key, tag, call, s, &k0, &k1);
  float sc = m * gamma;
  uint32_t el0 = (uint32_t)c * (uint32_t)len;
  int first = (int)(el0 & 1u);
  if ((len | r | (int)(((i64)c * n_in + start) & 1)) % 2 == 0 &&
      (uintptr_t)w % (2 * sizeof(W)) == 0 && (uintptr_t)wb % (2 * sizeof(T)) == 0) {
    if (pcm)
      noisy_pairs<T, W, true>(row, o, len, lane, k0, k1, el0, m, sc);
    else
      noisy_pairs<T, W, false>(row, o, len, lane, k0, k1, el0, m, sc);
    return;
  }
#pragma unroll 4
  for (int j = 2 * lane - first; j < len; j += 64) {
    // Elements j (even in the stream) and j + 1 (odd) share pair (el0 + j) / 2.
    float a, b;
    normal_pair(k0, k1, (el0 + (uint32_t)(j + first)) >> 1, &a, &b);
    if (j >= 0) o[j] = from_f<T>(noisy_w<T>(row, j, a, m, sc, pcm));
    if (j + 1 < len) o[j + 1] = from_f<T>(noisy_w<T>(row, j + 1, b, m, sc, pcm));
  }
}

// Gradient of w: the blocked gradient put back in place (the noise is additive). Grid (out);
// eight adjacent inputs per thread at a time.
template <typename T>
__device__ void unblock_w(const T *gwb, T *gw, int out, int n_in, int base, int extra, int head, int nb,
                          int r) {
  int c = blockIdx.x;
  for (int s = 0; s < nb; s++) {
    int start = blk_start(s, base, extra, head), len = blk_len(s, base, extra, head);
    const T *g = gwb + ((i64)s * out + c) * r;
    T *o = gw + (i64)c * n_in + start;
    bool vec = vec_rows(start, n_in, r, gw, gwb);
    for (int j = threadIdx.x * 8; j < len; j += blockDim.x * 8) {
      int n = min(8, len - j);
      store8(o + j, load8(g + j, vec && n == 8, n), vec && n == 8, n);
    }
  }
}

#include "adc_sum.cuh"
#include "clamp_fix.cuh"

// The corrections' registers capped where their sparse paths were tuned: gx at 64 (four blocks
// of 256 per SM), gw at 80 (three); clamp_fix_pair (both gradients in one grid, gx's row tiles
// first: where little clamps, each kernel is a few memory latencies long and they overlap) at
// gw's. The tensor-core path takes 112 uncapped and spills a few
// dozen bytes capped; with gx at 80 too (three blocks), its sparse path ran ~20% slower where
// tiles hold a few hundred clamps (lambda 4.5-6; session 40).
#define CLAMP_FIX_GX_BOUNDS __launch_bounds__(256, 4)
#define CLAMP_FIX_GW_BOUNDS __launch_bounds__(256, 3)

#define INSTANTIATE(T, SUF)                                                                        \
  extern "C" __global__ void dac_fwd_##SUF(                                                        \
      const T *x, const float *ranges, T *xb, unsigned long long *sync, const float *prev,         \
      float *total, uint8_t *mask, int tokens, int n_in, int base, int extra, int head, int r,     \
      float inv_states, int used, int dac) {                                                       \
    dac_fwd<T>(x, ranges, xb, sync, prev, total, mask, tokens, n_in, base, extra, head, r,         \
               inv_states, used, dac);                                                             \
  }                                                                                                \
  extern "C" __global__ void dac_grad_sparse_##SUF(                                                \
      T *gx, const T *x, const uint8_t *mask, const float *ranges, float *part, int tokens,        \
      int n_in, int r, int chunks, int used, float *gb, unsigned long long *done, float decay,     \
      float min_inside) {                                                                          \
    dac_grad_sparse<T>(gx, x, mask, ranges, part, tokens, n_in, r, chunks, used,                   \
                       RangeOut{gb, done, decay, min_inside});                                     \
  }                                                                                                \
  extern "C" __global__ void dac_grad_##SUF(                                                       \
      const T *gxb, const T *x, const float *ranges, float *part, T *gx, int tokens, int n_in,     \
      int base, int extra, int head, int r, int chunks, int used, float *gb,                       \
      unsigned long long *done, float decay, float min_inside) {                                   \
    dac_grad<T>(gxb, x, ranges, part, gx, tokens, n_in, base, extra, head, r, chunks, used,        \
                RangeOut{gb, done, decay, min_inside});                                            \
  }                                                                                                \
  extern "C" __global__ void noisy_wblocks_##SUF(                                                  \
      const T *w, float *wmax, T *wb, uint64_t layer_key, uint64_t tag, uint64_t call, int out,    \
      int n_in, int base, int extra, int head, int r, float gamma, int pcm) {                      \
    noisy_wblocks<T, T>(w, wmax, wb, layer_key, tag, call, out, n_in, base, extra, head, r, gamma, \
                        pcm);                                                                      \
  }                                                                                                \
  extern "C" __global__ void noisy_wblocks_f32w_##SUF(                                             \
      const float *w, float *wmax, T *wb, uint64_t layer_key, uint64_t tag, uint64_t call,         \
      int out, int n_in, int base, int extra, int head, int r, float gamma, int pcm) {             \
    noisy_wblocks<T, float>(w, wmax, wb, layer_key, tag, call, out, n_in, base, extra, head, r,    \
                            gamma, pcm);                                                           \
  }                                                                                                \
  extern "C" __global__ void unblock_w_##SUF(const T *gwb, T *gw, int out, int n_in, int base,     \
                                             int extra, int head, int nb, int r) {                 \
    unblock_w<T>(gwb, gw, out, n_in, base, extra, head, nb, r);                                    \
  }                                                                                                \
  extern "C" __global__ void adc_prep_##SUF(const float *wmax, const float *ranges, float *bound,  \
                                            float *inv, T *flags, int nbo, int out, int nflags,    \
                                            float lambda, float inv_states) {                      \
    adc_prep<T>(wmax, ranges, bound, inv, flags, nbo, out, nflags, lambda, inv_states);            \
  }                                                                                                \
  extern "C" __global__ void adc_sum_##SUF(const T *yb, const float *bound, const float *inv_res,  \
                                           T *y, T *flags, uint8_t *clamps, int tokens, int out,   \
                                           int nb, float inv_states, int adc, int ft, int fo) {    \
    adc_sum<T, false>(yb, bound, inv_res, y, flags, clamps, tokens, out, nb, inv_states, adc, ft,  \
                      fo);                                                                         \
  }                                                                                                \
  extern "C" __global__ void CLAMP_FIX_GX_BOUNDS clamp_fix_gx_##SUF(                               \
      T *dst, const T *g, const uint8_t *clamps, const T *flags, const T *wb, int tokens,          \
      int out, int r, int ft, int fo, i64 bs, i64 rs) {                                            \
    clamp_fix<T>(false, blockIdx.x, dst, g, clamps, flags, wb, tokens, out, r, ft, fo, bs, rs);    \
  }                                                                                                \
  extern "C" __global__ void CLAMP_FIX_GW_BOUNDS clamp_fix_gw_##SUF(                               \
      T *dst, const T *g, const uint8_t *clamps, const T *flags, const T *xb, int tokens,          \
      int out, int r, int ft, int fo, i64 bs, i64 rs) {                                            \
    clamp_fix<T>(true, blockIdx.x, dst, g, clamps, flags, xb, tokens, out, r, ft, fo, bs, rs);     \
  }                                                                                                \
  extern "C" __global__ void CLAMP_FIX_GW_BOUNDS clamp_fix_pair_##SUF(                             \
      T *gx, T *gw, const T *g, const uint8_t *clamps, const T *flags, const T *wb, const T *xb,   \
      int tokens, int out, int r, int ft, int fo, i64 bsx, i64 rsx, i64 bsw, i64 rsw) {            \
    bool w = (int)blockIdx.x >= ft;                                                                \
    clamp_fix<T>(w, w ? blockIdx.x - ft : blockIdx.x, w ? gw : gx, g, clamps, flags, w ? xb : wb,  \
                 tokens, out, r, ft, fo, w ? bsw : bsx, w ? rsw : rsx);                            \
  }

// adc_sum_staged at 64 registers (four blocks of 256 per SM, as adc_sum_rows was tuned;
// uncapped, ptxas takes 72 and three blocks), with adc_sum_rows for rows it cannot take in
// 16-byte packs.
#define INSTANTIATE_STAGED(T, SUF)                                                                 \
  extern "C" __global__ void __launch_bounds__(256, 4)                                             \
      adc_sum_staged_##SUF(const T *yb, const float *bound, const float *inv_res, T *y, T *flags,  \
                           uint8_t *clamps, int tokens, int out, int nb, float inv_states,         \
                           int adc, int ft, int fo) {                                              \
    adc_sum<T, true>(yb, bound, inv_res, y, flags, clamps, tokens, out, nb, inv_states, adc, ft,   \
                     fo);                                                                          \
  }

INSTANTIATE(float, f32)
INSTANTIATE(__nv_bfloat16, bf16)
INSTANTIATE(__half, f16)
INSTANTIATE_STAGED(__nv_bfloat16, bf16)
INSTANTIATE_STAGED(__half, f16)
