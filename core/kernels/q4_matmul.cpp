// 4-bit weight times float activation matmul for AVX2 CPUs: y = x @ dequant(w).T
//
// Weights come in blocks of 32 along the input dimension, each stored as 16 bytes of 4-bit
// codes plus a float scale and minimum (llama.cpp's q4_1): weight = code * scale + minimum. Byte
// j of a block holds element j in its low nibble and element j + 16 in its high one.
// Activations are quantized on the fly to int8, one scale per block of 32 (as llama.cpp's
// q4_1 x q8_1 dot product does), so a block's dot product runs on integer multiply-adds:
//   x . w = scale * (x . code) + minimum * sum(x)
// maddubs multiplies the unsigned codes (0..15) by the signed activations (-127..127); pair sums
// stay below 2 * 15 * 127, far from int16 saturation.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "avx2.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kBlock = 32;

using infermcp::hsum;

// The 32 codes of one block (16 bytes at p) as bytes 0..15 in order.
__m256i unpack(const uint8_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i low4 = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), low4), _mm_and_si128(v, low4));
}

// codes . x for one block, as 8 float partial sums.
__m256 block_dot(__m256i codes, const int8_t* x) {
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  const __m256i pairs = _mm256_maddubs_epi16(codes, xv);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

// Activations quantized per block of 32: int8 codes, their scales, and scale * sum(codes).
struct QuantizedRows {
  std::vector<int8_t> codes;
  std::vector<float> scales;
  std::vector<float> sums;

  QuantizedRows(const float* x, int64_t rows, int64_t k)
      : codes(rows * k), scales(rows * k / kBlock), sums(rows * k / kBlock) {
    for (int64_t b = 0; b < rows * k / kBlock; ++b) {
      const float* xb = x + b * kBlock;
      float amax = 0.f;
      for (int64_t j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(xb[j]));
      const float scale = amax / 127.f, inverse = amax > 0.f ? 127.f / amax : 0.f;
      int sum = 0;
      for (int64_t j = 0; j < kBlock; ++j) {
        const int code = static_cast<int>(std::nearbyint(xb[j] * inverse));
        codes[b * kBlock + j] = static_cast<int8_t>(code);
        sum += code;
      }
      scales[b] = scale;
      sums[b] = scale * static_cast<float>(sum);
    }
  }
};

// One activation row: two weight rows per iteration, sharing the activation loads.
void matvec(const QuantizedRows& x, const uint8_t* w, const float* w_scales, const float* w_mins,
            int64_t n, int64_t k, float* out) {
  const int64_t blocks = k / kBlock;
  at::parallel_for(0, n / 2, 8, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t r = 2 * pair;
      const uint8_t* w0 = w + r * k / 2;
      const uint8_t* w1 = w0 + k / 2;
      const float* d0 = w_scales + r * blocks;
      const float* d1 = d0 + blocks;
      const float* m0 = w_mins + r * blocks;
      const float* m1 = m0 + blocks;
      __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
      float off0 = 0.f, off1 = 0.f;
      for (int64_t b = 0; b < blocks; ++b) {
        const int8_t* xb = x.codes.data() + b * kBlock;
        const float xs = x.scales[b];
        acc0 = _mm256_fmadd_ps(block_dot(unpack(w0 + b * 16), xb), _mm256_set1_ps(d0[b] * xs), acc0);
        acc1 = _mm256_fmadd_ps(block_dot(unpack(w1 + b * 16), xb), _mm256_set1_ps(d1[b] * xs), acc1);
        off0 += m0[b] * x.sums[b];
        off1 += m1[b] * x.sums[b];
      }
      out[r] = hsum(acc0) + off0;
      out[r + 1] = hsum(acc1) + off1;
    }
  });
}

// Several activation rows: each weight row is unpacked once, then dotted with the activation
// rows four at a time. The minimums' share (sum over blocks of minimum * sum(x)) is left to the
// caller, as one small matmul for all rows.
void matmul(const QuantizedRows& x, int64_t m, const uint8_t* w, const float* w_scales,
            int64_t n, int64_t k, float* out) {
  const int64_t blocks = k / kBlock;
  at::parallel_for(0, n, 4, [&](int64_t begin, int64_t end) {
    std::vector<__m256i> codes(blocks);
    for (int64_t r = begin; r < end; ++r) {
      const float* d = w_scales + r * blocks;
      for (int64_t b = 0; b < blocks; ++b) codes[b] = unpack(w + r * k / 2 + b * 16);
      int64_t i = 0;
      for (; i + 4 <= m; i += 4) {
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                         _mm256_setzero_ps()};
        for (int64_t b = 0; b < blocks; ++b) {
          for (int j = 0; j < 4; ++j) {
            const int64_t xb = (i + j) * blocks + b;
            acc[j] = _mm256_fmadd_ps(block_dot(codes[b], x.codes.data() + xb * kBlock),
                                     _mm256_set1_ps(d[b] * x.scales[xb]), acc[j]);
          }
        }
        for (int j = 0; j < 4; ++j) out[(i + j) * n + r] = hsum(acc[j]);
      }
      for (; i < m; ++i) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t xb = i * blocks + b;
          acc = _mm256_fmadd_ps(block_dot(codes[b], x.codes.data() + xb * kBlock),
                                _mm256_set1_ps(d[b] * x.scales[xb]), acc);
        }
        out[i * n + r] = hsum(acc);
      }
    }
  });
}

at::Tensor q4_matmul(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                     const at::Tensor& mins) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x: (rows, k) float32");
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kByte && packed.is_contiguous(),
              "packed: (n, k / 2) uint8, contiguous");
  const int64_t m = x.size(0), n = packed.size(0), k = packed.size(1) * 2;
  TORCH_CHECK(x.size(1) == k && k % kBlock == 0, "k must match and be a multiple of 32");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  scales.numel() == n * k / kBlock, "scales: (n, k / 32) float32, contiguous");
  TORCH_CHECK(mins.scalar_type() == at::kFloat && mins.is_contiguous() &&
                  mins.numel() == n * k / kBlock, "mins: (n, k / 32) float32, contiguous");
  const at::Tensor xc = x.contiguous();
  const QuantizedRows xq(xc.data_ptr<float>(), m, k);
  at::Tensor out = at::empty({m, n}, x.options());
  const uint8_t* w = packed.data_ptr<uint8_t>();
  if (m == 1 && n % 2 == 0) {
    matvec(xq, w, scales.data_ptr<float>(), mins.data_ptr<float>(), n, k, out.data_ptr<float>());
  } else {
    matmul(xq, m, w, scales.data_ptr<float>(), n, k, out.data_ptr<float>());
    const at::Tensor sums = at::from_blob(const_cast<float*>(xq.sums.data()), {m, k / kBlock},
                                          x.options());
    out.addmm_(sums, mins.view({n, k / kBlock}).t());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(infermcp, m) {
  m.def("q4_matmul(Tensor x, Tensor packed, Tensor scales, Tensor mins) -> Tensor");
}

TORCH_LIBRARY_IMPL(infermcp, CPU, m) {
  m.impl("q4_matmul", &q4_matmul);
}
