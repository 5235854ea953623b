// A stand-alone lab for the forward product with the ADC inside on Hopper (issue 9): the
// kernel below against cuBLAS's blocked product plus the crate's adc_sum kernel, and against one
// plain product of the same size, on random operands of one shape; the counts of outputs and
// clamp flags that differ, and the median times (CUDA events). No Rust: built and run by
// `scripts/device/adc-gemm-lab.sh`, so the kernel can be tuned before it goes into the crate.
//
// What the product with the ADC inside must do: y[t, c] = sum over row blocks s, in ascending
// order in f32, of ADC_s,c(bf16(sum over k < R of xb[s, t, k] wb[s, c, k])), the ADC being the
// crate's adc_sum (level rint(x / res), clamp to +-bound, exact ties by the division); clamp
// flags per 64 x 64 tile and block, and the block sums of flagged tiles in yb. cuBLAS must write
// all nb x T x out block sums to memory for the ADC to read back (at d = 8192, 4096 tokens:
// 1 GB each way); here they stay in registers.
//
// Design (session 36): one 128 x 128 output tile per thread block of two warpgroups, each
// owning 64 tokens x 128 channels; thread 0 also keeps STAGES k-steps of operand tiles in
// flight by TMA (128-byte swizzle). Each warpgroup has TWO accumulator sets: block s's
// products (wgmma m64n128k16) go into one set while the warpgroup converts block s - 1's
// sums from the other, two of its sixteen four-output groups after each of the eight k-steps.
// A warpgroup waits for its own k-step's products before that (wait_group 0: with 1, ptxas
// 13.0 serialized every wgmma), so the other warpgroup's products are what keeps the tensor
// cores busy meanwhile; by issue slots the ADC is ~30% of the products' time. Session 32's
// kernel, which converted a whole block at once in separate warpgroups, ran at a third of
// cuBLAS's rate. The running sums live in shared memory (a float4 load and store per four
// outputs): with them in registers too (192) ptxas spilled.
//
// Measured on an H100 (session 37, benches/RESULTS.md): right, but 1.5-2.7x slower than the
// two kernels. Compile-time switches for finding where the time goes: -DLAB_NO_ADC (the main
// loop alone, the ADC of the last block only), -DLAB_NO_YB (nothing stored for clamped tiles:
// neither flags nor block sums), -DLAB_ATOMIC_REFILL (the warpgroup that finishes a stage
// second refills it, instead of thread 0 waiting for both). After the check, the two kernels also run over token chunks
// (each chunk's block sums read back while in L2).

#include <cuda.h>

// The crate's kernels, compiled in: the reference is its own adc_sum (the layer's two-kernel
// path is cuBLAS's blocked product then adc_sum), and this kernel decides levels with the same
// adc_window / adc_level. Built with --fmad=false as build.rs builds them.
#include "../../kernels/analog_train.cu"

#include "adc_lab_common.cuh"

#define BM 128
#define BN 128
#define BK 64
#define STAGES 4
#define STAGE_BYTES ((BM + BN) * BK * 2)
#define THREADS 256
#define MAX_NB 16
// k-steps per 512-row block: the lab's blocks are 512 rows (r = KT * BK).
#define KT 8
// Stages, the per-block (step, 1 / res) pairs of the tile's channels, the running sums (a
// float4 per thread and four-output group), 1024 for alignment.
#define SUM_BYTES (16 * THREADS * 16)
#define SMEM_BYTES (STAGES * STAGE_BYTES + MAX_NB * BN * 8 + SUM_BYTES + 1024)

// ---- Hopper plumbing: mbarriers, TMA, wgmma -------------------------------------------------

struct alignas(128) TmaDesc {
  unsigned long long v[16];
};

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void bar_init(uint64_t *bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
}
__device__ __forceinline__ void bar_expect_tx(uint64_t *bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bar_arrive(uint64_t *bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void bar_wait(uint64_t *bar, int parity) {
  asm volatile("{\n.reg .pred done;\nWAIT_%=:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
               "@!done bra WAIT_%=;\n}\n" ::"r"(smem_u32(bar)),
               "r"(parity)
               : "memory");
}
__device__ __forceinline__ void tma_load(void *dst, const TmaDesc *map, uint64_t *bar, int k,
                                         int row, int s) {
  asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
               " [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(smem_u32(dst)),
               "l"((uint64_t)map), "r"(smem_u32(bar)), "r"(k), "r"(row), "r"(s)
               : "memory");
}
// K-major tile in TMA's 128-byte swizzle: rows of 128 bytes, 8-row groups 1024 bytes apart.
__device__ __forceinline__ uint64_t sw128_desc(const void *p) {
  uint64_t a = smem_u32(p);
  return ((a & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void pin(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; i++) asm volatile("" : "+f"(d[i])::"memory");
}

__device__ __forceinline__ void wgmma128(float (&d)[64], uint64_t da, uint64_t db, int acc) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
               "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
               "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
               "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                 "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                 "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
                 "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                 "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
                 "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
                 "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                 "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
                 "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
                 "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
               : "l"(da), "l"(db), "r"(acc));
}

// Whether p holds for any of the `count` threads at named barrier `id`.
__device__ __forceinline__ bool bar_any(int id, int count, bool p) {
  uint32_t r;
  asm volatile("{\n.reg .pred p, q;\nsetp.ne.u32 p, %1, 0;\n"
               "barrier.red.or.pred q, %2, %3, p;\nselp.u32 %0, 1, 0, q;\n}\n"
               : "=r"(r)
               : "r"((uint32_t)p), "r"(id), "r"(count)
               : "memory");
  return r != 0;
}

// ---- the kernel -----------------------------------------------------------------------------

struct Args {
  const float *bound, *inv_res;
  bf16 *y, *flags, *yb;
  int tokens, out, r, nb, ft, fo;
  float inv_states;
};

// Accumulator i of a consumer thread: token row_of(i) of its warpgroup's 64, channel col_of(i)
// of the tile's 128 (the PTX ISA's wgmma D fragment for m64n128).
__device__ __forceinline__ int row_of(int wq, int lane, int i) {
  return wq * 16 + lane / 4 + 8 * (i / 2 % 2);
}
__device__ __forceinline__ int col_of(int lane, int i) { return (i / 4) * 8 + (lane % 4) * 2 + i % 2; }

struct Consumer {
  Args a;
  const float4 *sp;  // (nb, BN / 2): (step, 1 / res) of channels 2j, 2j + 1
  int wq, lane, m0, n0, tok0;
  float two_inv, win, lim;

  // Four-output group j (accumulators 4j .. 4j + 3: two tokens x two channels) of block s
  // through the ADC into sum; rare outputs (a quotient near a half step, a level that may
  // clamp, a bound off) take the checked path. Returns clamp bits (1: channel tile 0, 2: 1).
  __device__ __forceinline__ int adc_group(const float (&acc)[64], float4 *sum, int s, int j) {
    float4 p = sp[s * (BN / 2) + j * 4 + lane % 4];
    float st[2] = {p.x, p.z}, iv[2] = {p.y, p.w};
    float x[4], lv[4];
    bool near = false;
#pragma unroll
    for (int k = 0; k < 4; k++) {
      x[k] = __bfloat162float(__float2bfloat16(acc[4 * j + k]));
      float q = x[k] * iv[k % 2];
      lv[k] = rintf(q);
      near |= !(fabsf(q - lv[k]) < win) | !(fabsf(lv[k]) < lim);
    }
    float4 *sj = sum + j * THREADS + threadIdx.x, v = *sj;
    if (!near) {
      v.x = v.x + lv[0] * st[0];
      v.y = v.y + lv[1] * st[1];
      v.z = v.z + lv[2] * st[0];
      v.w = v.w + lv[3] * st[1];
      *sj = v;
      return 0;
    }
    int bits = 0;
    float q[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
      int c = n0 + col_of(lane, 4 * j + k), t = tok0 + row_of(wq, lane, 4 * j + k);
      bool cl = false;
      float b = c < a.out ? a.bound[(i64)s * a.out + c] : 0.0f;
      q[k] = adc_checked(x[k], b, iv[k % 2], two_inv, win, &cl);
      if (cl && t < a.tokens) bits |= col_of(lane, 4 * j + k) < 64 ? 1 : 2;
    }
    v.x = v.x + q[0];
    v.y = v.y + q[1];
    v.z = v.z + q[2];
    v.w = v.w + q[3];
    *sj = v;
    return bits;
  }

  // After block s's ADC: the warpgroup votes on its two flag tiles; where one clamped, its
  // flag is set and all its block sums go to yb.
  __device__ __forceinline__ void flag(const float (&acc)[64], int s, int bits, int bar_id) {
    if (!bar_any(bar_id, 128, bits != 0)) return;
#ifndef LAB_NO_YB
    bool q0 = bar_any(bar_id, 128, bits & 1), q1 = bar_any(bar_id, 128, bits & 2);
    int tile_t = tok0 / FLAG_TILE;
    if (wq == 0 && lane == 0) {
      if (q0) a.flags[((i64)s * a.ft + tile_t) * a.fo + n0 / FLAG_TILE] = __float2bfloat16(1.0f);
      if (q1) a.flags[((i64)s * a.ft + tile_t) * a.fo + n0 / FLAG_TILE + 1] = __float2bfloat16(1.0f);
    }
#pragma unroll
    for (int i = 0; i < 64; i++) {
      int c = n0 + col_of(lane, i), t = tok0 + row_of(wq, lane, i);
      bool mine = col_of(lane, i) < 64 ? q0 : q1;
      if (mine && c < a.out && t < a.tokens)
        a.yb[((i64)s * a.tokens + t) * a.out + c] = __float2bfloat16(acc[i]);
    }
#endif
  }
};

__global__ void __launch_bounds__(THREADS, 1)
    adc_gemm(const __grid_constant__ TmaDesc map_x, const __grid_constant__ TmaDesc map_w,
             Args a) {
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t full[STAGES], empty[STAGES];
#ifdef LAB_ATOMIC_REFILL
  __shared__ int refill[STAGES];
#endif
  unsigned char *smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  float4 *sp = (float4 *)(smem + STAGES * STAGE_BYTES);
  int num_m = (a.tokens + BM - 1) / BM;
  // Channel tile by channel tile in groups of eight token tiles (L2 reuse of both operands).
  int num_n = (a.out + BN - 1) / BN, group = 8 * num_n, first_m = (blockIdx.x / group) * 8;
  int gsize = min(num_m - first_m, 8), in_group = blockIdx.x % group;
  int m0 = (first_m + in_group % gsize) * BM, n0 = (in_group / gsize) * BN;
  int kt = KT, nb = a.nb, total = nb * kt;

  if (threadIdx.x == 0) {
    for (int st = 0; st < STAGES; st++) {
      bar_init(&full[st], 1);
      bar_init(&empty[st], 8);
#ifdef LAB_ATOMIC_REFILL
      refill[st] = 0;
#endif
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  // (step, 1 / res) of the tile's channels for every block, as adc_sum computes them.
  float two_inv = 2.0f * a.inv_states;
  for (int e = threadIdx.x; e < nb * BN; e += THREADS) {
    int s = e / BN, c = n0 + e % BN;
    float b = c < a.out ? a.bound[(i64)s * a.out + c] : 0.0f;
    float iv = c < a.out ? a.inv_res[(i64)s * a.out + c] : __int_as_float(0x7fffffff);
    ((float2 *)sp)[e] = make_float2(b * two_inv, iv);
  }
  __syncthreads();

  // Thread 0 also loads the stages (TMA): the block's 256 threads may then hold 255 registers
  // each, where a separate producer warpgroup would cap all at 168.
  auto load = [&](int it) {
    int st = it % STAGES, s = it / kt, k0 = (it % kt) * BK;
    bar_expect_tx(&full[st], STAGE_BYTES);
    unsigned char *base = smem + st * STAGE_BYTES;
    tma_load(base, &map_x, &full[st], k0, m0, s);
    tma_load(base + BM * BK * 2, &map_w, &full[st], k0, n0, s);
  };
  if (threadIdx.x == 0)
    for (int it = 0; it < min(STAGES, total); it++) load(it);
  int cw = __shfl_sync(0xffffffffu, (int)threadIdx.x / 128, 0);
  int lane = threadIdx.x % 32, wq = (threadIdx.x / 32) % 4;
  Consumer cs{a, sp, wq, lane, m0, n0, m0 + cw * 64, two_inv, adc_window(a.inv_states),
              (0.5f / a.inv_states) * 0.99999f};
  float a0[64], a1[64];
  // Running sums: float4 j of this thread at sum[j * THREADS + threadIdx.x] (no bank
  // conflicts); -0 is the sum's exact identity, as in adc_sum.
  float4 *sum = (float4 *)(smem + STAGES * STAGE_BYTES + MAX_NB * BN * 8);
#pragma unroll
  for (int j = 0; j < 16; j++) sum[j * THREADS + threadIdx.x] = make_float4(-0.0f, -0.0f, -0.0f, -0.0f);

  // Block s's k-steps into acc_n, with block s - 1's ADC (from acc_p, complete once the first
  // k-step's wait has passed) two groups after each k-step; then its flags.
  auto run = [&](float(&acc_n)[64], float(&acc_p)[64], int s, bool adc_prev) {
    int bits = 0;
#pragma unroll
    for (int kk = 0; kk < KT; kk++) {
      int it = s * KT + kk, st = it % STAGES;
      bar_wait(&full[st], (it / STAGES) & 1);
      const unsigned char *base = smem + st * STAGE_BYTES;
      const bf16 *tx = (const bf16 *)base + cw * 64 * BK, *tw = (const bf16 *)(base + BM * BK * 2);
      wg_fence();
#pragma unroll
      for (int k16 = 0; k16 < BK / 16; k16++)
        wgmma128(acc_n, sw128_desc(tx + k16 * 16), sw128_desc(tw + k16 * 16),
                 kk == 0 && k16 == 0 ? 0 : 1);
      wg_commit();
      // All of this warpgroup's products done: with wait_group 1 (the k-step's products still
      // running while the ADC reads the other set) ptxas 13.0 serialized every wgmma (C7514);
      // the other warpgroup's products fill the tensor cores meanwhile.
      wg_wait<0>();
      pin(acc_n);
      pin(acc_p);
#ifdef LAB_ATOMIC_REFILL
      asm volatile("bar.sync %0, 128;\n" ::"r"(3 + cw) : "memory");
      if (threadIdx.x % 128 == 0 && it + STAGES < total && (atomicAdd(&refill[st], 1) & 1))
        load(it + STAGES);
#else
      if (lane == 0) bar_arrive(&empty[st]);
      // The stage both warpgroups have finished gets the k-step STAGES ahead.
      if (threadIdx.x == 0 && it + STAGES < total) {
        bar_wait(&empty[st], (it / STAGES) & 1);
        load(it + STAGES);
      }
#endif
      // Sixteen groups over the KT k-steps (two after each): constant indices, so the
      // accumulators stay in registers.
#ifdef LAB_NO_ADC
      if (false) {
#else
      if (adc_prev) {
#endif
#pragma unroll
        for (int j = kk * (16 / KT); j < (kk + 1) * (16 / KT); j++)
          bits |= cs.adc_group(acc_p, sum, s - 1, j);
      }
    }
#ifndef LAB_NO_ADC
    if (adc_prev) cs.flag(acc_p, s - 1, bits, 1 + cw);
#endif
  };
  // The last block's ADC, with no products left to hide it.
  auto finish = [&](float(&acc)[64]) {
    pin(acc);
    int bits = 0;
#pragma unroll
    for (int j = 0; j < 16; j++) bits |= cs.adc_group(acc, sum, nb - 1, j);
    cs.flag(acc, nb - 1, bits, 1 + cw);
  };

  // Blocks in pairs (nb even): each inlined copy of run has its two sets fixed, so no set is
  // picked at run time (which would send both to local memory).
  run(a0, a1, 0, false);
  for (int s = 1; s + 1 < nb; s += 2) {
    run(a1, a0, s, true);
    run(a0, a1, s + 1, true);
  }
  run(a1, a0, nb - 1, true);
  finish(a1);
  // y: two adjacent channels per store.
#pragma unroll
  for (int i = 0; i < 64; i += 2) {
    int c = n0 + col_of(lane, i), t = cs.tok0 + row_of(wq, lane, i);
    if (t >= a.tokens) continue;
    float4 v = sum[(i / 4) * THREADS + threadIdx.x];
    float u0 = i % 4 == 0 ? v.x : v.z, u1 = i % 4 == 0 ? v.y : v.w;
    bf16 *dst = a.y + (i64)t * a.out + c;
    if (c + 1 < a.out && a.out % 2 == 0) {
      *(__nv_bfloat162 *)dst = __floats2bfloat162_rn(u0, u1);
    } else {
      if (c < a.out) dst[0] = __float2bfloat16(u0);
      if (c + 1 < a.out) dst[1] = __float2bfloat16(u1);
    }
  }
}

// ---- host -----------------------------------------------------------------------------------

static TmaDesc tensor_map(void *ptr, int nb, int rows, int r, int box_rows) {
  CUtensorMap map;
  cuuint64_t dims[3] = {(cuuint64_t)r, (cuuint64_t)rows, (cuuint64_t)nb};
  cuuint64_t strides[2] = {(cuuint64_t)r * 2, (cuuint64_t)rows * r * 2};
  cuuint32_t boxes[3] = {BK, (cuuint32_t)box_rows, 1}, es[3] = {1, 1, 1};
  CUresult res = cuTensorMapEncodeTiled(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, ptr, dims,
                                        strides, boxes, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                        CU_TENSOR_MAP_SWIZZLE_128B,
                                        CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (res != CUDA_SUCCESS) {
    fprintf(stderr, "cuTensorMapEncodeTiled failed (%d)\n", (int)res);
    exit(1);
  }
  TmaDesc d;
  memcpy(&d, &map, sizeof d);
  return d;
}

int main(int argc, char **argv) {
  LabShape L = lab_shape(argc, argv);
  int reps = argc > 4 ? atoi(argv[4]) : 20;
  int tokens = L.tokens, out = L.out, nb = L.nb, r = L.r;
  if (nb > MAX_NB || nb < 2 || nb % 2) {
    fprintf(stderr, "d / 512 must be even, 2..%d\n", MAX_NB);
    return 1;
  }
  bf16 *y, *fl, *yb;
  CK(cudaMalloc(&yb, (size_t)nb * tokens * out * 2));
  CK(cudaMalloc(&y, (size_t)tokens * out * 2));
  CK(cudaMalloc(&fl, L.nfl * 2));
  TmaDesc mx = tensor_map(L.x, nb, tokens, r, BM), mw = tensor_map(L.w, nb, out, r, BN);
  Args args{L.bound, L.inv, y, fl, yb, tokens, out, r, nb, L.ft, L.fo, L.inv_states};
  CK(cudaFuncSetAttribute(adc_gemm, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES));
  int blocks = ((tokens + BM - 1) / BM) * ((out + BN - 1) / BN);
  auto fused = [&]() {
    cudaMemsetAsync(fl, 0, L.nfl * 2);
    adc_gemm<<<blocks, THREADS, SMEM_BYTES>>>(mx, mw, args);
  };
  auto two = [&]() { lab_two_kernel(L); };
  two();
  fused();
  CK(cudaDeviceSynchronize());
  CK(cudaGetLastError());
  lab_check_y(L, y);
  lab_check_flags(L, fl);

  float t_two = lab_median_us(two, reps), t_fused = lab_median_us(fused, reps);
  float t_plain = lab_median_us([&]() { lab_plain(L); }, reps);
  float t_blocked = lab_median_us([&]() { lab_blocked(L, 0, tokens); }, reps);
  CK(cudaGetLastError());
  // The two kernels over token chunks, each chunk's planes read back by adc_sum while they
  // are still in L2.
  auto ref = lab_fetch(L.y_ref, (size_t)tokens * out);
  for (int chunk : {128, 256, 512, 1024}) {
    if (chunk >= tokens) continue;
    auto chunked = [&]() {
      cudaMemsetAsync(L.fl_ref, 0, L.nfl * 2);
      for (int t0 = 0; t0 < tokens; t0 += chunk) {
        int n = std::min(chunk, tokens - t0);
        lab_blocked(L, t0, n);
        lab_adc_sum(L, L.plain_out, t0, n);
      }
    };
    chunked();
    auto cy = lab_fetch(L.plain_out, ref.size());
    size_t cd = 0;
    for (size_t e = 0; e < cy.size(); e++) cd += __bfloat162float(cy[e]) != __bfloat162float(ref[e]);
    printf("chunks of %d tokens: outputs differing %zu, median us %.1f (two-kernel %.1f)\n", chunk,
           cd, lab_median_us(chunked, reps), t_two);
  }
  double tflops = 2.0 * tokens * out * (double)nb * r / (t_fused * 1e-6) / 1e12;
  printf("median us: cuBLAS blocked product %.1f, + adc_sum %.1f, one kernel %.1f "
         "(%.0f TFLOP/s), plain product %.1f; one kernel / two-kernel %.2f, one kernel / "
         "plain %.2f\n",
         t_blocked, t_two, t_fused, tflops, t_plain, t_fused / t_two, t_fused / t_plain);
  return 0;
}
