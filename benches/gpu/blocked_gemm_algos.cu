// cuBLASLt's algorithms for the layer's blocked forward product (issue 9): the product that
// writes every 512-row block's partial sums as a plane of its own for adc_sum to read back.
// On an H100 cuBLAS's default for it took 1.2-1.4x the plain product of the same size
// (844 against 683 us at d = 8192, 4096 tokens; session 43), where the plain layer does one
// product and the blocked one must store nb planes: is there an algorithm that stores them
// for less? Here every algorithm cuBLASLt's heuristic offers for the blocked product (and for
// the plain one) is timed, and checked bit for bit against cublasGemmStridedBatchedEx's
// default (what candle's matmul calls in the crate). A second layout is timed too: the planes
// interleaved per token, (tokens, nb, out) instead of (nb, tokens, out), which adc_sum would
// read as one contiguous run per token.
//
// No Rust: built here by `scripts/device/adc-gemm-lab.sh build-algos` (nvcc, cuBLAS and
// cuBLASLt of ../shared/tools/cuda-env.sh), run on the device by `adc-gemm-lab.sh run OUT`
// with the other labs. Arguments as the labs': d tokens lambda reps.

#include <cublasLt.h>

#include "../../kernels/analog_train.cu"

#include "adc_lab_common.cuh"

#define LT(x)                                                                      \
  do {                                                                             \
    cublasStatus_t s_ = (x);                                                       \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                             \
      fprintf(stderr, "%s:%d cuBLASLt status %d\n", __FILE__, __LINE__, (int)s_); \
      exit(1);                                                                     \
    }                                                                              \
  } while (0)

// A column-major bf16 matrix of rows x cols (leading dimension ld), `batch` of them `stride`
// elements apart.
static cublasLtMatrixLayout_t lt_layout(int rows, int cols, i64 ld, int batch, i64 stride) {
  cublasLtMatrixLayout_t l;
  LT(cublasLtMatrixLayoutCreate(&l, CUDA_R_16BF, rows, cols, ld));
  LT(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
  LT(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                      sizeof stride));
  return l;
}

// One product D = op(A)^T B per batch in cuBLAS's column-major terms (A: k x m, B: k x n, D:
// m x n): the layer's (tokens, out) outputs seen transposed, as lab_blocked calls it.
struct LtProduct {
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t a, b, d;
  const bf16 *pa, *pb;
  bf16 *pd;
};

static LtProduct lt_product(int m, int n, int k, int batch, const bf16 *a, i64 sa, const bf16 *b,
                            i64 sb, bf16 *d, i64 ldd, i64 sd) {
  LtProduct p;
  LT(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
  LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
  LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof nn));
  p.a = lt_layout(k, m, k, batch, sa);
  p.b = lt_layout(k, n, k, batch, sb);
  p.d = lt_layout(m, n, ldd, batch, sd);
  p.pa = a, p.pb = b, p.pd = d;
  return p;
}

static const size_t WORKSPACE = 64u << 20;

static void lt_run(cublasLtHandle_t lt, const LtProduct &p, const cublasLtMatmulAlgo_t *algo,
                   void *ws) {
  float one = 1.0f, zero = 0.0f;
  LT(cublasLtMatmul(lt, p.op, &one, p.pa, p.a, p.pb, p.b, &zero, p.pd, p.d, p.pd, p.d, algo, ws,
                    WORKSPACE, 0));
}

static int algo_attr(const cublasLtMatmulAlgo_t &a, cublasLtMatmulAlgoConfigAttributes_t what) {
  int v = 0;
  size_t got;
  cublasLtMatmulAlgoConfigGetAttribute(&a, what, &v, sizeof v, &got);
  return v;
}

// Every algorithm the heuristic offers for p, timed; with `ref`, the elements of its result
// that differ from ref's bits. Returns the fastest time in us.
static float lt_sweep(cublasLtHandle_t lt, const LtProduct &p, void *ws, const char *name,
                      const std::vector<bf16> *ref, size_t n_out, int reps) {
  cublasLtMatmulPreference_t pref;
  LT(cublasLtMatmulPreferenceCreate(&pref));
  LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                          &WORKSPACE, sizeof WORKSPACE));
  cublasLtMatmulHeuristicResult_t res[64];
  int found = 0;
  LT(cublasLtMatmulAlgoGetHeuristic(lt, p.op, p.a, p.b, p.d, p.d, pref, 64, res, &found));
  float best = 1e30f;
  for (int i = 0; i < found; i++) {
    const cublasLtMatmulAlgo_t *algo = &res[i].algo;
    lt_run(lt, p, algo, ws);
    CK(cudaDeviceSynchronize());
    size_t differ = 0;
    if (ref) {
      auto got = lab_fetch(p.pd, n_out);
      for (size_t e = 0; e < n_out; e++)
        differ += __bfloat16_as_ushort(got[e]) != __bfloat16_as_ushort((*ref)[e]);
    }
    float us = lab_median_us([&]() { lt_run(lt, p, algo, ws); }, reps);
    best = std::min(best, us);
    printf("%s algo %2d: id %3d tile %3d stages %3d splitk %2d swizzle %d cluster %2d waves %.2f"
           " ws %8zu: %9.1f us%s",
           name, i, algo_attr(res[i].algo, CUBLASLT_ALGO_CONFIG_ID),
           algo_attr(res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID),
           algo_attr(res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID),
           algo_attr(res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
           algo_attr(res[i].algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
           algo_attr(res[i].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID), res[i].wavesCount,
           res[i].workspaceSize, us, ref ? "" : "\n");
    if (ref) printf(", %zu of %zu elements differ from the default's\n", differ, n_out);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  return best;
}

int main(int argc, char **argv) {
  LabShape L = lab_shape(argc, argv);
  int reps = argc > 4 ? atoi(argv[4]) : 10;
  int tokens = L.tokens, out = L.out, nb = L.nb, r = L.r;
  size_t n_planes = (size_t)nb * tokens * out;
  lab_blocked(L, 0, tokens);
  CK(cudaDeviceSynchronize());
  auto ref = lab_fetch(L.planes, n_planes);
  float t_default = lab_median_us([&]() { lab_blocked(L, 0, tokens); }, reps);
  float t_plain = lab_median_us([&]() { lab_plain(L); }, reps);
  float t_two = lab_median_us([&]() { lab_two_kernel(L); }, reps);
  printf("d %d tokens %d: cuBLAS default blocked %.1f us, plain %.1f us, blocked + adc_sum %.1f"
         " us\n",
         L.d, tokens, t_default, t_plain, t_two);

  cublasLtHandle_t lt;
  LT(cublasLtCreate(&lt));
  void *ws;
  CK(cudaMalloc(&ws, WORKSPACE));
  bf16 *inter;
  CK(cudaMalloc(&inter, n_planes * 2));
  LtProduct planes = lt_product(out, tokens, r, nb, L.w, (i64)out * r, L.x, (i64)tokens * r,
                                L.planes, out, (i64)tokens * out);
  LtProduct interleaved = lt_product(out, tokens, r, nb, L.w, (i64)out * r, L.x, (i64)tokens * r,
                                     inter, (i64)nb * out, out);
  int k = nb * r;
  LtProduct plain = lt_product(out, tokens, k, 1, L.w, 0, L.x, 0, L.plain_out, out, 0);
  float b_planes = lt_sweep(lt, planes, ws, "planes", &ref, n_planes, reps);
  float b_inter = lt_sweep(lt, interleaved, ws, "interleaved", nullptr, 0, reps);
  float b_plain = lt_sweep(lt, plain, ws, "plain", nullptr, 0, reps);
  printf("d %d tokens %d summary: blocked default %.1f, best planes %.1f (%.3f of default), best "
         "interleaved %.1f, plain default %.1f, best plain %.1f; best planes / best plain %.3f\n",
         L.d, tokens, t_default, b_planes, b_planes / t_default, b_inter, t_plain, b_plain,
         b_planes / b_plain);
  return 0;
}
