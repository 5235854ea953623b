// The backward's clamp correction of the fused analog training layer, included by
// analog_train.cu (which defines the helpers it uses: to_f / from_f, adc_q, FLAG_TILE); the
// CPU twin is `clamp_fix` in src/train/fused/cpu.rs.

// ---- backward: the straight-through ADC gradient as plain products plus a correction ------
//
// Straight through the ADC's rounding, block s's output gradient is the upstream g except
// where the clamp cut, so gxb[s] = g wb[s] and gwb[s] = g^T xb[s] are products with the same g
// for every block (cuBLAS, batch stride 0), less the clamped terms, which these two kernels
// take back out tile by tile, only in the tiles whose flag adc_sum set. A clamped output is
// recognized from yb and the bound exactly as adc_sum decided it.

__device__ __forceinline__ bool adc_clamped(float y, float b, float inv_states, int adc) {
  if (!(b > 0.0f)) return false;
  float q = adc_q(y, b, inv_states, adc);
  return q > b || q < -b;
}

// The flagged tiles, found by all threads of the block together: a window of blockDim.x
// flags is read at once (one per thread) and compacted in shared memory, so a block whose
// tiles are all clear costs one load per thread per window, not one dependent load per tile.
struct FlagScan {
  int idx[256];
  int n, pos, base;
};

// The next flagged tile after `cur` (-1: start) of the `count` flags at fl[i * stride], or
// `count` when none is left. Called by every thread of the block alike.
template <typename T>
__device__ int next_flag(const T *fl, int stride, int count, int cur, FlagScan &sc) {
  if (cur < 0) {
    if (threadIdx.x == 0) {
      sc.n = 0;
      sc.pos = 0;
      sc.base = -(int)blockDim.x;
    }
    __syncthreads();
  }
  while (true) {
    if (sc.pos < sc.n) {
      int r = sc.idx[sc.pos];
      __syncthreads();
      if (threadIdx.x == 0) sc.pos += 1;
      __syncthreads();
      return r;
    }
    int base = sc.base + (int)blockDim.x;
    if (base >= count) return count;
    __syncthreads();
    if (threadIdx.x == 0) {
      sc.n = 0;
      sc.pos = 0;
      sc.base = base;
    }
    __syncthreads();
    int i = base + (int)threadIdx.x;
    bool set = i < count && to_f(fl[(i64)i * stride]) != 0.0f;
    // In ascending order: each thread's place is the count of set flags before it.
    unsigned ballot = __ballot_sync(0xffffffffu, set);
    __shared__ int warp_n[8];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_n[warp] = __popc(ballot);
    __syncthreads();
    int before = __popc(ballot & ((1u << lane) - 1u));
    for (int w = 0; w < warp; w++) before += warp_n[w];
    if (set) sc.idx[before] = i;
    if (threadIdx.x == 0) {
      int total = 0;
      for (int w = 0; w < (int)blockDim.x / 32; w++) total += warp_n[w];
      sc.n = total;
    }
    __syncthreads();
  }
}

// One 64 x 64 tile of the product on 256 threads, accumulated over the flagged tiles of the
// summed dimension in ascending order: the clamped upstream gradients in a[row][j], the other
// operand in bm[j][col]. In f32 on the CUDA cores (4 x 4 outputs per thread, the CPU twin's
// order); in bf16 / f16 on the tensor cores (WMMA, f32 accumulation; two 16 x 16 fragments per
// warp), so that a layer where most outputs clamp is not held up by a scalar product.
template <typename S> struct FixTile {
  union {
    struct {
      S a[FLAG_TILE][FLAG_TILE + 8];
      S bm[FLAG_TILE][FLAG_TILE + 8];
    } in;
    float c[FLAG_TILE][FLAG_TILE];
  };
};

template <typename T> struct FixAcc {
  typedef T S;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> f[2];
  __device__ void zero() {
    wmma::fill_fragment(f[0], 0.0f);
    wmma::fill_fragment(f[1], 0.0f);
  }
  __device__ void add(FixTile<S> &sm) {
    int w = threadIdx.x / 32, r0 = (w / 2) * 16, c0 = (w % 2) * 32;
    for (int kk = 0; kk < FLAG_TILE; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, S, wmma::row_major> fa;
      wmma::load_matrix_sync(fa, &sm.in.a[r0][kk], FLAG_TILE + 8);
#pragma unroll
      for (int h = 0; h < 2; h++) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, S, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, &sm.in.bm[kk][c0 + 16 * h], FLAG_TILE + 8);
        wmma::mma_sync(f[h], fa, fb, f[h]);
      }
    }
  }
  // The tile into the 4 x 4 outputs of this thread (as FixAcc<float> holds them); the caller
  // synchronizes before, as the tile overwrites the operands.
  __device__ void take(FixTile<S> &sm, float acc[4][4]) {
    int w = threadIdx.x / 32, r0 = (w / 2) * 16, c0 = (w % 2) * 32;
    wmma::store_matrix_sync(&sm.c[r0][c0], f[0], FLAG_TILE, wmma::mem_row_major);
    wmma::store_matrix_sync(&sm.c[r0][c0 + 16], f[1], FLAG_TILE, wmma::mem_row_major);
    __syncthreads();
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int u = 0; u < 4; u++)
#pragma unroll
      for (int v = 0; v < 4; v++) acc[u][v] = sm.c[ty + 16 * u][tx + 16 * v];
  }
};

template <> struct FixAcc<float> {
  typedef float S;
  float r[4][4];
  __device__ void zero() {
#pragma unroll
    for (int u = 0; u < 4; u++)
#pragma unroll
      for (int v = 0; v < 4; v++) r[u][v] = 0.0f;
  }
  __device__ void add(FixTile<S> &sm) {
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    for (int j = 0; j < FLAG_TILE; j++) {
      float av[4], bv[4];
#pragma unroll
      for (int u = 0; u < 4; u++) av[u] = sm.in.a[ty + 16 * u][j];
#pragma unroll
      for (int v = 0; v < 4; v++) bv[v] = sm.in.bm[j][tx + 16 * v];
#pragma unroll
      for (int u = 0; u < 4; u++)
#pragma unroll
        for (int v = 0; v < 4; v++) r[u][v] = r[u][v] + av[u] * bv[v];
    }
  }
  __device__ void take(FixTile<S> &, float acc[4][4]) {
#pragma unroll
    for (int u = 0; u < 4; u++)
#pragma unroll
      for (int v = 0; v < 4; v++) acc[u][v] = r[u][v];
  }
};

// dst[s, row, k] -= acc for the tile at (row0, k0) of dst (rows x r per block), element (s, row,
// k) at s * bs + row * rs + k: blocked (bs = rows * r, rs = r), or gw's own layout (out, n_in)
// for blocks of equal length (bs = r, rs = n_in), where the product wrote it directly.
template <typename T>
__device__ __forceinline__ void fix_store(T *dst, const float acc[4][4], int s, int rows, int r,
                                          int row0, int k0, i64 bs, i64 rs) {
  int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int u = 0; u < 4; u++)
#pragma unroll
    for (int v = 0; v < 4; v++) {
      int row = row0 + ty + 16 * u, k = k0 + tx + 16 * v;
      if (row < rows && k < r) {
        i64 idx = s * bs + row * rs + k;
        dst[idx] = from_f<T>(to_f(dst[idx]) - acc[u][v]);
      }
    }
}

// One 64 x 64 tile of a correction, per thread block; grid (ceil(r / 64), ft or fo, nb). With
// GW false: gxb[s, t, k] -= sum over clamped o of g[t, o] wb[s, o, k] for the tokens of tile
// blockIdx.y, summed over its flagged channel tiles; with GW true: gwb[s, o, k] -= sum over
// clamped t of g[t, o] xb[s, t, k] for the channels of tile blockIdx.y, summed over its flagged
// token tiles. `other` is wb or xb. The flag after the tiles' (flags[nb * ft * fo]) says
// whether anything clamped at all: when nothing did, as with the release config, every block
// leaves after one load. dst's element (s, row, k) is at s * bs + row * rs + k (fix_store).
template <typename T, bool GW>
__device__ void clamp_fix(T *dst, const T *g, const T *yb, const float *bound, const T *flags,
                          const T *other, int tokens, int out, int r, int ft, int fo,
                          float inv_states, int adc, i64 bs, i64 rs) {
  if (to_f(flags[(i64)gridDim.z * ft * fo]) == 0.0f) return;
  typedef typename FixAcc<T>::S S;
  __shared__ __align__(128) FixTile<S> sm;
  __shared__ FlagScan scan;
  int k0 = blockIdx.x * FLAG_TILE, row0 = blockIdx.y * FLAG_TILE, s = blockIdx.z;
  int rows = GW ? out : tokens, sum_len = GW ? tokens : out;
  const T *fl = GW ? flags + (i64)s * ft * fo + blockIdx.y : flags + ((i64)s * ft + blockIdx.y) * fo;
  int stride = GW ? fo : 1, count = GW ? ft : fo;
  // Most rows of tiles have no flag (the release config clamps ~1e-7 of the outputs): one load
  // per thread and one barrier tell, where the scan's compaction spends four barriers (both
  // kernels 115 -> 95 us at 8192 x 4096, ncu, session 34).
  bool row_flagged = false;
  for (int i = threadIdx.x; i < count; i += blockDim.x)
    row_flagged |= to_f(fl[(i64)i * stride]) != 0.0f;
  if (!__syncthreads_or(row_flagged)) return;
  FixAcc<T> acc;
  acc.zero();
  bool any = false;
  for (int tile = -1; (tile = next_flag(fl, stride, count, tile, scan)) < count;) {
    any = true;
    int j0 = tile * FLAG_TILE;
    for (int e = threadIdx.x; e < FLAG_TILE * FLAG_TILE; e += blockDim.x) {
      // i: row of the result tile, j: the summed index. Consecutive threads take consecutive
      // channels of g and yb, and consecutive inputs of `other`.
      int i = GW ? e % FLAG_TILE : e / FLAG_TILE, j = GW ? e / FLAG_TILE : e % FLAG_TILE;
      int t = GW ? j0 + j : row0 + i, o = GW ? row0 + i : j0 + j;
      float v = 0.0f;
      if (t < tokens && o < out) {
        float b = bound[(i64)s * out + o];
        if (adc_clamped(to_f(yb[((i64)s * tokens + t) * out + o]), b, inv_states, adc))
          v = to_f(g[(i64)t * out + o]);
      }
      sm.in.a[i][j] = from_f<S>(v);
      // bm[jj][kk] = other[s, j0 + jj, k0 + kk].
      int jj = GW ? j : i, kk = GW ? i : j;
      int sr = j0 + jj, k = k0 + kk;
      sm.in.bm[jj][kk] = sr < sum_len && k < r ? other[((i64)s * sum_len + sr) * r + k]
                                               : from_f<S>(0.0f);
    }
    __syncthreads();
    acc.add(sm);
    __syncthreads();
  }
  if (!any) return;
  float part[4][4];
  acc.take(sm, part);
  fix_store(dst, part, s, rows, r, row0, k0, bs, rs);
}
