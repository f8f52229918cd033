// 8-bit weight times float activation matmul for AVX2 CPUs: y = x @ dequant(w).T
//
// Weights come in blocks of 32 signed 8-bit codes along the input dimension, each block with a
// scale, or two (one for codes 0-15, one for codes 16-31), and optionally a minimum:
//   weight = code * scale (+ minimum)
// which holds every 5-, 6- and 8-bit type of llama.cpp as the file does: Q8_0 and Q5_0 (float16
// scale), Q5_1 (float16 scale and minimum), Q5_K (float32 scale and minimum), Q6_K (two float32
// scales). Activations are quantized to int8 per block of 32 (as llama.cpp's dot products
// with q8_0 or q8_1 activations do), so a block's dot product runs on integer multiply-adds:
//   x . w = scale_w * scale_x * (code_x . code_w) + minimum * scale_x * sum(code_x)
//
// As in q4_matmul.cpp the weight rows go in tiles of 8, a tile's data block after block in the
// order the kernel reads it. For tile t and block b:
//   codes[t][b]: 256 bytes, eight runs of 32. Byte 4 * r + q of run i holds row r's code
//                4 * i + q.
//   scales[t][b]: the 8 rows' scales, or 16 with two a block (the 8 rows' for codes 0-15, then
//                 their 8 for codes 16-31), float16 or float32.
//   mins[t][b]: the 8 rows' minimums, in the scales' type; none (an empty tensor): zero.
// One 32-byte load gives four consecutive codes of each of the 8 rows; multiplied with the
// four matching activations broadcast to every row, each row's partial dot product stays in
// its own lane. maddubs multiplies unsigned by signed bytes: the weight's magnitude goes in as
// the unsigned operand and its sign moves onto the activation (|w| * sign(w) x, as llama.cpp
// does); a pair of products is at most 2 * 128 * 127 = 32512, inside int16, and each run's
// pairs are widened to int32 before they add up. With AVX-512 VNNI, whose vpdpbusd adds the
// products up in int32 at once, the weight goes in as w + 128 instead (unsigned), and 128 times
// the activations' sum (QuantizedRows::half_sums) comes off: the same integers, an instruction
// fewer a product. With two scales a block, runs 0-3 (codes
// 0-15) and runs 4-7 (codes 16-31) add up apart, each then times its own scale.
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
using infermcp::load8;
using infermcp::QuantizedRows;

constexpr int64_t kTileBlockBytes = 256;  // codes of one tile's block
// 16 blocks (4 KiB) ahead, as the 4-bit kernel: at 4 (1 KiB) a decode step's Q8_0 matmuls read
// at 0.99-1.09x the rate of the 4-bit kernel's Q4_0 step in the same process, at 16 at
// 1.06-1.22x (bench.kernel_bench, 12 rounds alternating with the commit before; the memory's
// read rate 32-66 GB/s).
constexpr int64_t kPrefetchBlocks = 16;
constexpr int kRuns = 8;                  // loads of 32 bytes a tile's block

// R activation rows (starting at row i) times one tile of 8 weight rows: out[i + j][0..7].
// kScales: scales a block (1 or 2); kMins: whether blocks have minimums (w_mins).
template <int R, typename S, int kScales, bool kMins>
void tile_rows(const QuantizedRows& x, int64_t i, int64_t blocks, const int8_t* w,
               const S* w_scales, const S* w_mins, float (*out)[kTile]) {
  __m256 acc[R];
  for (int j = 0; j < R; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const int8_t* wb = w + b * kTileBlockBytes;
    const char* ahead = reinterpret_cast<const char*>(wb + kPrefetchBlocks * kTileBlockBytes);
    for (int line = 0; line < 4; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_T0);
    for (int part = 0; part < kScales; ++part) {
      __m256i sums[R];
#ifdef INFERMCP_VNNI  // (code + 128) . x, less 128 * sum(x): no saturation to avoid
      __m256i odd[R];
      for (int j = 0; j < R; ++j) {
        const int32_t* half_sums = x.half_sums.data() + 2 * ((i + j) * blocks + b);
        const int32_t sum = kScales == 2 ? half_sums[part] : half_sums[0] + half_sums[1];
        sums[j] = _mm256_set1_epi32(-128 * sum);
        odd[j] = _mm256_setzero_si256();
      }
#else
      for (int j = 0; j < R; ++j) sums[j] = _mm256_setzero_si256();
#endif
      for (int run = part * kRuns / kScales; run < (part + 1) * kRuns / kScales; ++run) {
        const __m256i codes =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 32 * run));
#ifdef INFERMCP_VNNI
        const __m256i biased = _mm256_xor_si256(codes, _mm256_set1_epi8(-128));
        for (int j = 0; j < R; ++j) {  // odd runs on chains of their own (the latency)
          const int8_t* xb = x.codes.data() + ((i + j) * blocks + b) * kBlock;
          __m256i& chain = run % 2 ? odd[j] : sums[j];
          chain = infermcp::dot4_add_at(chain, biased, xb + 4 * run);
        }
#else
        const __m256i magnitude = _mm256_sign_epi8(codes, codes);
        for (int j = 0; j < R; ++j) {
          const int8_t* xb = x.codes.data() + ((i + j) * blocks + b) * kBlock;
          const __m256i signed_x = _mm256_sign_epi8(broadcast4(xb + 4 * run), codes);
          sums[j] = infermcp::dot4_add(sums[j], magnitude, signed_x);
        }
#endif
      }
#ifdef INFERMCP_VNNI
      for (int j = 0; j < R; ++j) sums[j] = _mm256_add_epi32(sums[j], odd[j]);
#endif
      const __m256 scales = load8(w_scales + (b * kScales + part) * kTile);
      for (int j = 0; j < R; ++j) {
        const int64_t xb = (i + j) * blocks + b;
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[j]),
                                 _mm256_mul_ps(scales, _mm256_set1_ps(x.scales[xb])), acc[j]);
      }
    }
    if constexpr (kMins) {
      const __m256 mins = load8(w_mins + b * kTile);
      for (int j = 0; j < R; ++j) {
        acc[j] = _mm256_fmadd_ps(mins, _mm256_set1_ps(x.sums[(i + j) * blocks + b]), acc[j]);
      }
    }
  }
  for (int j = 0; j < R; ++j) _mm256_storeu_ps(out[j], acc[j]);
}

template <typename S, int kScales, bool kMins>
void run(const QuantizedRows& xq, int64_t m, const at::Tensor& codes, const at::Tensor& scales,
         const at::Tensor& mins, int64_t n, int64_t blocks, at::Tensor& out) {
  const int8_t* w = codes.data_ptr<int8_t>();
  const S* s = scales.data_ptr<S>();
  const S* mn = kMins ? mins.data_ptr<S>() : nullptr;
  float* o = out.data_ptr<float>();
  infermcp::parallel_tiles((n + kTile - 1) / kTile, [&](int64_t t0, int64_t t1) {
    // 4 rows a pass at most: at 8 the 1B Q8_0 file's 16 rows ran a third slower
    infermcp::each_tile<4>(m, n, t0, t1, o, [&](int64_t t, int64_t i, int64_t r, auto tile_out) {
      const int8_t* wt = w + t * blocks * kTileBlockBytes;
      const S* st = s + t * blocks * kScales * kTile;
      const S* mt = kMins ? mn + t * blocks * kTile : nullptr;
      infermcp::with_rows<4>(r, [&](auto rows) {
        tile_rows<rows(), S, kScales, kMins>(xq, i, blocks, wt, st, mt, tile_out);
      });
    });
  });
}

template <typename S>
void run_form(int64_t per_block, bool has_mins, const QuantizedRows& xq, int64_t m,
              const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& mins,
              int64_t n, int64_t blocks, at::Tensor& out) {
  if (per_block == 1 && !has_mins) run<S, 1, false>(xq, m, codes, scales, mins, n, blocks, out);
  if (per_block == 1 && has_mins) run<S, 1, true>(xq, m, codes, scales, mins, n, blocks, out);
  if (per_block == 2 && !has_mins) run<S, 2, false>(xq, m, codes, scales, mins, n, blocks, out);
  if (per_block == 2 && has_mins) run<S, 2, true>(xq, m, codes, scales, mins, n, blocks, out);
}

at::Tensor q8_matmul(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                     const at::Tensor& mins, int64_t n) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x: (rows, k) float32");
  const int64_t m = x.size(0), k = x.size(1), tiles_n = (n + kTile - 1) / kTile;
  TORCH_CHECK(n > 0 && k > 0 && k % kBlock == 0, "k must be a multiple of 32, n positive");
  const int64_t blocks = k / kBlock, tile_blocks = tiles_n * blocks * kTile;
  TORCH_CHECK(codes.scalar_type() == at::kChar && codes.is_contiguous() &&
                  codes.numel() == tiles_n * blocks * kTileBlockBytes,
              "codes: (ceil(n / 8), k / 32, 256) int8, contiguous");
  const auto kind = scales.scalar_type();
  const int64_t per_block = scales.numel() / tile_blocks;
  TORCH_CHECK((kind == at::kFloat || kind == at::kHalf) && scales.is_contiguous() &&
                  (per_block == 1 || per_block == 2) && scales.numel() == per_block * tile_blocks,
              "scales: (ceil(n / 8), k / 32 or k / 16, 8) float32 or float16, contiguous");
  const bool has_mins = mins.numel() != 0;
  TORCH_CHECK(!has_mins || (mins.scalar_type() == kind && mins.is_contiguous() &&
                            mins.numel() == tile_blocks),
              "mins: empty, or (ceil(n / 8), k / 32, 8) of the scales' type, contiguous");
  const at::Tensor xc = x.contiguous();
  const QuantizedRows xq(xc.data_ptr<float>(), m, k);
  at::Tensor out = at::empty({m, n}, x.options());
  if (kind == at::kHalf) {
    run_form<at::Half>(per_block, has_mins, xq, m, codes, scales, mins, n, blocks, out);
  } else {
    run_form<float>(per_block, has_mins, xq, m, codes, scales, mins, n, blocks, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(infermcp, m) {
  m.def("q8_matmul(Tensor x, Tensor codes, Tensor scales, Tensor mins, int n) -> Tensor");
}

TORCH_LIBRARY_IMPL(infermcp, CPU, m) {
  m.impl("q8_matmul", &q8_matmul);
}
