// 8-bit weight times float activation matmul for AVX2 CPUs: y = x @ dequant(w).T
//
// Weights come as llama.cpp's Q8_0 holds them: blocks of 32 signed 8-bit codes along the input
// dimension, each with a float16 scale (weight = code * scale; 1.0625 bytes a weight, as the
// file). Activations are quantized to int8 per block of 32 (as llama.cpp's q8_0 x q8_0 dot
// product does), so a block's dot product runs on integer multiply-adds:
//   x . w = scale_w * scale_x * (code_x . code_w)
//
// As in q4_matmul.cpp the weight rows go in tiles of 8, a tile's data block after block in the
// order the kernel reads it. For tile t and block b:
//   codes[t][b]: 256 bytes, eight runs of 32. Byte 4 * r + q of run i holds row r's code
//                4 * i + q.
//   scales[t][b]: the 8 rows' float16 scales.
// One 32-byte load gives four consecutive codes of each of the 8 rows; multiplied with the
// four matching activations broadcast to every row, each row's partial dot product stays in
// its own lane. maddubs multiplies unsigned by signed bytes: the weight's magnitude goes in as
// the unsigned operand and its sign moves onto the activation (|w| * sign(w) x, as llama.cpp
// does); a pair of products is at most 2 * 128 * 127 = 32512, inside int16, and each run's
// pairs are widened to int32 before they add up.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "avx2.h"

#include <algorithm>
#include <cstring>

namespace {

using infermcp::broadcast4;
using infermcp::kBlock;
using infermcp::kTile;
using infermcp::QuantizedRows;

constexpr int64_t kTileBlockBytes = 256;  // codes of one tile's block
constexpr int64_t kPrefetchBlocks = 4;    // 1 KiB ahead, as the 4-bit kernel

// R activation rows (starting at row i) times one tile of 8 weight rows: out[i + j][0..7].
template <int R>
void tile_rows(const QuantizedRows& x, int64_t i, int64_t blocks, const int8_t* w,
               const at::Half* w_scales, float (*out)[kTile]) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int j = 0; j < R; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const int8_t* wb = w + b * kTileBlockBytes;
    const char* ahead = reinterpret_cast<const char*>(wb + kPrefetchBlocks * kTileBlockBytes);
    for (int line = 0; line < 4; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_T0);
    __m256i sums[R];
    for (int j = 0; j < R; ++j) sums[j] = _mm256_setzero_si256();
    for (int run = 0; run < 8; ++run) {
      const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 32 * run));
      const __m256i magnitude = _mm256_sign_epi8(codes, codes);
      for (int j = 0; j < R; ++j) {
        const int8_t* xb = x.codes.data() + ((i + j) * blocks + b) * kBlock;
        const __m256i signed_x = _mm256_sign_epi8(broadcast4(xb + 4 * run), codes);
        sums[j] = _mm256_add_epi32(
            sums[j], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed_x), ones));
      }
    }
    const __m256 scales = _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(w_scales + b * kTile)));
    for (int j = 0; j < R; ++j) {
      const int64_t xb = (i + j) * blocks + b;
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[j]),
                               _mm256_mul_ps(scales, _mm256_set1_ps(x.scales[xb])), acc[j]);
    }
  }
  for (int j = 0; j < R; ++j) _mm256_storeu_ps(out[j], acc[j]);
}

at::Tensor q8_matmul(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                     int64_t n) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x: (rows, k) float32");
  const int64_t m = x.size(0), k = x.size(1), tiles_n = (n + kTile - 1) / kTile;
  TORCH_CHECK(n > 0 && k > 0 && k % kBlock == 0, "k must be a multiple of 32, n positive");
  const int64_t blocks = k / kBlock;
  TORCH_CHECK(codes.scalar_type() == at::kChar && codes.is_contiguous() &&
                  codes.numel() == tiles_n * blocks * kTileBlockBytes,
              "codes: (ceil(n / 8), k / 32, 256) int8, contiguous");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.is_contiguous() &&
                  scales.numel() == tiles_n * blocks * kTile,
              "scales: (ceil(n / 8), k / 32, 8) float16, contiguous");
  const at::Tensor xc = x.contiguous();
  const QuantizedRows xq(xc.data_ptr<float>(), m, k);
  at::Tensor out = at::empty({m, n}, x.options());
  const int8_t* w = codes.data_ptr<int8_t>();
  const at::Half* s = scales.data_ptr<at::Half>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, tiles_n, 4, [&](int64_t t0, int64_t t1) {
    infermcp::each_tile(m, n, t0, t1, o, [&](int64_t t, int64_t i, int64_t r, auto tile_out) {
      const int8_t* wt = w + t * blocks * kTileBlockBytes;
      const at::Half* st = s + t * blocks * kTile;
      if (r == 4) {
        tile_rows<4>(xq, i, blocks, wt, st, tile_out);
      } else {
        tile_rows<1>(xq, i, blocks, wt, st, tile_out);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(infermcp, m) {
  m.def("q8_matmul(Tensor x, Tensor codes, Tensor scales, int n) -> Tensor");
}

TORCH_LIBRARY_IMPL(infermcp, CPU, m) {
  m.impl("q8_matmul", &q8_matmul);
}
