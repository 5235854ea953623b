// What the two stand-alone labs of the forward product with the ADC inside share
// (adc_gemm_lab.cu: a hand-written wgmma kernel; adc_gemm_cutlass.cu: CUTLASS's Hopper main
// loop): one shape's random operands laid out as the crate lays them out, the reference
// (cuBLAS's blocked product, then the crate's own adc_sum kernel), the checks against it and
// the timer, and the ADC's checked path. Each lab includes the crate's kernels
// (../../kernels/analog_train.cu) first.

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <vector>

#define CK(x)                                                                  \
  do {                                                                         \
    cudaError_t e_ = (x);                                                      \
    if (e_ != cudaSuccess) {                                                   \
      fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

typedef __nv_bfloat16 bf16;

// One block output x (already rounded to bf16) through the ADC of bound b (adc_sum's checked
// path: the quotient left adc_level's window, or the bound is off): the output, and whether
// the clamp cut it ORed into *clamped.
__device__ __forceinline__ float adc_checked(float x, float b, float iv, float two_inv, float win,
                                             bool *clamped) {
  if (!(b > 0.0f)) return x;
  float lv = adc_level(x, b * two_inv, iv, win);
  float q = lv * (b * two_inv), cl = fmaxf(fminf(q, b), -b);
  *clamped |= cl != q;
  return cl;
}

// One shape of the layer's forward: xb (nb, tokens, r) on the DAC's levels, wb (nb, out, r),
// the (block, channel) bounds and 1 / res as adc_prep makes them, and the reference outputs.
struct LabShape {
  int d, tokens, r, nb, out, ft, fo, mb;
  float lambda, inv_states;
  size_t nfl;
  bf16 *x, *w, *planes, *y_ref, *fl_ref, *plain_out;
  uint8_t *clamps_ref;
  float *bound, *inv;
  std::vector<float> hb;
  cublasHandle_t h;
};

static uint64_t lab_rng = 0x9E3779B97F4A7C15ull;
static double lab_uniform() {
  lab_rng ^= lab_rng << 13, lab_rng ^= lab_rng >> 7, lab_rng ^= lab_rng << 17;
  return (lab_rng >> 11) * (1.0 / 9007199254740992.0);
}

// Arguments: d tokens lambda (defaults 8192 4096 14); r = 512 rows per block, out = d.
static LabShape lab_shape(int argc, char **argv) {
  LabShape L;
  L.d = argc > 1 ? atoi(argv[1]) : 8192;
  L.tokens = argc > 2 ? atoi(argv[2]) : 4096;
  L.lambda = argc > 3 ? atof(argv[3]) : 14.0f;
  L.r = 512, L.nb = L.d / L.r, L.out = L.d;
  L.ft = (L.tokens + FLAG_TILE - 1) / FLAG_TILE, L.fo = (L.out + FLAG_TILE - 1) / FLAG_TILE;
  L.mb = (L.out + 7) / 8;
  L.inv_states = (float)(1.0 / 254.0);
  L.nfl = (size_t)L.nb * L.ft * L.fo;
  int nb = L.nb, r = L.r, out = L.out, tokens = L.tokens;
  // Inputs on the DAC's levels (range 1, 8 bits), weights ~N(0, 0.02): what the layer feeds.
  std::vector<bf16> hx((size_t)nb * tokens * r), hw((size_t)nb * out * r);
  for (auto &v : hx) v = __float2bfloat16((float)(int)((lab_uniform() * 2 - 1) * 127) / 127.0f);
  for (auto &v : hw) {
    double u = std::max(lab_uniform(), 1e-12), w = lab_uniform();
    v = __float2bfloat16((float)(0.02 * sqrt(-2 * log(u)) * cos(6.283185307179586 * w)));
  }
  // Bounds as adc_prep makes them: (wmax * lambda) * range, range 1.
  L.hb.resize((size_t)nb * out);
  std::vector<float> hi((size_t)nb * out);
  for (int s = 0; s < nb; s++)
    for (int c = 0; c < out; c++) {
      float m = 0;
      for (int k = 0; k < r; k++)
        m = std::max(m, fabsf(__bfloat162float(hw[((size_t)s * out + c) * r + k])));
      float b = (m * L.lambda) * 1.0f;
      L.hb[(size_t)s * out + c] = b;
      hi[(size_t)s * out + c] = 1.0f / ((b * 2.0f) * L.inv_states);
    }
  CK(cudaMalloc(&L.clamps_ref, (size_t)nb * tokens * L.mb));
  CK(cudaMalloc(&L.x, hx.size() * 2));
  CK(cudaMalloc(&L.w, hw.size() * 2));
  CK(cudaMalloc(&L.planes, (size_t)nb * tokens * out * 2));
  CK(cudaMalloc(&L.y_ref, (size_t)tokens * out * 2));
  CK(cudaMalloc(&L.plain_out, (size_t)tokens * out * 2));
  CK(cudaMalloc(&L.fl_ref, L.nfl * 2));
  CK(cudaMalloc(&L.bound, L.hb.size() * 4));
  CK(cudaMalloc(&L.inv, hi.size() * 4));
  CK(cudaMemcpy(L.x, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(L.w, hw.data(), hw.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(L.bound, L.hb.data(), L.hb.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(L.inv, hi.data(), hi.size() * 4, cudaMemcpyHostToDevice));
  cublasCreate(&L.h);
  return L;
}

// cuBLAS's blocked product of rows t0 .. t0 + n: every block's partial sums as a plane.
static void lab_blocked(LabShape &L, int t0, int n) {
  float one = 1.0f, zero = 0.0f;
  cublasGemmStridedBatchedEx(L.h, CUBLAS_OP_T, CUBLAS_OP_N, L.out, n, L.r, &one, L.w,
                             CUDA_R_16BF, L.r, (i64)L.out * L.r, L.x + (i64)t0 * L.r, CUDA_R_16BF,
                             L.r, (i64)L.tokens * L.r, &zero, L.planes + (i64)t0 * L.out,
                             CUDA_R_16BF, L.out, (i64)L.tokens * L.out, L.nb, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT);
}

// adc_sum of rows t0 .. t0 + n into y, as src/train/fused/cuda.rs launches it (eight channels
// per thread, at most 256 threads); adc_prep zeroes the flags there, the caller here.
static void lab_adc_sum(LabShape &L, bf16 *y, int t0, int n) {
  int threads = std::min(256, std::max(32, ((L.out + 7) / 8 + 31) / 32 * 32));
  adc_sum_bf16<<<n, threads>>>(L.planes + (i64)t0 * L.out, L.bound, L.inv, y + (i64)t0 * L.out,
                               L.fl_ref + (i64)(t0 / FLAG_TILE) * L.fo,
                               L.clamps_ref + (i64)t0 * L.mb, L.tokens, L.out, L.nb,
                               L.inv_states, 1, L.ft, L.fo);
}

// The layer's two-kernel path: the reference.
static void lab_two_kernel(LabShape &L) {
  lab_blocked(L, 0, L.tokens);
  cudaMemsetAsync(L.fl_ref, 0, L.nfl * 2);
  lab_adc_sum(L, L.y_ref, 0, L.tokens);
}

// The plain product of the same size (x and w reread as (tokens, nb r) and (out, nb r)).
static void lab_plain(LabShape &L) {
  float one = 1.0f, zero = 0.0f;
  int k = L.nb * L.r;
  cublasGemmEx(L.h, CUBLAS_OP_T, CUBLAS_OP_N, L.out, L.tokens, k, &one, L.w, CUDA_R_16BF, k, L.x,
               CUDA_R_16BF, k, &zero, L.plain_out, CUDA_R_16BF, L.out, CUBLAS_COMPUTE_32F,
               CUBLAS_GEMM_DEFAULT);
}

template <typename T> static std::vector<T> lab_fetch(const T *p, size_t n) {
  std::vector<T> v(n);
  CK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

// Outputs of y that differ from the reference's, and the worst gap in units of block 0's ADC
// step at that channel; printed with the shape.
static size_t lab_check_y(LabShape &L, const bf16 *y) {
  auto a = lab_fetch(L.y_ref, (size_t)L.tokens * L.out), b = lab_fetch(y, a.size());
  size_t differ = 0;
  double worst = 0;
  for (int t = 0; t < L.tokens; t++)
    for (int c = 0; c < L.out; c++) {
      size_t e = (size_t)t * L.out + c;
      float u = __bfloat162float(a[e]), v = __bfloat162float(b[e]);
      if (u != v) {
        differ++;
        double step = (L.hb[c] * 2.0) * L.inv_states;
        worst = std::max(worst, fabs((double)u - v) / step);
      }
    }
  printf("d %d tokens %d lambda %g: outputs differing %zu of %zu (%.2e), worst %.2f steps\n", L.d,
         L.tokens, L.lambda, differ, a.size(), (double)differ / a.size(), worst);
  return differ;
}

// Clamp flag tiles set by the reference, and those that differ from `fl`.
static void lab_check_flags(LabShape &L, const bf16 *fl) {
  auto fa = lab_fetch(L.fl_ref, L.nfl), fb = lab_fetch(fl, L.nfl);
  size_t set = 0, differ = 0;
  for (size_t i = 0; i < L.nfl; i++) {
    set += __bfloat162float(fa[i]) != 0;
    differ += __bfloat162float(fa[i]) != __bfloat162float(fb[i]);
  }
  printf("flag tiles set %zu of %zu, differing %zu\n", set, L.nfl, differ);
}

// The median of `reps` calls of f in us, each between two CUDA events, after three warm-ups.
template <typename F> static float lab_median_us(F &&f, int reps) {
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<float> ts;
  for (int i = 0; i < 3; i++) f();
  for (int i = 0; i < reps; i++) {
    cudaEventRecord(e0);
    f();
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    ts.push_back(ms * 1000);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}
