// A stand-alone lab (issue 9): the forward product with the ADC inside, on CUTLASS's Hopper main
// loop. Three hand-written attempts lost to cuBLAS's blocked product plus the crate's adc_sum
// (session 27's mma.sync, 32's and 37's wgmma kernels: their main loops alone ran at 0.6-0.7x
// cuBLAS's rate), and Triton's pointer loads reached 1 / 1.47 of it (session 42). Here CUTLASS
// 4.2's collective (TMA loads, 128-byte swizzle, the stage pipeline, wgmma fragments) does the
// loading and the products, and only the consumer's K loop is ours: every 512-row block's
// partial sums, once its eight k-steps are done, are rounded to bf16 (as cuBLAS stores a plane),
// put through the block's ADC (the crate's adc_sum: level rint(x / res), clamp to +-bound) and
// added to running sums held in registers, so the nb x tokens x out planes never reach memory.
//
// The operands are the crate's blocked layouts read as a batch: xb (nb, tokens, 512) is A with
// L = nb batches of K = 512, wb (nb, out, 512) is B; one thread block walks all nb batches of
// its 128 x 128 output tile (a producer warpgroup issues the TMA loads batch after batch, two
// consumer warpgroups own 64 tokens x 128 channels each). The clamp mask (a bit per output and
// block, as adc_sum writes it) starts zeroed and is written only by warps where something
// clamped, as are the flag tiles. Switch: -DLAB_NO_ADC (block sums added unrounded: the main
// loop and the running sums alone).
//
// Build and run: scripts/device/adc-gemm-lab.sh build-cutlass / run OUT (the lab's reference,
// checks and timer: adc_lab_common.cuh). Measured on an H100 (session 43, benches/RESULTS.md):
// outputs, flags and mask bits equal to cuBLAS + adc_sum, but 2.0-2.2x slower (3,196 against
// 1,470 us at 8192 x 4096); the main loop alone 1.2-1.3x cuBLAS's blocked product. Not kept.

#include "../../kernels/analog_train.cu"

#include <cute/tensor.hpp>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cutlass.h>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/pipeline/pipeline.hpp>

#include "adc_lab_common.cuh"

using namespace cute;

using AdcTile = Shape<_128, _128, _64>;
#ifndef LAB_CLUSTER_M
#define LAB_CLUSTER_M 1
#endif
// LAB_CLUSTER_M thread blocks along the tokens share each weight tile's loads (TMA multicast).
using Cluster = Shape<Int<LAB_CLUSTER_M>, _1, _1>;
using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::bfloat16_t,
    cutlass::layout::RowMajor, 8, cutlass::bfloat16_t, cutlass::layout::ColumnMajor, 8, float,
    AdcTile, Cluster, cutlass::gemm::collective::StageCountAuto,
    cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;
using TiledMma = typename Mainloop::TiledMma;
using Pipeline = typename Mainloop::MainloopPipeline;
using PipeState = typename Mainloop::PipelineState;

// k-steps per 512-row block.
constexpr int KT = 512 / 64;
constexpr int THREADS = 384;

struct LabSmem {
  typename Mainloop::TensorStorage tensors;
  alignas(16) typename Mainloop::PipelineStorage pipeline;
};

struct AdcArgs {
  const float *bound, *inv;
  bf16 *y, *flags;
  uint8_t *clamps;
  int tokens, out, nb, ft, fo, mb;
  float inv_states;
};

struct KernelParams {
  typename Mainloop::Params mainloop;
  AdcArgs a;
};

// The consumer warpgroups' K loop over all blocks of one output tile, the ADC at every block's
// end, then y's tile. `ct` is the thread's index among the 256 consumers.
__device__ __forceinline__ void consume(const KernelParams &p, LabSmem &sh, Pipeline &pipe,
                                        int ct) {
  const AdcArgs &a = p.a;
  TiledMma mma;
  Tensor sA = make_tensor(make_smem_ptr(sh.tensors.smem_A.data()), typename Mainloop::SmemLayoutA{});
  Tensor sB = make_tensor(make_smem_ptr(sh.tensors.smem_B.data()), typename Mainloop::SmemLayoutB{});
  // A and B fragments are shared-memory descriptors, the same for the whole warpgroup.
  auto wg_mma = mma.get_slice((ct / cutlass::NumThreadsPerWarpGroup) * cutlass::NumThreadsPerWarpGroup);
  Tensor tCrA = wg_mma.make_fragment_A(wg_mma.partition_A(sA));  // (MMA, MMA_M, MMA_K, PIPE)
  Tensor tCrB = wg_mma.make_fragment_B(wg_mma.partition_B(sB));  // (MMA, MMA_N, MMA_K, PIPE)
  Tensor acc = partition_fragment_C(mma, take<0, 2>(AdcTile{}));    // (MMA, MMA_M, MMA_N)
  // Each accumulator's (token, channel) within the tile.
  Tensor tCcC = mma.get_slice(ct).partition_C(make_identity_tensor(take<0, 2>(AdcTile{})));
  constexpr int NV = decltype(size(acc))::value;
  // wgmma's accumulators: value (e, h, j) of a thread is token 8 h + lane / 4 of its warp's 16
  // and channel 8 j + 2 (lane % 4) + e; the ADC's loads and the mask's bytes rely on it.
  static_assert(std::is_same_v<decltype(acc.layout()),
                               Layout<Shape<Shape<_2, _2, Int<NV / 4>>, _1, _1>,
                                      Stride<Stride<_1, _2, _4>, _0, _0>>>,
                "accumulator layout ((2, 2, N / 8), 1, 1)");
  static_assert(NV <= 64, "one mask word");
  float sum[NV];
#pragma unroll
  for (int i = 0; i < NV; i++) sum[i] = -0.0f;  // adc_sum's identity: -0 + x is x

  int m0 = blockIdx.x * 128, n0 = blockIdx.y * 128, lane = ct % 32;
  float two_inv = 2.0f * a.inv_states, win = adc_window(a.inv_states);
  const bf16 one = __float2bfloat16(1.0f);
  PipeState rd, rel;
  // One k-step: wait for its stage, issue its products (the block's first one overwrites the
  // accumulators), then wait until at most `in_flight` k-steps' products are outstanding.
  auto k_step = [&](bool first, auto in_flight) {
    auto token = pipe.consumer_try_wait(rd);
    pipe.consumer_wait(rd, token);
    int st = rd.index();
    warpgroup_fence_operand(acc);
    warpgroup_arrive();
#pragma unroll
    for (int kb = 0; kb < size<2>(tCrA); kb++) {
      mma.accumulate_ = first && kb == 0 ? GMMA::ScaleOut::Zero : GMMA::ScaleOut::One;
      cute::gemm(mma, tCrA(_, _, kb, st), tCrB(_, _, kb, st), acc);
    }
    warpgroup_commit_batch();
    ++rd;
    warpgroup_wait<decltype(in_flight)::value>();
    warpgroup_fence_operand(acc);
  };
#ifdef LAB_OFFSET
  // The second warpgroup starts LAB_OFFSET k-steps after the first, so that one's ADC runs
  // while the other's products keep the tensor cores busy.
  if (ct >= cutlass::NumThreadsPerWarpGroup) asm volatile("bar.sync 8, 256;\n" ::: "memory");
#endif
  for (int s = 0; s < a.nb; s++) {
#ifndef LAB_NO_ADC
    // The block's bounds and 1 / res for the tile's 128 channels (4 x 128 bytes each) into L1
    // while its products run, for the ADC's loads at its end.
    if (ct % cutlass::NumThreadsPerWarpGroup < 8) {
      const float *row = (ct % 8 < 4 ? a.bound : a.inv) + (i64)s * a.out + n0 + 32 * (ct % 4);
      asm volatile("prefetch.global.L1 [%0];\n" ::"l"(row));
    }
#endif
    k_step(true, Int<1>{});
    for (int kt = 1; kt < KT - 1; kt++) {
      k_step(false, Int<1>{});
#ifdef LAB_OFFSET
      if (s == 0 && kt == LAB_OFFSET && ct < cutlass::NumThreadsPerWarpGroup)
        asm volatile("bar.arrive 8, 256;\n" ::: "memory");
#endif
      pipe.consumer_release(rel);  // the k-step before this one is done with its stage
      ++rel;
    }
    // The block's last k-step: all its products done before the ADC reads them.
    k_step(false, Int<0>{});
    pipe.consumer_release(rel);
    ++rel;
    pipe.consumer_release(rel);
    ++rel;
#ifdef LAB_NO_ADC
#pragma unroll
    for (int i = 0; i < NV; i++) sum[i] += acc(i);
#else
    const float *bs = a.bound + (i64)s * a.out + n0, *is = a.inv + (i64)s * a.out + n0;
    uint64_t bits = 0;
    // Packs of eight outputs (two channel groups j, both of the thread's tokens, two channels
    // each), as adc_sum's adc_pack: levels and the window test for the pack first, then one
    // branch for the pack, so the common path has no per-output branch and eight independent
    // chains to interleave.
#pragma unroll
    for (int pk = 0; pk < NV / 8; pk++) {
      float b[4], iv[4];  // channel u = e + 2 (j - 2 pk)
#pragma unroll
      for (int u = 0; u < 4; u++) {
        int c = get<1>(tCcC((u & 1) + 4 * (2 * pk + (u >> 1))));
        b[u] = __ldg(bs + c);
        iv[u] = __ldg(is + c);
      }
      float x[8], lv[8];
      bool near = false;
#pragma unroll
      for (int k = 0; k < 8; k++) {
        int u = (k & 1) + 2 * (k >> 2);
        x[k] = __bfloat162float(__float2bfloat16_rn(acc(8 * pk + k)));
        float q = x[k] * iv[u];
        lv[k] = rintf(q);
        near |= !(fabsf(q - lv[k]) < win);
      }
      if (!near) {
#pragma unroll
        for (int k = 0; k < 8; k++) {
          int u = (k & 1) + 2 * (k >> 2);
          float v = lv[k] * (b[u] * two_inv), cl = fmaxf(fminf(v, b[u]), -b[u]);
          sum[8 * pk + k] += cl;
          bits |= (uint64_t)(cl != v) << (8 * pk + k);
        }
      } else {
#pragma unroll
        for (int k = 0; k < 8; k++) {
          int u = (k & 1) + 2 * (k >> 2);
          bool clamped = false;
          sum[8 * pk + k] += adc_checked(x[k], b[u], iv[u], two_inv, win, &clamped);
          bits |= (uint64_t)clamped << (8 * pk + k);
        }
      }
    }
    // The mask and the flags start zeroed: only warps where an output clamped write them. The
    // four lanes of a quad hold one token's eight adjacent channels, two each.
    if (__any_sync(0xffffffffu, bits != 0)) {
#pragma unroll
      for (int i = 0; i < NV; i += 2) {
        int t = m0 + get<0>(tCcC(i)), c = n0 + get<1>(tCcC(i));
        unsigned v = (unsigned)((bits >> i) & 3) << (2 * (lane & 3));
        v |= __shfl_xor_sync(0xffffffffu, v, 1);
        v |= __shfl_xor_sync(0xffffffffu, v, 2);
        if ((lane & 3) == 0) a.clamps[((i64)s * a.tokens + t) * a.mb + c / 8] = (uint8_t)v;
        if ((bits >> i) & 3)
          a.flags[((i64)s * a.ft + t / FLAG_TILE) * a.fo + c / FLAG_TILE] = one;
      }
    }
#endif
  }
#pragma unroll
  for (int i = 0; i < NV; i += 2) {
    int t = m0 + get<0>(tCcC(i)), c = n0 + get<1>(tCcC(i));
    *reinterpret_cast<__nv_bfloat162 *>(a.y + (i64)t * a.out + c) =
        __floats2bfloat162_rn(sum[i], sum[i + 1]);
  }
}

__global__ void __launch_bounds__(THREADS, 1) adc_gemm_cutlass(CUTE_GRID_CONSTANT KernelParams const p) {
  extern __shared__ __align__(128) char smem[];
  LabSmem &sh = *reinterpret_cast<LabSmem *>(smem);
  int tid = threadIdx.x, wg = tid / cutlass::NumThreadsPerWarpGroup, warp = (tid / 32) % 4;
  typename Pipeline::Params pp;
  pp.role = wg == 0 ? (warp == 0 ? Pipeline::ThreadCategory::Producer
                                 : Pipeline::ThreadCategory::NonParticipant)
                    : Pipeline::ThreadCategory::Consumer;
  pp.is_leader = tid % cutlass::NumThreadsPerWarpGroup == 0;
  pp.num_consumers = THREADS - cutlass::NumThreadsPerWarpGroup;
  pp.transaction_bytes = p.mainloop.tma_transaction_bytes;
  Pipeline pipe(sh.pipeline, pp, Cluster{});
  if (tid == 0) Mainloop::prefetch_tma_descriptors(p.mainloop);
  // Every block's barriers initialized before any block of the cluster multicasts into them.
  if constexpr (LAB_CLUSTER_M > 1) {
    cute::cluster_arrive_relaxed();
    cute::cluster_wait();
  } else {
    __syncthreads();
  }
  if (wg == 0) {
    cutlass::arch::warpgroup_reg_dealloc<40>();
    if (warp == 0) {
      Mainloop mainloop;
      auto inputs = mainloop.load_init(make_shape(p.a.tokens, p.a.out, 512, p.a.nb), p.mainloop);
      PipeState wr = cutlass::make_producer_start_state<Pipeline>();
      for (int s = 0; s < p.a.nb; s++) {
        auto k_iter = make_coord_iterator(shape<3>(get<0>(inputs)));
        mainloop.load(p.mainloop, pipe, wr, inputs, make_coord(int(blockIdx.x), int(blockIdx.y), _, s),
                      k_iter, KT, tid % 32, cute::block_rank_in_cluster(), sh.tensors);
        wr.advance(KT);
      }
      mainloop.load_tail(pipe, wr);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<232>();
    consume(p, sh, pipe, tid - cutlass::NumThreadsPerWarpGroup);
  }
}

int main(int argc, char **argv) {
  LabShape L = lab_shape(argc, argv);
  int reps = argc > 4 ? atoi(argv[4]) : 20;
  if (L.tokens % (128 * LAB_CLUSTER_M) || L.out % 128 || L.nb < 1) {
    fprintf(stderr, "tokens must be multiples of 128 x the cluster, d of 512\n");
    return 1;
  }
  bf16 *y, *fl;
  uint8_t *clamps;
  size_t mask_bytes = (size_t)L.nb * L.tokens * L.mb;
  CK(cudaMalloc(&y, (size_t)L.tokens * L.out * 2));
  CK(cudaMalloc(&fl, L.nfl * 2));
  CK(cudaMalloc(&clamps, mask_bytes));

  using StrideA = typename Mainloop::StrideA;
  using StrideB = typename Mainloop::StrideB;
  StrideA sa = make_stride((int64_t)L.r, Int<1>{}, (int64_t)L.tokens * L.r);
  StrideB sb = make_stride((int64_t)L.r, Int<1>{}, (int64_t)L.out * L.r);
  typename Mainloop::Arguments margs{reinterpret_cast<const cutlass::bfloat16_t *>(L.x), sa,
                                     reinterpret_cast<const cutlass::bfloat16_t *>(L.w), sb};
  auto problem = make_shape(L.tokens, L.out, L.r, L.nb);
  if (!Mainloop::can_implement(problem, margs)) {
    fprintf(stderr, "CUTLASS's main loop cannot take this shape\n");
    return 1;
  }
  KernelParams kp{Mainloop::to_underlying_arguments(problem, margs, nullptr),
                  {L.bound, L.inv, y, fl, clamps, L.tokens, L.out, L.nb, L.ft, L.fo, L.mb,
                   L.inv_states}};
  int smem = (int)sizeof(LabSmem);
  CK(cudaFuncSetAttribute(adc_gemm_cutlass, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  dim3 grid(L.tokens / 128, L.out / 128);
  auto fused = [&]() {
    cudaMemsetAsync(fl, 0, L.nfl * 2);
    cudaMemsetAsync(clamps, 0, mask_bytes);
    cudaLaunchConfig_t cfg = {grid, dim3(THREADS), (size_t)smem, 0, nullptr, 0};
    cudaLaunchAttribute cluster;
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = LAB_CLUSTER_M, cluster.val.clusterDim.y = 1;
    cluster.val.clusterDim.z = 1;
    cfg.attrs = &cluster, cfg.numAttrs = 1;
    cudaLaunchKernelEx(&cfg, adc_gemm_cutlass, kp);
  };
  auto two = [&]() { lab_two_kernel(L); };
  two();
  fused();
  CK(cudaDeviceSynchronize());
  CK(cudaGetLastError());
  printf("CUTLASS main loop: %d stages, %d bytes of shared memory\n",
         (int)Mainloop::DispatchPolicy::Stages, smem);
  lab_check_y(L, y);
  lab_check_flags(L, fl);
  auto ma = lab_fetch(L.clamps_ref, mask_bytes), mb = lab_fetch(clamps, mask_bytes);
  size_t mask_set = 0, mask_differ = 0;
  for (size_t i = 0; i < mask_bytes; i++) {
    mask_set += __builtin_popcount(ma[i]);
    mask_differ += __builtin_popcount(ma[i] ^ mb[i]);
  }
  printf("clamp bits set %zu, differing %zu\n", mask_set, mask_differ);

  float t_two = lab_median_us(two, reps), t_fused = lab_median_us(fused, reps);
  float t_plain = lab_median_us([&]() { lab_plain(L); }, reps);
  float t_blocked = lab_median_us([&]() { lab_blocked(L, 0, L.tokens); }, reps);
  CK(cudaGetLastError());
  double tflops = 2.0 * L.tokens * L.out * (double)L.nb * L.r / (t_fused * 1e-6) / 1e12;
  printf("median us: cuBLAS blocked product %.1f, + adc_sum %.1f, one kernel %.1f "
         "(%.0f TFLOP/s), plain product %.1f; one kernel / two-kernel %.2f, one kernel / "
         "plain %.2f\n",
         t_blocked, t_two, t_fused, tflops, t_plain, t_fused / t_two, t_fused / t_plain);
  return 0;
}
