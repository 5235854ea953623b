// Sampling helpers for `src/executor/sampling.rs` (compiled to PTX by build.rs under the `cuda`
// feature).
//
// row_kth_largest_f32: the k-th largest value of each row (ties counted), by radix selection on
// an order-preserving integer image of the floats: four passes over the row, each fixing one
// byte of the answer from a 256-bin histogram of the values that share the bytes fixed so far.
// One thread block per row; the row is read four times, instead of k times by repeated maxima.

// Larger float -> larger key (negatives flipped whole, positives get the sign bit set).
__device__ __forceinline__ unsigned int key_of(float f) {
    unsigned int b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float float_of(unsigned int k) {
    unsigned int b = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    return __uint_as_float(b);
}

extern "C" __global__ void row_kth_largest_f32(const float* x, float* out, int cols, int k) {
    __shared__ unsigned int hist[256];
    __shared__ unsigned int prefix;
    __shared__ unsigned int want;  // rank still sought among the values matching `prefix`
    const float* row = x + (size_t)blockIdx.x * cols;
    if (threadIdx.x == 0) {
        prefix = 0u;
        want = (unsigned int)k;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0u;
        __syncthreads();
        const unsigned int high = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
        const unsigned int p = prefix;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) {
            const unsigned int key = key_of(row[i]);
            if ((key & high) == (p & high)) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned int w = want;
            int b = 255;
            for (; b > 0; --b) {
                if (hist[b] >= w) break;
                w -= hist[b];
            }
            prefix = p | ((unsigned int)b << shift);
            want = w;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = float_of(prefix);
}
