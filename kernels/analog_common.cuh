// Helpers shared by the analog training kernels (analog_train.cu, adc_gemm.cu): element types
// and the ADC's rounding, written once so that the fused product and the separate ADC kernel
// decide every level and every clamp alike.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

typedef long long i64;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }

__device__ __forceinline__ float adc_q(float y, float bd, float inv_states, int adc) {
  if (adc) {
    float res = (bd * 2.0f) * inv_states;
    y = roundf(y / res) * res;
  }
  return y;
}

// Edge of the square (tokens x channels) tiles of the clamp flags (FLAG_TILE in
// src/train/fused/mod.rs); a multiple of 8, so one thread's eight channels share a tile.
#define FLAG_TILE 64

// round(y / res) with the quotient exactly as the IEEE division gives it, without dividing:
// y * (1 / res) lies within 2 ulp of fl(y / res), so both round to the same integer unless
// the product lies within 4 ulp of a half-integer (or is not finite); there the division
// decides. The window scales with the product, so it holds for any ADC resolution. The ADC
// kernel is bound by arithmetic, and the division was most of it.
__device__ __forceinline__ float adc_level(float y, float res, float inv_res) {
  float a = y * inv_res;
  float r = rintf(a);
  if (!(fabsf(a - r) < 0.5f - fabsf(a) * 4.8e-7f)) return roundf(y / res);
  return r;
}


// One block output x through the ADC of bound b (b <= 0: none): rounded to its level (res = b *
// two_inv, 1 / res = inv_res) unless `adc` is 0, then clamped to +-b; `clamped` is set where
// the clamp cut.
__device__ __forceinline__ float adc_out(float x, float b, float two_inv, float inv_res, int adc,
                                         bool &clamped) {
  if (!(b > 0.0f)) return x;
  float res = b * two_inv;
  float q = adc ? adc_level(x, res, inv_res) * res : x;
  float y = fmaxf(fminf(q, b), -b);
  clamped |= y != q;
  return y;
}
