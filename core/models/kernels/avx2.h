// Helpers shared by the AVX2 kernels: horizontal sums, e^x, activations quantized to int8 per
// block of 32 for the integer matmuls (q4_matmul.cpp, q6_matmul.cpp, q8_matmul.cpp), and how
// those split their weight tiles over the threads.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace infermcp {

// The sum of a vector's 8 floats.
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The sum of a vector's 8 int32s.
inline int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

// e^x, 8 lanes at a time (Cephes' single-precision polynomial, relative error ~1e-7).
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)),
                    _mm256_set1_ps(-88.3762626647949f));
  const __m256 n = _mm256_floor_ps(
      _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  const __m256i pow2 = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(pow2));
}

constexpr int64_t kBlock = 32;  // values a quantization block holds

// Activations quantized per block of 32: int8 codes, their scales, scale * sum(codes), that
// times -8 (what a Q4_0 block's implied minimums, -8 times its scale, take), and the sums of
// each half block's codes.
struct QuantizedRows {
  std::vector<int8_t> codes;
  std::vector<float> scales;
  std::vector<float> sums;
  std::vector<float> minus8_sums;
  std::vector<int32_t> half_sums;

  QuantizedRows(const float* x, int64_t rows, int64_t k)
      : codes(rows * k), scales(rows * k / kBlock), sums(rows * k / kBlock),
        minus8_sums(rows * k / kBlock), half_sums(2 * rows * k / kBlock) {
    const __m256 sign = _mm256_set1_ps(-0.f);
    // packing 32-bit lanes to bytes interleaves the 128-bit halves; this puts them back
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < rows * k / kBlock; ++b) {
      const float* xb = x + b * kBlock;
      __m256 v[4];
      __m256 amax = _mm256_setzero_ps();
      for (int j = 0; j < 4; ++j) {
        v[j] = _mm256_loadu_ps(xb + 8 * j);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
      }
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      const float top = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
      const __m256 inverse = _mm256_set1_ps(top > 0.f ? 127.f / top : 0.f);
      __m256i q[4];  // rounded to nearest, ties to even (the default rounding mode)
      for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inverse));
      half_sums[2 * b] = hsum_epi32(_mm256_add_epi32(q[0], q[1]));
      half_sums[2 * b + 1] = hsum_epi32(_mm256_add_epi32(q[2], q[3]));
      const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]),
                                               _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes.data() + b * kBlock),
                          _mm256_permutevar8x32_epi32(bytes, order));
      scales[b] = top / 127.f;
      sums[b] = scales[b] * static_cast<float>(half_sums[2 * b] + half_sums[2 * b + 1]);
      minus8_sums[b] = -8.f * sums[b];
    }
  }
};

// A tile's 8 scales or minimums of one block, float32 or float16, as float32.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// AVX-512 VNNI where the build enabled it for this CPU (kernels/__init__.py): vpdpbusd on
// 256-bit registers adds up 4 byte products in each 32-bit lane in one instruction.
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define INFERMCP_VNNI 1
#endif

// acc plus, in each 32-bit lane, its 4 products of an unsigned byte of u by a signed byte of s,
// in AVX2's three instructions (with VNNI the kernels call dot4_add_at, one vpdpbusd): exact as
// long as a pair of products fits int16 (maddubs saturates), which the callers' codes guarantee.
inline __m256i dot4_add(__m256i acc, __m256i u, __m256i s) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s),
                                                 _mm256_set1_epi16(1)));
}

// Four int8 activations broadcast to every 32-bit lane.
inline __m256i broadcast4(const int8_t* x) {
  int32_t v;
  std::memcpy(&v, x, sizeof v);
  return _mm256_set1_epi32(v);
}

// dot4_add(acc, u, broadcast4(x)). With VNNI the broadcast is the multiply-add's memory operand
// ({1to8}), one instruction where the compiler emitted two (a broadcast, then vpdpbusd): at 16
// rows, where the multiply-adds set the pace, the 4-bit kernel ran 7-10% faster on Q4_K.
inline __m256i dot4_add_at(__m256i acc, __m256i u, const int8_t* x) {
#ifdef INFERMCP_VNNI
  asm("vpdpbusd %2%{1to8%}, %1, %0"
      : "+v"(acc)
      : "v"(u), "m"(*reinterpret_cast<const int32_t*>(x)));
  return acc;
#else
  return dot4_add(acc, u, broadcast4(x));
#endif
}

constexpr int64_t kTile = 8;  // weight rows a tile of the integer matmuls

// The most activation rows one pass over a tile computes: 8 where AVX-512's 32 vector registers
// hold their sums (a tile's codes unpacked once for 8 rows), else 4 (AVX2's 16).
#ifdef INFERMCP_VNNI
constexpr int64_t kMaxRows = 8;
#else
constexpr int64_t kMaxRows = 4;
#endif

// f(std::integral_constant<int, r>()) for r = kRows (each_tile's), 4 or 1: a kernel's pass
// over a tile for r rows, r known when it compiles.
template <int64_t kRows = kMaxRows, typename F>
void with_rows(int64_t r, F f) {
  if constexpr (kRows == 8) {
    if (r == 8) return f(std::integral_constant<int, 8>());
  }
  if (r == 4) return f(std::integral_constant<int, 4>());
  f(std::integral_constant<int, 1>());
}

// Every activation row times weight tiles t0..t1 (columns 8 * t0 up to 8 * t1 of the (m, n)
// out): rows(t, i, r, tile_out) computes r (kRows, else 4, else 1 for the last few) activation
// rows from i against tile t into tile_out, whose columns are then copied out (a last tile may
// be partial). kRows: kMaxRows, or 4 for a kernel whose 8 rows' sums do not fit the registers.
template <int64_t kRows = kMaxRows, typename Rows>
void each_tile(int64_t m, int64_t n, int64_t t0, int64_t t1, float* out, Rows rows) {
  static_assert(kRows == 4 || kRows == kMaxRows);
  float tile_out[kRows][kTile];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t width = std::min(kTile, n - t * kTile);
    for (int64_t i = 0; i < m;) {
      const int64_t r = m - i >= kRows ? kRows : m - i >= 4 ? 4 : 1;
      rows(t, i, r, tile_out);
      for (int64_t j = 0; j < r; ++j) {
        std::memcpy(out + (i + j) * n + t * kTile, tile_out[j], width * sizeof(float));
      }
      i += r;
    }
  }
}

// Tiles a thread claims at a time in parallel_tiles (8, 16 or 32 ran as fast).
constexpr int64_t kChunk = 4;

// One thread's share of the tiles, [front, back) in one word: its owner claims chunks from the
// front, the other threads, once done with theirs, from the back.
struct alignas(64) Share {  // a cache line each: the owners' claims do not contend
  std::atomic<uint64_t> range;

  void set(int64_t front, int64_t back) {
    range.store(static_cast<uint64_t>(front) << 32 | static_cast<uint64_t>(back));
  }

  // Up to kChunk tiles [t0, t1) from the front or the back; false when none are left.
  bool claim(bool front, int64_t& t0, int64_t& t1) {
    uint64_t now = range.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t lo = static_cast<int64_t>(now >> 32);
      const int64_t hi = static_cast<int64_t>(now & 0xffffffffu);
      if (lo >= hi) return false;
      t0 = front ? lo : std::max(lo, hi - kChunk);
      t1 = front ? std::min(hi, lo + kChunk) : hi;
      const uint64_t next = front ? static_cast<uint64_t>(t1) << 32 | static_cast<uint64_t>(hi)
                                  : static_cast<uint64_t>(lo) << 32 | static_cast<uint64_t>(t0);
      if (range.compare_exchange_weak(now, next, std::memory_order_relaxed)) return true;
    }
  }
};

// f(t0, t1) on every tile of 0..tiles once, over the threads: each reads its own contiguous
// share front to back (one stream, as the prefetches want), then takes what is left of the
// others' from their back. Split in equal halves once and for all (at::parallel_for), one
// thread sat waiting for the other at the end of a call for 8-13% of a decode step's matmul
// time: on this machine two threads do not read their halves at one speed. Measured on the
// 1B-shaped files, decode steps alternating between the two splits in one process (~1,000
// steps a file): one row 0.7-4.4% faster (Q4_K_M), 1.7-5.5% (Q4_0), 2.8-3.7% (Q8_0); 16 rows
// 1.3-1.4% (Q4_K_M).
template <typename F>
void parallel_tiles(int64_t tiles, F f) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), (tiles + kChunk - 1) / kChunk);
  if (threads <= 1) {
    if (tiles > 0) f(0, tiles);
    return;
  }
  std::vector<Share> shares(threads);
  for (int64_t i = 0; i < threads; ++i) {
    shares[i].set(tiles * i / threads, tiles * (i + 1) / threads);
  }
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    int64_t t0 = 0, t1 = 0;
    for (int64_t me = begin; me < end; ++me) {  // one share a thread, unless fewer started
      while (shares[me].claim(true, t0, t1)) f(t0, t1);
      for (int64_t other = 1; other < threads; ++other) {
        while (shares[(me + other) % threads].claim(false, t0, t1)) f(t0, t1);
      }
    }
  });
}

}  // namespace infermcp
