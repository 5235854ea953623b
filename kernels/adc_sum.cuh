// The forward's ADC of the fused analog training layer, included by analog_train.cu (which
// defines the helpers it uses: Pack8, load8 / store8, to_f / from_f, adc_level, adc_window);
// the CPU twins are `adc_bounds` and `adc_sum` in src/train/fused/cpu.rs. Each row block's
// partial sums reach an ADC of its own, which rounds them to its levels and clamps them at
// its bound; the layer's output is the sum over blocks of what the ADCs read.

// ---- ADC: per block round and clamp to lambda * w_max * range, then the sum over blocks ----

// Edge of the square (tokens x channels) tiles of the clamp flags (FLAG_TILE in
// src/train/fused/mod.rs); a multiple of 8, so one thread's eight channels share a tile.
#define FLAG_TILE 64

// The bound (wmax * lambda) * range of every (block, channel) (0 for lambda 0: no ADC) and
// 1 / res, what adc_level multiplies by (NaN where the bound is off: adc_sum's quotient is then
// NaN, which sends the output's pack to its checked path); and the clamp flags zeroed for
// adc_sum. Grid (max(nb * out, nflags)).
template <typename T>
__device__ void adc_prep(const float *wmax, const float *ranges, float *bound, float *inv,
                         T *flags, int nbo, int out, int nflags, float lambda, float inv_states) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < nflags) flags[i] = from_f<T>(0.0f);
  if (i >= nbo) return;
  float b = lambda > 0.0f ? (wmax[i] * lambda) * ranges[i / out] : 0.0f;
  bound[i] = b;
  inv[i] = b > 0.0f ? 1.0f / ((b * 2.0f) * inv_states) : __int_as_float(0x7fffffff);
}

// One pack of eight outputs of one block: rounded to the ADC's levels, clamped and added to
// acc; the clamp bits go to the mask byte `cb`, and a clamp sets the block's flag tile `fl` to
// `one` (the caller's, converted once outside its loops). A pack whose quotients all lie inside
// adc_level's window (so every bound is on: off ones have 1 / res NaN) takes a path with no
// per-output bound check or select; the rest (rare), the checked path. Both give each output
// what the CPU twin's `quantize` and the clamp give it.
template <typename T>
__device__ __forceinline__ void adc_pack(const Pack8<T> &v, const Pack8<float> &bd,
                                         const Pack8<float> &iv, float (&acc)[8], uint8_t *cb,
                                         T *fl, T one, float two_inv, float win, int adc) {
  float lv[8];
  bool near = false;
  unsigned cbits = 0;
#pragma unroll
  for (int k = 0; k < 8; k++) {
    float a = to_f(v.v[k]) * iv.v[k];
    lv[k] = rintf(a);
    near |= !(fabsf(a - lv[k]) < win);
  }
  if (adc && !near) {
#pragma unroll
    for (int k = 0; k < 8; k++) {
      float b = bd.v[k], q = lv[k] * (b * two_inv), cl = fmaxf(fminf(q, b), -b);
      cbits |= (unsigned)(cl != q) << k;
      acc[k] = acc[k] + cl;
    }
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++) {
      float x = to_f(v.v[k]), b = bd.v[k];
      bool on = b > 0.0f;
      if (adc && on) lv[k] = adc_level(x, b * two_inv, iv.v[k], win);
      float q = adc ? lv[k] * (b * two_inv) : x;
      float cl = fmaxf(fminf(q, b), -b);
      cbits |= (unsigned)(on && cl != q) << k;
      acc[k] = acc[k] + (on ? cl : x);
    }
  }
  *cb = (uint8_t)cbits;
  if (cbits) *fl = one;
}

// Grid (tokens); each thread takes eight adjacent channels at a time. Where a block's output
// clamps, its flag tile flags[(s * ft + t / FLAG_TILE) * fo + c / FLAG_TILE] is set to 1; the
// flags start at 0 and every writer writes the same value. (A flag after the tiles' for
// "anything clamped", stored by every clamping pack, took this kernel from 141 to 608 us where
// most outputs clamp: one address for all; session 40.) The backward corrects only where a
// flag is set, and finds the clamped outputs in `clamps` (every byte written: bit k of byte
// (s * tokens + t) * ceil(out / 8) + c / 8 is output c + k of block s and token t). VEC:
// 16-byte packs (rows of a multiple of 8). This is the obvious version (f32, ragged rows);
// adc_sum_staged below gives the same bits for 2-byte types and a few blocks.
template <typename T, bool VEC>
__device__ void adc_sum_rows(const T *yb, const float *bound, const float *inv_res, T *y,
                             T *flags, uint8_t *clamps, int tokens, int out, int nb,
                             float inv_states, int adc, int ft, int fo) {
  int t = blockIdx.x, mb = (out + 7) / 8;
  i64 plane = (i64)tokens * out;
  const T one = from_f<T>(1.0f);
  // (b * 2) * inv_states as `quantize` has it: the same product, since doubling is exact.
  float two_inv = 2.0f * inv_states, win = adc ? adc_window(inv_states) : 0.0f;
  for (int c = threadIdx.x * 8; c < out; c += blockDim.x * 8) {
    int n = min(8, out - c);
    i64 e = (i64)t * out + c;
    T *fl = flags + (i64)(t / FLAG_TILE) * fo + c / FLAG_TILE;
    const T *ys = yb + e;
    const float *bs = bound + c, *is = inv_res + c;
    // -0 is the sum's exact identity (-0 + x is x, signed zeros included): no select for s 0.
    float acc[8];
#pragma unroll
    for (int k = 0; k < 8; k++) acc[k] = -0.0f;
    // Not unrolled: 64 registers, four blocks of 256 threads per SM (unrolled by 4: 86, two).
    for (int s = 0; s < nb; s++, ys += plane, bs += out, is += out)
      adc_pack(load8(ys, VEC, n), load8(bs, VEC, n), load8(is, VEC, n), acc,
               clamps + ((i64)s * tokens + t) * mb + c / 8, fl + (i64)s * ft * fo, one, two_inv,
               win, adc);
    Pack8<T> o;
#pragma unroll
    for (int k = 0; k < 8; k++) o.v[k] = from_f<T>(acc[k]);
    store8(y + e, o, VEC, n);
  }
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
  unsigned d = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}

// The most blocks adc_sum_staged takes (the launch picks it: ADC_STAGED_BLOCKS in
// src/train/fused/cuda.rs).
#define ADC_STAGED_MAX 4

// adc_sum_rows's VEC path for 2-byte types, launched (as its own kernel, adc_sum_staged_*) for
// 3 or 4 blocks: every block's pack is copied into the thread's own slots of shared memory
// (cp.async: no registers held while in flight; nb * blockDim * 16 bytes, dynamic) before any
// is summed, so a thread has nb loads in flight instead of one. Measured on an H100 (sessions
// 35 and 41, ncu): 94.5 -> 86.1 us at nb = 3 (1536 x 16384), 154 -> 139 at nb = 4 (2048 x
// 16384); at nb = 2 no gain (9.4 -> 10.2 us at 576 x 4096); at nb = 8 and 16 the same copies
// in groups of four were slower (149 against 143 us at 4096 x 4096, 643 against 530 at 8192 x
// 4096: the bounds' loads then miss an L1 that shared memory has shrunk). Each thread reads
// back only its own slots: no barrier.
template <typename T>
__device__ void adc_sum_staged(const T *yb, const float *bound, const float *inv_res, T *y,
                               T *flags, uint8_t *clamps, int tokens, int out, int nb,
                               float inv_states, int adc, int ft, int fo) {
  extern __shared__ uint4 adc_stage[];
  Pack8<T> *stage = (Pack8<T> *)adc_stage;
  int t = blockIdx.x, mb = out / 8, tid = threadIdx.x;
  i64 plane = (i64)tokens * out;
  const T one = from_f<T>(1.0f);
  float two_inv = 2.0f * inv_states, win = adc ? adc_window(inv_states) : 0.0f;
  for (int c = tid * 8; c < out; c += blockDim.x * 8) {
    i64 e = (i64)t * out + c;
    T *fl = flags + (i64)(t / FLAG_TILE) * fo + c / FLAG_TILE;
#pragma unroll
    for (int s = 0; s < ADC_STAGED_MAX; s++)
      if (s < nb) cp_async16(&stage[s * blockDim.x + tid], yb + e + s * plane);
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    float acc[8];
#pragma unroll
    for (int k = 0; k < 8; k++) acc[k] = -0.0f;
#pragma unroll
    for (int s = 0; s < ADC_STAGED_MAX; s++) {
      if (s >= nb) break;
      const float *bs = bound + (i64)s * out + c, *is = inv_res + (i64)s * out + c;
      adc_pack(stage[s * blockDim.x + tid], load8(bs, true, 8), load8(is, true, 8), acc,
               clamps + ((i64)s * tokens + t) * mb + c / 8, fl + (i64)s * ft * fo, one, two_inv,
               win, adc);
    }
    Pack8<T> o;
#pragma unroll
    for (int k = 0; k < 8; k++) o.v[k] = from_f<T>(acc[k]);
    store8(y + e, o, true, 8);
  }
}

// Rows that move in 16-byte packs take adc_sum_staged (STAGED: its kernel) or adc_sum_rows's
// vector path; the rest, adc_sum_rows element by element.
template <typename T, bool STAGED>
__device__ void adc_sum(const T *yb, const float *bound, const float *inv_res, T *y, T *flags,
                        uint8_t *clamps, int tokens, int out, int nb, float inv_states, int adc,
                        int ft, int fo) {
  if (out % 8 == 0 && aligned16(yb) && aligned16(y) && aligned16(bound) && aligned16(inv_res)) {
    if constexpr (STAGED)
      adc_sum_staged<T>(yb, bound, inv_res, y, flags, clamps, tokens, out, nb, inv_states, adc,
                        ft, fo);
    else
      adc_sum_rows<T, true>(yb, bound, inv_res, y, flags, clamps, tokens, out, nb, inv_states,
                            adc, ft, fo);
  } else
    adc_sum_rows<T, false>(yb, bound, inv_res, y, flags, clamps, tokens, out, nb, inv_states,
                           adc, ft, fo);
}
