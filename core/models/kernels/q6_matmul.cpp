// 6-bit weight times float activation matmul for AVX2 CPUs: y = x @ dequant(w).T, with a
// Q6_K file's weights as it holds them, 0.82 bytes a weight (q8_matmul.cpp reads the same
// weights a byte a code with float32 scales: 1.25).
//
// Weights come in blocks of 32 codes q (0..63) along the input dimension:
//   weight = d * sc * (q - 32)
// with a signed 8-bit sc for each 16 codes and a float16 d for each 256 (8 blocks). Activations
// are quantized to int8 per block of 32 (as in q8_matmul.cpp), so a half block's dot product is
//   x . w = d * sc * scale_x * (code_x . q - 32 * sum(code_x))
// on integer multiply-adds: q is unsigned and code_x signed, as maddubs wants them, and a pair
// of products is at most 2 * 63 * 127, inside int16. The integer sums are those of q8_matmul's
// signed codes q - 32 and d * sc is exact in float32, so both kernels give the same floats.
//
// The weight rows go in tiles of 8 as in q8_matmul.cpp, whose runs (32 bytes: codes 4 * i + q
// of the 8 rows at byte 4 * r + q) are packed here. For tile t and block b:
//   codes[t][b]: 192 bytes. Bytes 32 * p + c (p = 0..3) hold run 2p's byte c in their low
//                nibble and run 2p + 1's in their high one (the codes' bits 0-3); bytes
//                128 + 32 * h + c (h = 0, 1) hold bits 4-5 of runs 4h + s's byte c at their
//                bits 2s, 2s + 1.
//   sub[t][2b + half][r]: int8 sc of row r's codes 16 * half .. 16 * half + 15 of the block.
//   super[t][b / 8][r]: float16 d of row r's 256 codes.
// q6_pack makes codes from q8_matmul's layout of the codes q - 32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "avx2.h"

#include <cstring>

namespace {

using infermcp::kBlock;
using infermcp::kTile;
using infermcp::load8;
using infermcp::QuantizedRows;

constexpr int64_t kTileBlockBytes = 192;  // codes of one tile's block
constexpr int64_t kRunBytes = 32;
constexpr int64_t kBlocksPerSuper = 8;    // blocks of 32 under one d
constexpr int64_t kPrefetchBytes = 4096;  // as the other kernels (1 KiB: about as fast)

// R activation rows (starting at row i) times one tile of 8 weight rows: out[i + j][0..7].
template <int R>
void tile_rows(const QuantizedRows& x, int64_t i, int64_t blocks,
               const uint8_t* w, const int8_t* sub, const c10::Half* super,
               float (*out)[kTile]) {
  const __m256i low_bits = _mm256_set1_epi8(0x0F);
  const __m256i high_bits = _mm256_set1_epi8(0x30);
  __m256 acc[R];
  for (int j = 0; j < R; ++j) acc[j] = _mm256_setzero_ps();
  __m256 d = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    if (b % kBlocksPerSuper == 0) d = load8(super + (b / kBlocksPerSuper) * kTile);
    const uint8_t* wb = w + b * kTileBlockBytes;
    const char* ahead = reinterpret_cast<const char*>(wb + kPrefetchBytes);
    for (int line = 0; line < 3; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_T0);
    for (int half = 0; half < 2; ++half) {
      const auto load = [&](int64_t at) {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + at));
      };
      const __m256i low0 = load(2 * half * kRunBytes), low1 = load((2 * half + 1) * kRunBytes);
      const __m256i high = load(4 * kRunBytes + half * kRunBytes);
      const __m256i codes[4] = {
          _mm256_or_si256(_mm256_and_si256(low0, low_bits),
                          _mm256_and_si256(_mm256_slli_epi16(high, 4), high_bits)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(low0, 4), low_bits),
                          _mm256_and_si256(_mm256_slli_epi16(high, 2), high_bits)),
          _mm256_or_si256(_mm256_and_si256(low1, low_bits), _mm256_and_si256(high, high_bits)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(low1, 4), low_bits),
                          _mm256_and_si256(_mm256_srli_epi16(high, 2), high_bits))};
      __m256i sums[R], odd[R];  // odd runs on chains of their own (the latency)
      for (int j = 0; j < R; ++j) sums[j] = odd[j] = _mm256_setzero_si256();
      for (int s = 0; s < 4; ++s) {
        const int run = 4 * half + s;
        for (int j = 0; j < R; ++j) {
          const int8_t* xb = x.codes.data() + ((i + j) * blocks + b) * kBlock;
          __m256i& chain = s % 2 ? odd[j] : sums[j];
          chain = infermcp::dot4_add_at(chain, codes[s], xb + 4 * run);
        }
      }
      for (int j = 0; j < R; ++j) sums[j] = _mm256_add_epi32(sums[j], odd[j]);
      int64_t sc;
      std::memcpy(&sc, sub + (2 * b + half) * kTile, sizeof sc);
      const __m256 scales = _mm256_mul_ps(
          d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(sc))));
      for (int j = 0; j < R; ++j) {
        const int64_t xb = (i + j) * blocks + b;
        const __m256i offset = _mm256_set1_epi32(32 * x.half_sums[2 * xb + half]);
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(sums[j], offset)),
                                 _mm256_mul_ps(scales, _mm256_set1_ps(x.scales[xb])), acc[j]);
      }
    }
  }
  for (int j = 0; j < R; ++j) _mm256_storeu_ps(out[j], acc[j]);
}

at::Tensor q6_matmul(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& sub,
                     const at::Tensor& super, int64_t n) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x: (rows, k) float32");
  const int64_t m = x.size(0), k = x.size(1), tiles_n = (n + kTile - 1) / kTile;
  TORCH_CHECK(n > 0 && k > 0 && k % (kBlock * kBlocksPerSuper) == 0,
              "k must be a multiple of 256, n positive");
  const int64_t blocks = k / kBlock;
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.is_contiguous() &&
                  codes.numel() == tiles_n * blocks * kTileBlockBytes,
              "codes: (ceil(n / 8), k / 32, 192) uint8, contiguous");
  TORCH_CHECK(sub.scalar_type() == at::kChar && sub.is_contiguous() &&
                  sub.numel() == tiles_n * blocks * 2 * kTile,
              "sub: (ceil(n / 8), k / 16, 8) int8, contiguous");
  TORCH_CHECK(super.scalar_type() == at::kHalf && super.is_contiguous() &&
                  super.numel() == tiles_n * (blocks / kBlocksPerSuper) * kTile,
              "super: (ceil(n / 8), k / 256, 8) float16, contiguous");
  const at::Tensor xc = x.contiguous();
  const QuantizedRows xq(xc.data_ptr<float>(), m, k);
  at::Tensor out = at::empty({m, n}, x.options());
  const uint8_t* w = codes.data_ptr<uint8_t>();
  const int8_t* s = sub.data_ptr<int8_t>();
  const c10::Half* d = super.data_ptr<c10::Half>();
  float* o = out.data_ptr<float>();
  infermcp::parallel_tiles(tiles_n, [&](int64_t t0, int64_t t1) {
    // 4 rows a pass at most: at 8, their sums and the block's 4 code vectors spilled out of the
    // registers, and 16 rows ran no faster
    infermcp::each_tile<4>(m, n, t0, t1, o, [&](int64_t t, int64_t i, int64_t r, auto tile_out) {
      const uint8_t* wt = w + t * blocks * kTileBlockBytes;
      const int8_t* st = s + t * blocks * 2 * kTile;
      const c10::Half* dt = d + t * (blocks / kBlocksPerSuper) * kTile;
      infermcp::with_rows<4>(r, [&](auto rows) {
        tile_rows<rows()>(xq, i, blocks, wt, st, dt, tile_out);
      });
    });
  });
  return out;
}

// q8_matmul's tiled codes q - 32 (-32..31; (tiles, blocks, 256) int8) -> (tiles, blocks, 192)
// uint8 as q6_matmul reads them.
at::Tensor q6_pack(const at::Tensor& codes) {
  TORCH_CHECK(codes.dim() == 3 && codes.size(2) == 8 * kRunBytes &&
                  codes.scalar_type() == at::kChar && codes.is_contiguous(),
              "codes: (tiles, blocks, 256) int8, contiguous");
  const int64_t count = codes.size(0) * codes.size(1);
  at::Tensor out = at::empty({codes.size(0), codes.size(1), kTileBlockBytes},
                             codes.options().dtype(at::kByte));
  const int8_t* in = codes.data_ptr<int8_t>();
  uint8_t* packed = out.data_ptr<uint8_t>();
  at::parallel_for(0, count, 1024, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int8_t* runs = in + b * 8 * kRunBytes;
      uint8_t* o = packed + b * kTileBlockBytes;
      for (int64_t c = 0; c < kRunBytes; ++c) {
        uint8_t q[8];
        for (int run = 0; run < 8; ++run) {
          q[run] = static_cast<uint8_t>(runs[run * kRunBytes + c] + 32);
        }
        for (int p = 0; p < 4; ++p) {
          o[p * kRunBytes + c] = static_cast<uint8_t>((q[2 * p] & 15) | (q[2 * p + 1] & 15) << 4);
        }
        for (int h = 0; h < 2; ++h) {
          uint8_t bits = 0;
          for (int s = 0; s < 4; ++s) bits |= ((q[4 * h + s] >> 4) & 3) << (2 * s);
          o[4 * kRunBytes + h * kRunBytes + c] = bits;
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(infermcp, m) {
  m.def("q6_matmul(Tensor x, Tensor codes, Tensor sub, Tensor super, int n) -> Tensor");
  m.def("q6_pack(Tensor codes) -> Tensor");
}

TORCH_LIBRARY_IMPL(infermcp, CPU, m) {
  m.impl("q6_matmul", &q6_matmul);
  m.impl("q6_pack", &q6_pack);
}
