// The backward's clamp correction of the fused analog training layer, included by
// analog_train.cu after adc_sum.cuh (which define the helpers it uses: to_f / from_f,
// FLAG_TILE); the CPU twin is `clamp_fix` in src/train/fused/cpu.rs.

// ---- backward: the straight-through ADC gradient as plain products plus a correction ------
//
// Straight through the ADC's rounding, block s's output gradient is the upstream g except
// where the clamp cut, so gxb[s] = g wb[s] and gwb[s] = g^T xb[s] are products with the same g
// for every block (cuBLAS, batch stride 0), less the clamped terms, which these two kernels
// take back out tile by tile, only in the tiles whose flag adc_sum set. Which outputs clamped
// is adc_sum's clamp mask, so the block outputs need not be kept for the backward.

// The 64 clamp bits of `clamps` row `row` (ceil(out / 8) bytes: bit k of byte c / 8 for output
// c) from channel c0 (a multiple of 64) on; 0 past the row's end.
__device__ __forceinline__ unsigned long long clamp_bits64(const uint8_t *row, int c0, int mb) {
  int b0 = c0 / 8;
  if (mb % 8 == 0) return *(const unsigned long long *)(row + b0);
  unsigned long long v = 0;
  for (int k = 0; k < 8 && b0 + k < mb; k++) v |= (unsigned long long)row[b0 + k] << (8 * k);
  return v;
}

// The flagged tiles, found by all threads of the block together: a window of blockDim.x
// flags is read at once (one per thread) and compacted in shared memory, so a block whose
// tiles are all clear costs one load per thread per window, not one dependent load per tile.
struct FlagScan {
  int idx[256];
  int n, pos, base;
};

__device__ __forceinline__ void scan_start(FlagScan &sc) {
  if (threadIdx.x == 0) {
    sc.n = 0;
    sc.pos = 0;
    sc.base = -(int)blockDim.x;
  }
  __syncthreads();
}

// Flagged tiles of a row of tiles whose clamp bits a block holds at once (FIX_CHUNK in
// src/train/fused/cpu.rs): each row's sum over them is taken out of the gradient in one
// subtraction, and the CPU twin does the same per chunk.
#define FIX_CHUNK 16
// The next (up to) FIX_CHUNK flagged tiles of the `count` flags at fl[i * stride] into tl, in
// ascending order; returns how many (0: none left). Called by every thread of the block alike;
// a window's list is taken a chunk at a time, not a tile at a time (two barriers per tile).
template <typename T>
__device__ int next_chunk(const T *fl, int stride, int count, FlagScan &sc, int *tl) {
  int nf = 0;
  while (nf < FIX_CHUNK) {
    int pos = sc.pos, avail = sc.n - pos;
    if (avail > 0) {
      int take = min(avail, FIX_CHUNK - nf);
      if ((int)threadIdx.x < take) tl[nf + threadIdx.x] = sc.idx[pos + threadIdx.x];
      nf += take;
      __syncthreads();
      if (threadIdx.x == 0) sc.pos = pos + take;
      __syncthreads();
      continue;
    }
    int base = sc.base + (int)blockDim.x;
    if (base >= count) break;
    __syncthreads();
    if (threadIdx.x == 0) {
      sc.n = 0;
      sc.pos = 0;
      sc.base = base;
    }
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
  return nf;
}

// Columns of the gradient per lane in one pass of a warp over a row (32 * FIX_COLS = 512).
#define FIX_COLS 16

// A flagged tile with at least DENSE_MIN clamped outputs (of its 64 x 64) is taken out as a
// product on the tensor cores (bf16 / f16), DENSE_COLS columns of the gradient at a time: one
// clamped output costs the sparse path a row of the other operand and r FMAs spread over a
// warp, so where most outputs clamp (a tight ADC bound) the sparse path took 50x the step of
// the release bound (benches/RESULTS.md, session 39). One eighth of the tile: above where the
// two paths' measured costs per tile cross (~340 clamps for gx, ~520 for gw; session 40).
#define DENSE_MIN 512
#define DENSE_COLS 128

// d += a b for one m16n8k16 tile (A row-major, B column-major fragments; f32 accumulators).
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4],
                                         const unsigned (&b)[2], const __nv_bfloat16 *) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4],
                                         const unsigned (&b)[2], const __half *) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// An A fragment (16 x 16) from its transpose, row-major in shared memory: lanes 8 m .. 8 m + 7
// give the rows of 8 x 8 matrix m.
__device__ __forceinline__ void ldsm_x4_trans(unsigned (&a)[4], const void *p) {
  unsigned s = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(s));
}

// The B fragments of k rows kk..kk + 15 and 8 columns from a row-major tile in shared memory
// (p: the first of those rows at the first column; lanes 0-15 give the 16 rows' addresses).
__device__ __forceinline__ void ldsm_x2_trans(unsigned (&b)[2], const void *p) {
  unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(b[0]), "=r"(b[1])
               : "r"(a));
}

// The dense tiles of a chunk (dense[f]) taken out of the block's 64 rows: per DENSE_COLS
// columns, each tile's clamped g (64 rows x the tile's 64 outputs or tokens, zero where not
// clamped) times the other operand's 64 rows of those columns, summed on the tensor cores over
// the dense tiles, then subtracted once. 256 threads (clamp_fix's blocks): warp w takes rows
// (w % 4) * 16 and columns (w / 4) * 64 of the 64 x DENSE_COLS sums.
template <typename T>
__device__ __noinline__ void dense_fix(bool GW, T *dst, const T *g, const T *other,
                                      const unsigned long long (*bits)[FIX_CHUNK],
                                      const uint8_t *clamps,
                                      const int *tl, const int *dense, int nf, int s, int row0,
                                      int rows, int sum_len, int out, int r, i64 bs, i64 rs) {
  // Rows padded by 8 elements (16 bytes): the fragments' loads hit 32 distinct banks.
  __shared__ __align__(16) T gs[FLAG_TILE][FLAG_TILE + 8];
  __shared__ __align__(16) T bm[FLAG_TILE][DENSE_COLS + 8];
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int wm = (warp % 4) * 16, wn = (warp / 4) * 64;
  bool vec = r % 8 == 0 && aligned16(other), gvec = out % 8 == 0 && aligned16(g);
  for (int c0 = 0; c0 < r; c0 += DENSE_COLS) {
    float acc[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
      for (int q = 0; q < 4; q++) acc[nt][q] = 0.0f;
    for (int f = 0; f < nf; f++) {
      if (!dense[f]) continue;
      int j0 = tl[f] * FLAG_TILE;
      // A thread's loads of each operand are issued together (one memory latency per operand
      // and tile, not one per element; all six at once took 128 registers): two 16-byte packs
      // of g along a token's row (GX: the tile's 64 outputs; GW: the block's 64 channels),
      // then four of the other operand. Rows and columns past the ends load as 0.
      Pack8<T> ga[2];
      unsigned long long tok[2];
#pragma unroll
      for (int q = 0; q < 2; q++) {
        int e = threadIdx.x + q * 256, a = e / 8, b0 = (e % 8) * 8;
        int t = GW ? j0 + a : row0 + a, o = GW ? row0 + b0 : j0 + b0;
        int n = t < (GW ? sum_len : rows) ? max(0, min(8, out - o)) : 0;
        ga[q] = load8(g + (i64)t * out + o, gvec && n == 8, n);
        // The token's clamp bits over the pack's 64 columns: GX's are the sparse path's
        // words; GW's (over the block's channels) come from the mask again, so that the
        // sparse path's blocks need no second 8 KB of shared memory for them.
        if (GW) {
          const uint8_t *row = clamps + ((i64)s * sum_len + t) * ((out + 7) / 8);
          tok[q] = t < sum_len ? clamp_bits64(row, row0, (out + 7) / 8) : 0ull;
        } else {
          tok[q] = bits[a][f];
        }
      }
#pragma unroll
      for (int q = 0; q < 2; q++) {
        // gs[a][b0 + k] is g's row a of the tile (a token) at column b0 + k (an output of the
        // tile for GX, a channel of the block for GW), kept where it clamped: the token's mask
        // word holds those bits. One mask load and one 16-byte store per pack (element by
        // element, the stores and mask loads held the kernel on shared memory; session 40).
        int e = threadIdx.x + q * 256, a = e / 8, b0 = (e % 8) * 8;
        unsigned m = (unsigned)(tok[q] >> b0);
#pragma unroll
        for (int k = 0; k < 8; k++)
          if (!((m >> k) & 1u)) ga[q].v[k] = from_f<T>(0.0f);
        *(Pack8<T> *)&gs[a][b0] = ga[q];
      }
      Pack8<T> ob[4];
#pragma unroll
      for (int q = 0; q < 4; q++) {
        int e = threadIdx.x + q * 256, jj = e / (DENSE_COLS / 8), cc = (e % (DENSE_COLS / 8)) * 8;
        int j = j0 + jj, k = c0 + cc;
        int n = j < sum_len ? max(0, min(8, r - k)) : 0;
        ob[q] = load8(other + ((i64)s * sum_len + j) * r + k, vec && n == 8, n);
      }
#pragma unroll
      for (int q = 0; q < 4; q++) {
        int e = threadIdx.x + q * 256, jj = e / (DENSE_COLS / 8), cc = (e % (DENSE_COLS / 8)) * 8;
        *(Pack8<T> *)&bm[jj][cc] = ob[q];
      }
      __syncthreads();
#pragma unroll 1
      for (int kk = 0; kk < FLAG_TILE; kk += 16) {
        unsigned a[4];
        if (GW) {
          // A = gs^T: lanes 8 m .. 8 m + 7 address matrix m's rows (k rows kk + 8 (m / 2) on,
          // columns wm + 8 (m % 2) on), transposed on the way into the fragment.
          int m8 = lane / 8;
          ldsm_x4_trans(a, &gs[kk + lane % 8 + 8 * (m8 / 2)][wm + 8 * (m8 % 2)]);
        } else {
          int ar = wm + lane / 4, ac = kk + (lane % 4) * 2;
          a[0] = *(const unsigned *)&gs[ar][ac];
          a[1] = *(const unsigned *)&gs[ar + 8][ac];
          a[2] = *(const unsigned *)&gs[ar][ac + 8];
          a[3] = *(const unsigned *)&gs[ar + 8][ac + 8];
        }
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
          unsigned b[2];
          ldsm_x2_trans(b, &bm[kk + lane % 16][wn + nt * 8]);
          mma16816(acc[nt], a, b, (const T *)nullptr);
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        int row = row0 + wm + lane / 4 + 8 * h;
        if (row >= rows) continue;
        T *d = dst + s * bs + (i64)row * rs;
#pragma unroll
        for (int q = 0; q < 2; q++) {
          int k = c0 + wn + nt * 8 + (lane % 4) * 2 + q;
          if (k < r) d[k] = from_f<T>(to_f(d[k]) - acc[nt][2 * h + q]);
        }
      }
  }
}

// The correction of one row of tiles per thread block `bx`: grid (ft or fo, nb), 256 threads
// (GW is uniform over a block, a template argument in effect where the kernel fixes it). With GW
// false, the block's rows are the 64 tokens of tile bx and gxb[s, t, k] -= sum over clamped
// o of g[t, o] wb[s, o, k]; with GW true, the 64 channels of the tile and gwb[s, o, k] -= sum over
// clamped t of g[t, o] xb[s, t, k] (`other` is wb or xb). Clamps are rare inside a flagged tile (a
// flag marks 4096 outputs), so the block does not multiply tiles: per chunk of flagged tiles, the
// warps read the tiles' bits of the clamp mask into bits per (row, tile), then each warp takes rows
// and, for each set bit in ascending order, adds g[t, o] times the other operand's row into the
// lanes' sums (f32), and takes the sum out once. (Testing the block outputs here instead, a flagged
// tile at a time, left the kernels at 15-25 us of mostly idle SMs: one memory latency per flagged
// tile of the longest row.) Where nothing clamped, every block leaves after one scan of its row of
// flags (a load per thread per 256 tiles). dst's element (s, row, k) is at s * bs + row * rs + k:
// blocked (bs = rows * r, rs = r), or the direct layouts (T or out, n_in) for blocks of equal
// length (bs = r, rs = n_in).
template <typename T>
__device__ __forceinline__ void clamp_fix(bool GW, int bx, T *dst, const T *g,
                                          const uint8_t *clamps, const T *flags, const T *other,
                                          int tokens, int out, int r, int ft, int fo, i64 bs,
                                          i64 rs) {
  __shared__ FlagScan scan;
  __shared__ int tl[FIX_CHUNK];
  __shared__ unsigned long long bits[FLAG_TILE][FIX_CHUNK];
  __shared__ int dense[FIX_CHUNK];
  int s = blockIdx.y, row0 = bx * FLAG_TILE;
  int rows = GW ? out : tokens, sum_len = GW ? tokens : out;
  const T *fl =
      GW ? flags + (i64)s * ft * fo + bx : flags + ((i64)s * ft + bx) * fo;
  int stride = GW ? fo : 1, count = GW ? ft : fo;
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  int mb = (out + 7) / 8;
  scan_start(scan);
  while (true) {
    int nf = next_chunk(fl, stride, count, scan, tl);
    if (nf == 0) return;
    // A warp per tile; lane l reads the bits of the tile's tokens l and l + 32: with GW false
    // (rows are tokens) over the tile's channels, the rows' bits as they are; with GW true over
    // the block's channels, turned into the channels' bits over the tile's tokens by ballots.
    for (int f = warp; f < nf; f += nw) {
      int j0 = tl[f] * FLAG_TILE;
      unsigned long long wd[2];
#pragma unroll
      for (int h = 0; h < 2; h++) {
        int t = (GW ? j0 : row0) + lane + 32 * h;
        const uint8_t *row = clamps + ((i64)s * tokens + t) * mb;
        wd[h] = t < tokens ? clamp_bits64(row, GW ? row0 : j0, mb) : 0ull;
      }
      unsigned pc = __reduce_add_sync(0xffffffffu, __popcll(wd[0]) + __popcll(wd[1]));
      if (lane == 0) dense[f] = sizeof(T) == 2 && pc >= DENSE_MIN;
      if (!GW) {
        bits[lane][f] = wd[0];
        bits[lane + 32][f] = wd[1];
      } else {
        for (int b = 0; b < FLAG_TILE; b++) {
          unsigned lo = __ballot_sync(0xffffffffu, (wd[0] >> b) & 1ull);
          unsigned hi = __ballot_sync(0xffffffffu, (wd[1] >> b) & 1ull);
          if (lane == 0) bits[b][f] = lo | (unsigned long long)hi << 32;
        }
      }
    }
    __syncthreads();
    for (int i = warp; i < FLAG_TILE && row0 + i < rows; i += nw) {
      bool any = false;
      for (int f = 0; f < nf; f++) any |= !dense[f] && bits[i][f] != 0ull;
      if (!any) continue;
      T *d = dst + s * bs + (i64)(row0 + i) * rs;
      for (int c0 = 0; c0 < r; c0 += 32 * FIX_COLS) {
        float acc[FIX_COLS];
#pragma unroll
        for (int m = 0; m < FIX_COLS; m++) acc[m] = 0.0f;
        for (int f = 0; f < nf; f++) {
          for (unsigned long long m = dense[f] ? 0ull : bits[i][f]; m;) {
            // Up to 32 clamped outputs at a time: lane l takes the l-th lowest set bit and loads
            // its g, so those loads are in flight together, and the other operand's rows come
            // two at a time; the sums still take the outputs in ascending order.
            unsigned lo = (unsigned)m, hi = (unsigned)(m >> 32);
            int plo = __popc(lo), cnt = min(plo + __popc(hi), 32);
            int bit = lane < plo ? (int)__fns(lo, 0, lane + 1)
                                 : 32 + (int)__fns(hi, 0, lane - plo + 1);
            int jl = tl[f] * FLAG_TILE + bit;
            float gl = 0.0f;
            if (lane < cnt) {
              int t = GW ? jl : row0 + i, o = GW ? row0 + i : jl;
              gl = to_f(g[(i64)t * out + o]);
            }
            int last = __shfl_sync(0xffffffffu, bit, cnt - 1);
            m = last >= 63 ? 0ull : m & (~0ull << (last + 1));
            for (int q = 0; q < cnt; q += 2) {
              int q1 = min(q + 1, cnt - 1);
              int j0 = __shfl_sync(0xffffffffu, jl, q), j1 = __shfl_sync(0xffffffffu, jl, q1);
              float g0 = __shfl_sync(0xffffffffu, gl, q), g1 = __shfl_sync(0xffffffffu, gl, q1);
              const T *s0 = other + ((i64)s * sum_len + j0) * r;
              const T *s1 = other + ((i64)s * sum_len + j1) * r;
              float v0[FIX_COLS], v1[FIX_COLS];
#pragma unroll
              for (int m2 = 0; m2 < FIX_COLS; m2++) {
                int k = c0 + lane + 32 * m2;
                v0[m2] = k < r ? to_f(s0[k]) : 0.0f;
                v1[m2] = k < r ? to_f(s1[k]) : 0.0f;
              }
#pragma unroll
              for (int m2 = 0; m2 < FIX_COLS; m2++) acc[m2] = acc[m2] + g0 * v0[m2];
              if (q + 1 < cnt) {
#pragma unroll
                for (int m2 = 0; m2 < FIX_COLS; m2++) acc[m2] = acc[m2] + g1 * v1[m2];
              }
            }
          }
        }
#pragma unroll
        for (int m2 = 0; m2 < FIX_COLS; m2++) {
          int k = c0 + lane + 32 * m2;
          if (k < r) d[k] = from_f<T>(to_f(d[k]) - acc[m2]);
        }
      }
    }
    __syncthreads();
    if constexpr (sizeof(T) == 2) {
      int nd = 0;
      for (int f = 0; f < nf; f++) nd += dense[f];
      if (nd > 0)
        dense_fix<T>(GW, dst, g, other, bits, clamps, tl, dense, nf, s, row0, rows, sum_len,
                         out, r, bs, rs);
    }
    if (nf < FIX_CHUNK) return;
  }
}
