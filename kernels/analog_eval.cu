// Inference stages of the analog MVM on the GPU (src/tile/blocked.rs): the DAC of one row block
// and the ADC of its partial product, accumulated with the tile's drift gain. Every element
// follows the CPU's tile::mvm arithmetic operation for operation (compiled with --fmad=false),
// so the only difference from the CPU is the order in which the products between them sum.

__device__ __forceinline__ float clipf(float v, float lo, float hi) {
  // NaN compares false both ways and passes through, as on the CPU.
  return v < lo ? lo : (v > hi ? hi : v);
}

// Half to even for |v| < 2^22, the CPU's trick: adding 1.5 * 2^23 leaves no fraction bits.
__device__ __forceinline__ float round_even(float v) {
  const float magic = 12582912.0f;
  return __fsub_rn(__fadd_rn(v, magic), magic);
}

// xq (tokens, len) = DAC(x[:, start .. start + len]) with range `range` and `steps` steps
// (bits = 0: clipping only).
extern "C" __global__ void eval_dac(const float *x, float *xq, int tokens, int n_in, int start,
                                    int len, float range, float steps, int bits) {
  long long n = (long long)tokens * len;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    long long t = i / len;
    int j = (int)(i - t * len);
    float v = x[t * n_in + start + j];
    float q;
    if (bits == 0) {
      q = clipf(v, -range, range);
    } else if (!(range > 0.0f)) {
      q = 0.0f;
    } else {
      float step = (2.0f * range) / steps;
      q = round_even(clipf(v, -range, range) / step) * step;
    }
    xq[i] = q;
  }
}

// y = acc + alpha[c] * ADC(part) per (token, column c): bound lambda * w_max[c] * beta,
// quantization first, then clipping (aihwkit-lightning's order); bits = 0 passes part through.
// consts holds w_max (out values) then alpha (out values).
extern "C" __global__ void eval_adc_acc(const float *part, const float *acc, const float *consts,
                                        float *y, int tokens, int out, float lambda, float beta,
                                        float steps, int bits) {
  long long n = (long long)tokens * out;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    int c = (int)(i % out);
    float v = part[i];
    float q = v;
    if (bits > 0) {
      float bound = lambda * consts[c] * beta;
      float step = (2.0f * bound) / steps;
      float half = steps / 2.0f;
      float level = round_even(clipf(v / step, -half - 1.0f, half + 1.0f));
      q = clipf(level * step, -bound, bound);
      if (!(bound > 0.0f)) q = 0.0f;
    }
    y[i] = acc[i] + consts[out + c] * q;
  }
}
