// The analog layer's forward product with the ADC inside it: y[t, c] = sum over row blocks s of
// ADC_s,c(sum over the block's inputs k of xb[s, t, k] wb[s, c, k]). A tile crossbar converts
// its partial sum before the periphery adds the tiles up, so the per-block sums must exist one
// at a time; cuBLAS can only write them all out (nb x T x out values) for a second kernel to
// convert and add. Here each thread block keeps its 128 x 128 outputs' block sum in registers
// on the tensor cores (mma.sync m16n8k16, f32 accumulation), converts it at the end of every
// row block and adds it to a second set of registers, so the partial sums never reach memory.
//
// Same numbers as the two-kernel path (a cuBLAS batched product, then adc_sum in
// analog_train.cu): each block sum is rounded to the compute type first, as cuBLAS stores it,
// then converted by the same adc_out and summed over blocks in ascending order; only the
// order of the products' own sums differs. The clamp flags are set as adc_sum sets them, and
// the block sums of every flagged 64 x 64 tile are written to yb (nb, T, out) for the
// backward's corrections, which read yb only there (the rest of yb stays unwritten).
//
// Operands: xb (nb, T, r), wb (nb, out, r), both with r contiguous; bf16 or f16 only (the
// tensor cores' types; f32 layers take the two-kernel path). Where r is a multiple of 8 and
// the operands are 16-byte aligned, tiles arrive by cp.async in a 4-stage pipeline; else
// element by element (ragged test shapes).

#include "analog_common.cuh"

#define BM 128  // tokens per thread block
#define BN 128  // channels per thread block
#define BK 32   // inputs per pipeline stage
#define STAGES 4
#define THREADS 256  // 8 warps: 2 along tokens x 4 along channels, 64 x 32 outputs each
#define GROUP_M 8    // token tiles per group of the thread blocks' order

// Shared memory of one stage: a BM x BK tile of xb and a BN x BK tile of wb. A row of BK
// elements is four 16-byte chunks; chunk j of row i sits at chunk j ^ ((i / 2) % 4), so that
// the eight rows one ldmatrix phase reads fall on distinct banks.
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * BK + ((chunk ^ ((row >> 1) & 3)) << 3);
}

__device__ __forceinline__ unsigned smem_addr(const void *p) {
  return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(unsigned r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

template <typename T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
  __device__ __forceinline__ static void run(float c[4], const unsigned a[4], const unsigned b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
template <> struct Mma<__half> {
  __device__ __forceinline__ static void run(float c[4], const unsigned a[4], const unsigned b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

// Rows [row0, row0 + ROWS) x inputs [k0, k0 + BK) of `src` (rows of r, `rows` valid) into one
// stage tile; zeros past either end. VEC: 16-byte cp.async per chunk (r % 8 == 0, aligned).
template <typename T, int ROWS, bool VEC>
__device__ __forceinline__ void load_tile(T *tile, const T *src, int rows, int r, int row0,
                                          int k0) {
#pragma unroll
  for (int j = 0; j < ROWS * BK / 8 / THREADS; j++) {
    int i = threadIdx.x + j * THREADS, row = i / 4, chunk = i % 4;
    int gr = row0 + row, k = k0 + chunk * 8;
    T *dst = tile + swz(row, chunk);
    const T *p = src + (i64)gr * r + k;
    if (VEC) {
      bool valid = gr < rows && k < r;
      cp_async16(dst, valid ? p : src, valid);
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++) dst[e] = gr < rows && k + e < r ? p[e] : from_f<T>(0.0f);
    }
  }
}

// Grid ceil(T / BM) * ceil(out / BN), THREADS threads, dynamic shared memory
// STAGES * (BM + BN) * BK elements. flags: as adc_sum writes them (zeroed by the caller).
template <typename T, bool VEC>
__device__ void adc_gemm(const T *xb, const T *wb, const float *bound, const float *inv_res, T *y,
                         T *flags, T *yb, int tokens, int out, int r, int nb, float inv_states,
                         int adc, int ft, int fo) {
  extern __shared__ __align__(128) unsigned char smem[];
  T *sa = (T *)smem, *sb = sa + STAGES * BM * BK;
  __shared__ int warp_clamped[2][THREADS / 32];
  // Thread blocks run in groups of GROUP_M token tiles, channel tile by channel tile, so that
  // the ones resident at once share their operand tiles in L2: with plain row order they
  // would span two token tiles and every channel, reading all of wb from DRAM per two tiles.
  int num_m = (tokens + BM - 1) / BM, num_n = (out + BN - 1) / BN;
  int group = GROUP_M * num_n, first_m = (blockIdx.x / group) * GROUP_M;
  int gsize = min(num_m - first_m, GROUP_M), in_group = blockIdx.x % group;
  int m0 = (first_m + in_group % gsize) * BM, n0 = (in_group / gsize) * BN;
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int wm = warp / 4, wn = warp % 4;
  int kt = (r + BK - 1) / BK, total = nb * kt;

  float acc[4][4][4], sum[4][4][4];
#pragma unroll
  for (int a = 0; a < 4; a++)
#pragma unroll
    for (int b = 0; b < 4; b++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc[a][b][e] = sum[a][b][e] = 0.0f;

  auto load = [&](int it) {
    if (it < total) {
      int s = it / kt, k0 = (it % kt) * BK, st = it % STAGES;
      load_tile<T, BM, VEC>(sa + st * BM * BK, xb + (i64)s * tokens * r, tokens, r, m0, k0);
      load_tile<T, BN, VEC>(sb + st * BN * BK, wb + (i64)s * out * r, out, r, n0, k0);
    }
    cp_async_commit();
  };
#pragma unroll
  for (int p = 0; p < STAGES - 1; p++) load(p);

  float two_inv = 2.0f * inv_states;
  const T one = from_f<T>(1.0f);
  for (int it = 0; it < total; it++) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    load(it + STAGES - 1);
    const T *ta = sa + (it % STAGES) * BM * BK, *tb = sb + (it % STAGES) * BN * BK;
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
      unsigned fa[4][4], fb[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; mi++) {
        int row = wm * 64 + mi * 16 + lane % 16;
        ldsm_x4(fa[mi], ta + swz(row, kk * 2 + lane / 16));
      }
#pragma unroll
      for (int nj = 0; nj < 2; nj++) {
        int row = wn * 32 + nj * 16 + lane % 8 + (lane / 16) * 8;
        unsigned q[4];
        ldsm_x4(q, tb + swz(row, kk * 2 + (lane / 8) % 2));
        fb[2 * nj][0] = q[0];
        fb[2 * nj][1] = q[1];
        fb[2 * nj + 1][0] = q[2];
        fb[2 * nj + 1][1] = q[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++) Mma<T>::run(acc[mi][ni], fa[mi], fb[ni]);
    }
    if (it % kt != kt - 1) continue;

    // Row block s is complete: its sums through the ADC into `sum`. Thread (g, c) of a warp
    // holds rows g and g + 8 of each 16-row slice and channels 2c, 2c + 1 of each 8.
    int s = it / kt, g = lane / 4, c = lane % 4;
    float bd[4][2], iv[4][2];
#pragma unroll
    for (int ni = 0; ni < 4; ni++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        int col = n0 + wn * 32 + ni * 8 + 2 * c + h;
        bd[ni][h] = col < out ? bound[(i64)s * out + col] : 0.0f;
        iv[ni][h] = col < out ? inv_res[(i64)s * out + col] : 0.0f;
      }
    bool clamped = false;
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
      for (int ni = 0; ni < 4; ni++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          float x = to_f(from_f<T>(acc[mi][ni][e]));
          x = adc_out(x, bd[ni][e % 2], two_inv, iv[ni][e % 2], adc, clamped);
          sum[mi][ni][e] = s == 0 ? x : sum[mi][ni][e] + x;
        }
    // A 64 x 64 flag tile is two warps' outputs (warp and warp ^ 1): both write their block
    // sums to yb when either clamped.
    bool any = __any_sync(0xffffffffu, clamped);
    if (lane == 0) warp_clamped[s & 1][warp] = any;
    __syncthreads();
    if (warp_clamped[s & 1][warp] | warp_clamped[s & 1][warp ^ 1]) {
      int tile_t = (m0 + wm * 64) / FLAG_TILE, tile_o = (n0 + wn * 32) / FLAG_TILE;
      if (lane == 0 && wn % 2 == 0) {
        flags[((i64)s * ft + tile_t) * fo + tile_o] = one;
        flags[(i64)nb * ft * fo] = one;
      }
#pragma unroll
      for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
          for (int e = 0; e < 4; e++) {
            int row = m0 + wm * 64 + mi * 16 + g + (e / 2) * 8;
            int col = n0 + wn * 32 + ni * 8 + 2 * c + e % 2;
            if (row < tokens && col < out)
              yb[((i64)s * tokens + row) * out + col] = from_f<T>(acc[mi][ni][e]);
          }
    }
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
      for (int ni = 0; ni < 4; ni++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.0f;
  }
  cp_async_wait<0>();

  int g = lane / 4, c = lane % 4;
#pragma unroll
  for (int mi = 0; mi < 4; mi++)
#pragma unroll
    for (int ni = 0; ni < 4; ni++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int row = m0 + wm * 64 + mi * 16 + g + (e / 2) * 8;
        int col = n0 + wn * 32 + ni * 8 + 2 * c + e % 2;
        if (row < tokens && col < out) y[(i64)row * out + col] = from_f<T>(sum[mi][ni][e]);
      }
}

// adc_gemm16_*: 16-byte cp.async loads; adc_gemm_*: element by element (any r, alignment).
#define INSTANTIATE(T, SUF, NAME, VEC)                                                             \
  extern "C" __global__ void __launch_bounds__(THREADS, 1)                                         \
      NAME##_##SUF(const T *xb, const T *wb, const float *bound, const float *inv_res, T *y,       \
                   T *flags, T *yb, int tokens, int out, int r, int nb, float inv_states, int adc, \
                   int ft, int fo) {                                                               \
    adc_gemm<T, VEC>(xb, wb, bound, inv_res, y, flags, yb, tokens, out, r, nb, inv_states, adc,    \
                     ft, fo);                                                                      \
  }

INSTANTIATE(__nv_bfloat16, bf16, adc_gemm16, true)
INSTANTIATE(__nv_bfloat16, bf16, adc_gemm, false)
INSTANTIATE(__half, f16, adc_gemm16, true)
INSTANTIATE(__half, f16, adc_gemm, false)
