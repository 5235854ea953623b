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

// Flagged tiles of a row of tiles whose clamp bits a block holds at once (FIX_CHUNK in
// src/train/fused/cpu.rs): each row's sum over them is taken out of the gradient in one
// subtraction, and the CPU twin does the same per chunk.
#define FIX_CHUNK 16
// Columns of the gradient per lane in one pass of a warp over a row (32 * FIX_COLS = 512).
#define FIX_COLS 16
// Test items a warp loads for at once.
#define FIX_ITEMS 8

// The correction of one row of tiles per thread block: grid (ft or fo, nb), 256 threads. With
// GW false, the block's rows are the 64 tokens of tile blockIdx.x and gxb[s, t, k] -= sum over
// clamped o of g[t, o] wb[s, o, k]; with GW true, the 64 channels of the tile and gwb[s, o, k]
// -= sum over clamped t of g[t, o] xb[s, t, k] (`other` is wb or xb). Clamps are rare inside a
// flagged tile (a flag marks 4096 outputs), so the block does not multiply tiles: per chunk of
// flagged tiles, the warps test every output of the tiles once (lanes along the channels, for
// coalesced yb and bounds) into bits per (row, tile), then each warp takes rows and, for each
// set bit in ascending order, adds g[t, o] times the other operand's row into the lanes' sums
// (f32), and takes the sum out once. The flag after the tiles' (flags[nb * ft * fo]) says
// whether anything clamped at all: when nothing did, every block leaves after one load. dst's
// element (s, row, k) is at s * bs + row * rs + k: blocked (bs = rows * r, rs = r), or the
// direct layouts (T or out, n_in) for blocks of equal length (bs = r, rs = n_in).
template <typename T, bool GW>
__device__ void clamp_fix(T *dst, const T *g, const T *yb, const float *bound, const T *flags,
                          const T *other, int tokens, int out, int r, int ft, int fo,
                          float inv_states, int adc, i64 bs, i64 rs) {
  if (to_f(flags[(i64)gridDim.y * ft * fo]) == 0.0f) return;
  __shared__ FlagScan scan;
  __shared__ int tl[FIX_CHUNK];
  __shared__ unsigned long long bits[FLAG_TILE][FIX_CHUNK];
  int s = blockIdx.y, row0 = blockIdx.x * FLAG_TILE;
  int rows = GW ? out : tokens, sum_len = GW ? tokens : out;
  const T *fl = GW ? flags + (i64)s * ft * fo + blockIdx.x : flags + ((i64)s * ft + blockIdx.x) * fo;
  int stride = GW ? fo : 1, count = GW ? ft : fo;
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  for (int tile = -1;;) {
    int nf = 0;
    while (nf < FIX_CHUNK && (tile = next_flag(fl, stride, count, tile, scan)) < count) {
      if (threadIdx.x == 0) tl[nf] = tile;
      nf++;
    }
    if (nf == 0) return;
    for (int e = threadIdx.x; e < FLAG_TILE * FIX_CHUNK; e += blockDim.x)
      bits[e / FIX_CHUNK][e % FIX_CHUNK] = 0ull;
    __syncthreads();
    // The tests: warp item (a, f) is row a of the tile with GW false (lanes along its
    // channels j), token a with GW true (lanes along the block's channels, the rows i); a warp
    // takes FIX_ITEMS items at a time, their loads in flight together (not timed apart from
    // one item at a time: the kernel took ~15-23 us either way in session 38's runs).
    for (int it0 = warp * FIX_ITEMS; it0 < FLAG_TILE * nf; it0 += nw * FIX_ITEMS) {
      bool c[FIX_ITEMS][2];
#pragma unroll
      for (int u = 0; u < FIX_ITEMS; u++) {
        int it = it0 + u, a = it % FLAG_TILE, f = min(it / FLAG_TILE, nf - 1);
        int j0 = tl[f] * FLAG_TILE;
#pragma unroll
        for (int h = 0; h < 2; h++) {
          int b = lane + 32 * h;
          int t = GW ? j0 + a : row0 + a, o = GW ? row0 + b : j0 + b;
          bool in = it < FLAG_TILE * nf && t < tokens && o < out;
          float y = in ? to_f(yb[((i64)s * tokens + t) * out + o]) : 0.0f;
          float bd = in ? bound[(i64)s * out + o] : 0.0f;
          c[u][h] = in && adc_clamped(y, bd, inv_states, adc);
        }
      }
#pragma unroll
      for (int u = 0; u < FIX_ITEMS; u++) {
        int it = it0 + u, a = it % FLAG_TILE, f = it / FLAG_TILE;
#pragma unroll
        for (int h = 0; h < 2; h++) {
          int b = lane + 32 * h;
          if (GW) {
            if (c[u][h]) atomicOr(&bits[b][f], 1ull << a);
          } else {
            unsigned m = __ballot_sync(0xffffffffu, c[u][h]);
            if (lane == 0 && m) atomicOr(&bits[a][f], (unsigned long long)m << (32 * h));
          }
        }
      }
    }
    __syncthreads();
    for (int i = warp; i < FLAG_TILE && row0 + i < rows; i += nw) {
      bool any = false;
      for (int f = 0; f < nf; f++) any |= bits[i][f] != 0ull;
      if (!any) continue;
      T *d = dst + s * bs + (i64)(row0 + i) * rs;
      for (int c0 = 0; c0 < r; c0 += 32 * FIX_COLS) {
        float acc[FIX_COLS];
#pragma unroll
        for (int m = 0; m < FIX_COLS; m++) acc[m] = 0.0f;
        for (int f = 0; f < nf; f++) {
          for (unsigned long long m = bits[i][f]; m; m &= m - 1) {
            int j = tl[f] * FLAG_TILE + __ffsll((long long)m) - 1;
            int t = GW ? j : row0 + i, o = GW ? row0 + i : j;
            float gv = to_f(g[(i64)t * out + o]);
            const T *src = other + ((i64)s * sum_len + j) * r;
#pragma unroll
            for (int m2 = 0; m2 < FIX_COLS; m2++) {
              int k = c0 + lane + 32 * m2;
              if (k < r) acc[m2] = acc[m2] + gv * to_f(src[k]);
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
    if (nf < FIX_CHUNK) return;
  }
}
