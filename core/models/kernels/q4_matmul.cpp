// 4-bit weight times float activation matmul for AVX2 CPUs: y = x @ dequant(w).T
//
// Weights come in blocks of 32 along the input dimension, each with a float scale and minimum
// (llama.cpp's q4_1): weight = code * scale + minimum. Activations are quantized on the fly to
// int8, one scale per block of 32 (as llama.cpp's q4_1 x q8_1 dot product does), so a block's
// dot product runs on integer multiply-adds:
//   x . w = scale * (x . code) + minimum * sum(x)
//
// The weight rows go in tiles of 8, and a tile's data lies block after block in the order the
// kernel reads it: one sequential stream per thread, which the hardware prefetcher follows (the
// row-by-row layout read eight streams at once and ran at half the memory's speed). For tile t
// and block b:
//   packed[t][b]: 128 bytes, four runs of 32. Byte 4 * r + q of run i holds row r's code
//                 4 * i + q in its low nibble and code 16 + 4 * i + q in its high one.
//   scales[t][b], mins[t][b]: the 8 rows' scales and minimums, float32 or float16 (a Q4_0 or
//                 Q4_1 file's own halves, exact: 0.5625 or 0.625 bytes a weight, as the file).
//                 Without minimums (an empty tensor) a block's minimum is -8 * its scale, as
//                 in Q4_0.
//   Or, in q4k_matmul, a Q4_K file's scales as it holds them: sub[t][b], the 8 rows' 6-bit
//                 scale codes then minimum codes (16 bytes), and super[t][b / 8], the float16
//                 d then dmin of each row's super-block of 8 blocks: scale = d * sc, minimum =
//                 -(dmin * m), computed exactly in float32 (0.578 bytes a weight, the file's
//                 0.5625, where float32 scales and minimums took 0.75).
// So one 32-byte load, split into nibbles, gives four consecutive codes of each of the 8 rows;
// multiplied (maddubs) with the four matching activations broadcast to every row, it leaves each
// row's partial dot product in its own lane, and a block ends as 8 row sums in one register.
// maddubs multiplies the unsigned codes (0..15) by the signed activations (-127..127); a lane
// adds 8 such pairs, at most 8 * 2 * 15 * 127 = 30480, inside int16. With AVX-512 VNNI one
// vpdpbusd multiplies and adds up into the row's int32 lane at once (the same sums), and a pass
// over a tile computes 8 activation rows, not 4 (AVX-512's 32 registers hold their sums): the
// codes are unpacked once for 8 rows. With the activations' broadcast folded into vpdpbusd
// too (avx2.h's dot4_add_at), 16 rows of Q4_K blocks ran 9-12% faster, Q4_0 5-8%.
//
// q5_matmul and q5k_matmul read 5-bit codes (0..31: Q5_0, Q5_1, Q5_K) as the file holds them,
// 0.69-0.75 bytes a weight where q8_matmul's byte a code reads 1.25. A tile's block is 160 bytes:
//   packed[t][b][0..127]: the codes' low 4 bits, laid out as above;
//   packed[t][b][128 + 4 * r + q]: bit s is the fifth bit of row r's code 4 * s + q.
// The scales are q4_matmul's (Q5_1's d and m, float16) or q4k_matmul's (Q5_K's). Q5_0 has no
// minimums: weight = d * (q - 16), and the 16 comes off in integers, 16 times the sum of the
// block's activation codes. Without VNNI the low and high nibbles' products add up apart in
// int16 (at most 4 * 2 * 31 * 127 = 31496 each). The floats are then computed as q8_matmul
// computes them from the same weights a byte a code: the same outputs, bit for bit.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "avx2.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

using infermcp::broadcast4;
using infermcp::kBlock;
using infermcp::kTile;
using infermcp::load8;
using infermcp::QuantizedRows;

// packed bytes of one tile's block: 4-bit codes, or 5-bit ones (their fifth bits after)
template <int kBits>
constexpr int64_t kTileBlockBytes = kBits == 5 ? 160 : 128;
// How many blocks ahead a tile's codes are prefetched: the hardware prefetcher alone left the
// loads waiting. 8 blocks (1 KiB) were ~5% faster than none; in weights in huge pages 32 (4 KiB)
// read the 1B Q4_0 file's matmuls at 44.2 GB/s where 8 read 38.4, when the machine's memory was
// fast (medians of 12 alternating rounds), and at the same speed as 8 when it was slow.
constexpr int64_t kPrefetchBlocks = 32;
constexpr int64_t kSuperBlocks = 8;  // blocks of a Q4_K super-block

// The integer dot products of R activation rows (from row i) with block b of a tile: each
// row's 8 sums (one a weight row) of code times activation, in int32 lanes.
// (Inlined by force: as calls, the 4-bit kernel ran 2-4% slower at 16 rows.)
template <int R, int kBits>
__attribute__((always_inline)) inline void block_sums(const QuantizedRows& x, int64_t i,
                                                      int64_t blocks, int64_t b,
                                                      const uint8_t* wb, __m256i (&sums)[R]) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const char* ahead = reinterpret_cast<const char*>(
      wb + kPrefetchBlocks * kTileBlockBytes<kBits>);
  _mm_prefetch(ahead, _MM_HINT_T0);  // prefetching past the end is harmless
  _mm_prefetch(ahead + 64, _MM_HINT_T0);
  if constexpr (kBits == 5) _mm_prefetch(ahead + 128, _MM_HINT_T0);
  // the high nibbles' products on chains of their own: with VNNI for the latency, without it
  // because 5-bit codes' sums would overflow int16 together
  __m256i high[R];
  for (int j = 0; j < R; ++j) sums[j] = high[j] = _mm256_setzero_si256();
  __m256i fifth_bits = _mm256_setzero_si256();
  if constexpr (kBits == 5) {
    fifth_bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 128));
  }
  for (int run = 0; run < 4; ++run) {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 32 * run));
    __m256i lo = _mm256_and_si256(packed, low4);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
    if constexpr (kBits == 5) {  // bit run (low nibbles) and bit 4 + run (high) to bit 4
      const __m256i bit4 = _mm256_set1_epi8(0x10);
      lo = _mm256_or_si256(lo, _mm256_and_si256(
          _mm256_srli_epi16(_mm256_slli_epi16(fifth_bits, 4), run), bit4));
      hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_srli_epi16(fifth_bits, run), bit4));
    }
    for (int j = 0; j < R; ++j) {
      const int8_t* xb = x.codes.data() + ((i + j) * blocks + b) * kBlock;
#ifdef INFERMCP_VNNI  // each row's sums in int32 lanes straight away (asm: kept in order)
      sums[j] = infermcp::dot4_add_at(sums[j], lo, xb + 4 * run);
      high[j] = infermcp::dot4_add_at(high[j], hi, xb + 16 + 4 * run);
#else
      sums[j] = _mm256_add_epi16(sums[j], _mm256_maddubs_epi16(lo, broadcast4(xb + 4 * run)));
      if constexpr (kBits == 5) {
        high[j] = _mm256_add_epi16(high[j],
                                   _mm256_maddubs_epi16(hi, broadcast4(xb + 16 + 4 * run)));
      } else {
        sums[j] = _mm256_add_epi16(sums[j],
                                   _mm256_maddubs_epi16(hi, broadcast4(xb + 16 + 4 * run)));
      }
      // the sum is due here: without this the compiler reassociated the adds into a tree
      // over all 8 * R products, whose 32 live registers spilled to the stack (a store and a
      // load per product: the store port, not the multiplies, set the pace)
      asm("" : "+x"(sums[j]));
#endif
    }
  }
  for (int j = 0; j < R; ++j) {
#ifdef INFERMCP_VNNI
    sums[j] = _mm256_add_epi32(sums[j], high[j]);
#else  // int16 pairs to int32 lanes
    const __m256i ones = _mm256_set1_epi16(1);
    sums[j] = _mm256_madd_epi16(sums[j], ones);
    if constexpr (kBits == 5) sums[j] = _mm256_add_epi32(sums[j], _mm256_madd_epi16(high[j], ones));
#endif
  }
}

// acc[j] += scale * (x.scale * dots) + min * x.sum for each of the 8 weight rows.
template <int R>
__attribute__((always_inline)) inline void add_blocks(const QuantizedRows& x, int64_t i,
                                                      int64_t blocks, int64_t b,
                                                      const __m256i (&sums)[R], __m256 scales,
                                                      __m256 mins, __m256 (&acc)[R]) {
  for (int j = 0; j < R; ++j) {
    const int64_t xb = (i + j) * blocks + b;
    const __m256 dots = _mm256_cvtepi32_ps(sums[j]);
    acc[j] = _mm256_fmadd_ps(dots, _mm256_mul_ps(scales, _mm256_set1_ps(x.scales[xb])),
                             acc[j]);
    acc[j] = _mm256_fmadd_ps(mins, _mm256_set1_ps(x.sums[xb]), acc[j]);
  }
}

// R activation rows (starting at row i) times one tile of 8 weight rows: out[i + j][0..7].
// Without minimums (kMins false) each is -8 times its scale (Q4_0), or -16 times (Q5_0).
template <int R, int kBits, bool kMins, typename S>
void tile_rows(const QuantizedRows& x, int64_t i, int64_t blocks, const uint8_t* w,
               const S* w_scales, const S* w_mins, float (*out)[kTile]) {
  __m256 acc[R];
  for (int j = 0; j < R; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i sums[R];
    block_sums<R, kBits>(x, i, blocks, b, w + b * kTileBlockBytes<kBits>, sums);
    const __m256 scales = load8(w_scales + b * kTile);
    if constexpr (kMins) {
      add_blocks<R>(x, i, blocks, b, sums, scales, load8(w_mins + b * kTile), acc);
    } else if constexpr (kBits == 5) {  // (q - 16) . x in integers, as q8_matmul's codes
      for (int j = 0; j < R; ++j) {
        const int64_t xb = (i + j) * blocks + b;
        const int32_t sum = x.half_sums[2 * xb] + x.half_sums[2 * xb + 1];
        const __m256i dots = _mm256_sub_epi32(sums[j], _mm256_set1_epi32(16 * sum));
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots),
                                 _mm256_mul_ps(scales, _mm256_set1_ps(x.scales[xb])), acc[j]);
      }
    } else {  // scale * (x.scale * dots - 8 * x.sum): a multiply fewer a row than with minimums
      for (int j = 0; j < R; ++j) {
        const int64_t xb = (i + j) * blocks + b;
        const __m256 dots = _mm256_cvtepi32_ps(sums[j]);
        const __m256 dot = _mm256_fmadd_ps(dots, _mm256_set1_ps(x.scales[xb]),
                                           _mm256_set1_ps(x.minus8_sums[xb]));
        acc[j] = _mm256_fmadd_ps(scales, dot, acc[j]);
      }
    }
  }
  for (int j = 0; j < R; ++j) _mm256_storeu_ps(out[j], acc[j]);
}

// The same with Q4_K's scales as the file holds them (q4k_matmul): a block's 8 rows' 6-bit
// scale and minimum codes, sub[t][b] = (sc[8], m[8]) bytes, times their super-block's float16
// d and dmin, super[t][b / 8] = (d[8], dmin[8]). scale = d * sc and min = -(dmin * m), each
// exact in float32: the floats the float layout holds, in 0.0625 bytes a weight, not 0.25.
template <int R, int kBits>
void tile_rows_k(const QuantizedRows& x, int64_t i, int64_t blocks, const uint8_t* w,
                 const uint8_t* sub, const c10::Half* super, float (*out)[kTile]) {
  __m256 acc[R];
  for (int j = 0; j < R; ++j) acc[j] = _mm256_setzero_ps();
  __m256 d = _mm256_setzero_ps(), dmin = d;
  for (int64_t b = 0; b < blocks; ++b) {
    if (b % kSuperBlocks == 0) {
      d = load8(super + (b / kSuperBlocks) * 2 * kTile);
      dmin = load8(super + (b / kSuperBlocks) * 2 * kTile + kTile);
    }
    __m256i sums[R];
    block_sums<R, kBits>(x, i, blocks, b, w + b * kTileBlockBytes<kBits>, sums);
    const uint8_t* codes = sub + b * 2 * kTile;
    const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
        reinterpret_cast<const __m128i*>(codes))));
    const __m256 m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
        reinterpret_cast<const __m128i*>(codes + kTile))));
    const __m256 mins = _mm256_xor_ps(_mm256_mul_ps(dmin, m), _mm256_set1_ps(-0.f));
    add_blocks<R>(x, i, blocks, b, sums, _mm256_mul_ps(d, sc), mins, acc);
  }
  for (int j = 0; j < R; ++j) _mm256_storeu_ps(out[j], acc[j]);
}

struct Shape {
  int64_t m, k, blocks, tiles;  // activation rows, inputs, blocks a row, tiles of weight rows
};

// x (rows, k) float32 and the tiled kBits codes of n weight rows, checked.
template <int kBits>
Shape shape_of(const at::Tensor& x, const at::Tensor& packed, int64_t n) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x: (rows, k) float32");
  const int64_t m = x.size(0), k = x.size(1), tiles = (n + kTile - 1) / kTile;
  TORCH_CHECK(n > 0 && k > 0 && k % kBlock == 0, "k must be a multiple of 32, n positive");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                  packed.numel() == tiles * (k / kBlock) * kTileBlockBytes<kBits>,
              "packed: (ceil(n / 8), k / 32, ", kTileBlockBytes<kBits>, ") uint8, contiguous");
  return {m, k, k / kBlock, tiles};
}

// The (rows, n) out: x quantized, then rows(xq, t, i, r, tile_out) for every tile t and group
// of r activation rows from row i, tiles split over the threads.
template <typename Rows>
at::Tensor run_tiles(const at::Tensor& x, const Shape& shape, int64_t n, Rows rows) {
  const at::Tensor xc = x.contiguous();
  const QuantizedRows xq(xc.data_ptr<float>(), shape.m, shape.k);
  at::Tensor out = at::empty({shape.m, n}, x.options());
  float* o = out.data_ptr<float>();
  infermcp::parallel_tiles(shape.tiles, [&](int64_t t0, int64_t t1) {
    infermcp::each_tile(shape.m, n, t0, t1, o,
                        [&](int64_t t, int64_t i, int64_t r, auto tile_out) {
                          rows(xq, t, i, r, tile_out);
                        });
  });
  return out;
}

// Float scales and minimums of the tiles of a shape, checked.
void check_scales(const Shape& shape, const at::Tensor& scales, const at::Tensor& mins) {
  const int64_t per_tile = shape.tiles * shape.blocks * kTile;
  const auto kind = scales.scalar_type();
  TORCH_CHECK((kind == at::kFloat || kind == at::kHalf) && scales.is_contiguous() &&
                  scales.numel() == per_tile,
              "scales: (ceil(n / 8), k / 32, 8) float32 or float16, contiguous");
  TORCH_CHECK(mins.numel() == 0 || (mins.scalar_type() == kind && mins.is_contiguous() &&
                                    mins.numel() == per_tile),
              "mins: empty, or (ceil(n / 8), k / 32, 8) of the scales' type, contiguous");
}

// A K-quant file's scales of the tiles of a shape, checked.
void check_k_scales(const Shape& shape, const at::Tensor& sub, const at::Tensor& super) {
  const int64_t blocks = shape.blocks;
  TORCH_CHECK(blocks % kSuperBlocks == 0, "k must be a multiple of 256");
  TORCH_CHECK(sub.scalar_type() == at::kByte && sub.is_contiguous() &&
                  sub.numel() == shape.tiles * blocks * 2 * kTile,
              "sub: (ceil(n / 8), k / 32, 2, 8) uint8, contiguous");
  TORCH_CHECK(super.scalar_type() == at::kHalf && super.is_contiguous() &&
                  super.numel() == shape.tiles * (blocks / kSuperBlocks) * 2 * kTile,
              "super: (ceil(n / 8), k / 256, 2, 8) float16, contiguous");
}

template <int kBits, typename S>
at::Tensor run(const at::Tensor& x, const Shape& shape, const at::Tensor& packed,
               const at::Tensor& scales, const at::Tensor& mins, int64_t n) {
  const uint8_t* w = packed.data_ptr<uint8_t>();
  const S* s = scales.data_ptr<S>();
  const S* mn = mins.numel() ? mins.data_ptr<S>() : nullptr;
  const int64_t blocks = shape.blocks;
  return run_tiles(x, shape, n, [&](const QuantizedRows& xq, int64_t t, int64_t i, int64_t r,
                                    auto tile_out) {
    const uint8_t* wt = w + t * blocks * kTileBlockBytes<kBits>;
    const S* st = s + t * blocks * kTile;
    const S* mt = mn ? mn + t * blocks * kTile : nullptr;
    infermcp::with_rows(r, [&](auto rows) {
      if (mt != nullptr) {
        tile_rows<rows(), kBits, true>(xq, i, blocks, wt, st, mt, tile_out);
      } else {
        tile_rows<rows(), kBits, false>(xq, i, blocks, wt, st, mt, tile_out);
      }
    });
  });
}

// q4_matmul (kBits 4) and q5_matmul (5): float scales and minimums.
template <int kBits>
at::Tensor scaled_matmul(const at::Tensor& x, const at::Tensor& packed,
                         const at::Tensor& scales, const at::Tensor& mins, int64_t n) {
  const Shape shape = shape_of<kBits>(x, packed, n);
  check_scales(shape, scales, mins);
  return scales.scalar_type() == at::kHalf
             ? run<kBits, at::Half>(x, shape, packed, scales, mins, n)
             : run<kBits, float>(x, shape, packed, scales, mins, n);
}

// q4k_matmul (kBits 4) and q5k_matmul (5): a K-quant file's scales as it holds them.
template <int kBits>
at::Tensor k_matmul(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& sub,
                    const at::Tensor& super, int64_t n) {
  const Shape shape = shape_of<kBits>(x, packed, n);
  const int64_t blocks = shape.blocks;
  check_k_scales(shape, sub, super);
  const uint8_t* w = packed.data_ptr<uint8_t>();
  const uint8_t* sp = sub.data_ptr<uint8_t>();
  const c10::Half* up = super.data_ptr<at::Half>();
  return run_tiles(x, shape, n, [&](const QuantizedRows& xq, int64_t t, int64_t i, int64_t r,
                                    auto tile_out) {
    const uint8_t* wt = w + t * blocks * kTileBlockBytes<kBits>;
    const uint8_t* st = sp + t * blocks * 2 * kTile;
    const c10::Half* ut = up + t * (blocks / kSuperBlocks) * 2 * kTile;
    infermcp::with_rows(r, [&](auto rows) {
      tile_rows_k<rows(), kBits>(xq, i, blocks, wt, st, ut, tile_out);
    });
  });
}

// Row e of x times expert e's 4-bit weights, every e in one pass over all their tiles: a
// mixture's chosen experts for one token (q4_matmul_experts, q4k_matmul_experts), where a call
// an expert woke the threads and returned 16 times a layer. Each row computes as q4_matmul (or
// q4k_matmul) computes it alone. kK: first and second are sub and super, else scales and mins.
template <bool kK>
at::Tensor experts_matmul(const at::Tensor& x, at::TensorList packed, at::TensorList first,
                          at::TensorList second, int64_t n) {
  const int64_t count = x.dim() == 2 ? x.size(0) : 0;
  TORCH_CHECK(count > 0 && static_cast<int64_t>(packed.size()) == count &&
                  static_cast<int64_t>(first.size()) == count &&
                  static_cast<int64_t>(second.size()) == count,
              "x: (experts, k), and each list one tensor a row of it");
  Shape shape{};
  for (int64_t e = 0; e < count; ++e) {
    shape = shape_of<4>(x, packed[e], n);
    if constexpr (kK) {
      check_k_scales(shape, first[e], second[e]);
    } else {
      check_scales(shape, first[e], second[e]);
      TORCH_CHECK(first[e].scalar_type() == first[0].scalar_type() &&
                      (second[e].numel() == 0) == (second[0].numel() == 0),
                  "every expert's scales (and minimums, or none) of one type");
    }
  }
  const at::Tensor xc = x.contiguous();
  const QuantizedRows xq(xc.data_ptr<float>(), count, shape.k);
  at::Tensor out = at::empty({count, n}, x.options());
  float* o = out.data_ptr<float>();
  const int64_t blocks = shape.blocks, tiles = shape.tiles;
  // tile(e, t, tile_out): expert e's tile t against row e
  const auto each = [&](auto tile) {
    at::parallel_for(0, count * tiles, 4, [&](int64_t begin, int64_t end) {
      float tile_out[4][kTile];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t e = task / tiles, t = task % tiles;
        tile(e, t, tile_out);
        std::memcpy(o + e * n + t * kTile, tile_out[0],
                    std::min(kTile, n - t * kTile) * sizeof(float));
      }
    });
  };
  if constexpr (kK) {
    each([&](int64_t e, int64_t t, float (*tile_out)[kTile]) {
      tile_rows_k<1, 4>(xq, e, blocks, packed[e].data_ptr<uint8_t>() + t * blocks * 128,
                        first[e].data_ptr<uint8_t>() + t * blocks * 2 * kTile,
                        second[e].data_ptr<at::Half>() + t * (blocks / kSuperBlocks) * 2 * kTile,
                        tile_out);
    });
  } else {
    const auto scaled = [&](auto type) {
      using S = decltype(type);
      each([&](int64_t e, int64_t t, float (*tile_out)[kTile]) {
        const uint8_t* wt = packed[e].data_ptr<uint8_t>() + t * blocks * 128;
        const S* st = first[e].data_ptr<S>() + t * blocks * kTile;
        if (second[e].numel()) {
          tile_rows<1, 4, true>(xq, e, blocks, wt, st, second[e].data_ptr<S>() + t * blocks * kTile,
                                tile_out);
        } else {
          tile_rows<1, 4, false>(xq, e, blocks, wt, st, static_cast<const S*>(nullptr), tile_out);
        }
      });
    };
    if (first[0].scalar_type() == at::kHalf) {
      scaled(at::Half());
    } else {
      scaled(float());
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(infermcp, m) {
  m.def("q4_matmul(Tensor x, Tensor packed, Tensor scales, Tensor mins, int n) -> Tensor");
  m.def("q4k_matmul(Tensor x, Tensor packed, Tensor sub, Tensor super, int n) -> Tensor");
  m.def("q5_matmul(Tensor x, Tensor packed, Tensor scales, Tensor mins, int n) -> Tensor");
  m.def("q5k_matmul(Tensor x, Tensor packed, Tensor sub, Tensor super, int n) -> Tensor");
  m.def("q4_matmul_experts(Tensor x, Tensor[] packed, Tensor[] scales, Tensor[] mins, int n) "
        "-> Tensor");
  m.def("q4k_matmul_experts(Tensor x, Tensor[] packed, Tensor[] sub, Tensor[] super, int n) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(infermcp, CPU, m) {
  m.impl("q4_matmul", &scaled_matmul<4>);
  m.impl("q4k_matmul", &k_matmul<4>);
  m.impl("q5_matmul", &scaled_matmul<5>);
  m.impl("q5k_matmul", &k_matmul<5>);
  m.impl("q4_matmul_experts", &experts_matmul<false>);
  m.impl("q4k_matmul_experts", &experts_matmul<true>);
}
