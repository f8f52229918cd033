// Decode attention straight from the paged KV cache, for AVX2 CPUs.
//
// Each decoding row has one query token per head; its context is the cache slots listed in
// gather_index (max_len per row, padded with slot 0 where mask is false). torch's path copies
// every row's context out of the cache (index_select) and then runs SDPA; here each (row, KV
// head) reads its keys and values in place, once each, for all the query heads that share them:
//   scores = q . k * scale over the row's slots; p = softmax(scores); out = sum p * v
// The cache holds float32 or float16 (widened to float32 as it is read, F16C); the sums are
// float32 either way.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "avx2.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using infermcp::exp8;
using infermcp::hsum;
using infermcp::load8;  // 8 of the cache's values, float32 or float16, as float32

// p[i] = e^(p[i] - shift); returns the sum
float exp_shifted(float* p, int64_t n, float shift) {
  const __m256 sv = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + i), sv));
    _mm256_storeu_ps(p + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum(acc);
  for (; i < n; ++i) {
    p[i] = std::exp(p[i] - shift);
    sum += p[i];
  }
  return sum;
}

// A slot's key and value vectors of one KV head (dim = 8 * C values each, at the offsets), asked
// for from memory into L1, or else L2.
template <bool kToL1, int C, typename T>
inline void prefetch_slot(const T* slot, int64_t key_offset, int64_t value_offset) {
  const char* key = reinterpret_cast<const char*>(slot + key_offset);
  const char* value = reinterpret_cast<const char*>(slot + value_offset);
  for (size_t b = 0; b < 8 * C * sizeof(T); b += 64) {
    if constexpr (kToL1) {
      _mm_prefetch(key + b, _MM_HINT_T0);
      _mm_prefetch(value + b, _MM_HINT_T0);
    } else {
      _mm_prefetch(key + b, _MM_HINT_T1);
      _mm_prefetch(value + b, _MM_HINT_T1);
    }
  }
}

constexpr int64_t kL1Ahead = 4, kL2Ahead = 16;  // slots ahead, see attend_heads

// Query heads that share a KV head, kHeads of them (their query vectors one after another,
// dim apart), over their row's slots: each head's scores into its row of p (len apart), softmax
// normalized, then its output = p . values. Each key and value is read (and, from float16,
// widened) once for the kHeads heads, and asked for ahead of its use (see the loop). Measured in
// decode steps of a 1B-shaped model (32 query heads over 8 KV heads of 64, float16 cache, about
// 120 slots a row), a layer's call took 0.35 ms at 16 rows and 40 us at one, where one head at a
// time, read as it came, took 0.57 ms and 48 us. Each head's arithmetic is a lone head's, in
// the same order: the same floats. C = dim / 8 vectors a head; the output goes in pieces of
// kPiece vectors a head (a pass over the values each), as many accumulators as the registers
// hold beside a value and the heads' weights.
template <int C, int kHeads, typename T>
void attend_heads(const float* query, int64_t dim, const T* cache, const int64_t* slots,
                  const bool* keep, int64_t len, int64_t key_offset, int64_t value_offset,
                  int64_t slot_stride, float scale, float* p, float* out) {
  alignas(32) float qs[kHeads][8 * C];  // the queries times the scale
  for (int h = 0; h < kHeads; ++h) {
    for (int c = 0; c < C; ++c) {
      _mm256_store_ps(qs[h] + 8 * c, _mm256_mul_ps(_mm256_loadu_ps(query + h * dim + 8 * c),
                                                   _mm256_set1_ps(scale)));
    }
  }
  float best[kHeads];
  for (int h = 0; h < kHeads; ++h) best[h] = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < len; ++t) {
    // A decode step reads every layer's weights between two reads of a layer's slots: they
    // come from memory. Each slot's key and value of this KV head are asked for in advance, to
    // L2 16 slots ahead and to L1 4 ahead (L1 alone 8 ahead ran slower, and so did L2 and L1
    // 8 and 2, 24 and 6, or 32 and 8 ahead).
    if (t + kL2Ahead < len) {
      prefetch_slot<false, C>(cache + slots[t + kL2Ahead] * slot_stride, key_offset, value_offset);
    }
    if (t + kL1Ahead < len) {
      prefetch_slot<true, C>(cache + slots[t + kL1Ahead] * slot_stride, key_offset, value_offset);
    }
    if (keep && !keep[t]) continue;
    const T* key = cache + slots[t] * slot_stride + key_offset;
    __m256 acc[kHeads];
    const __m256 k0 = load8(key);
    for (int h = 0; h < kHeads; ++h) acc[h] = _mm256_mul_ps(_mm256_load_ps(qs[h]), k0);
    for (int c = 1; c < C; ++c) {
      const __m256 k = load8(key + 8 * c);
      for (int h = 0; h < kHeads; ++h) {
        acc[h] = _mm256_fmadd_ps(_mm256_load_ps(qs[h] + 8 * c), k, acc[h]);
      }
    }
    for (int h = 0; h < kHeads; ++h) {
      p[h * len + t] = hsum(acc[h]);
      best[h] = std::max(best[h], p[h * len + t]);
    }
  }
  float inverse[kHeads];
  bool any = false;
  for (int h = 0; h < kHeads; ++h) {
    float* ph = p + h * len;
    if (best[h] == -std::numeric_limits<float>::infinity()) {  // nothing to attend: zeros
      std::fill(ph, ph + len, 0.f);
      inverse[h] = 0.f;
      continue;
    }
    any = true;
    if (keep) {  // padding: no weight (and no stale score) in the sum
      for (int64_t t = 0; t < len; ++t) ph[t] = keep[t] ? ph[t] : best[h] - 1e30f;
    }
    inverse[h] = 1.f / exp_shifted(ph, len, best[h]);
  }
  if (!any) return;
#ifdef INFERMCP_VNNI
  constexpr int kRegisters = 32;  // AVX-512VL: ymm0-31
#else
  constexpr int kRegisters = 16;
#endif
  // the most vectors a head that leave registers for the values and the heads' weights, a
  // power of two (a divisor of C)
  constexpr int kFit = (kRegisters - kHeads - 2) / kHeads;
  constexpr int kPiece = std::min(C, kFit >= 16 ? 16 : kFit >= 8 ? 8 : kFit >= 4 ? 4 : 2);
  for (int c0 = 0; c0 < C; c0 += kPiece) {
    __m256 ov[kHeads][kPiece];
    for (int h = 0; h < kHeads; ++h) {
      for (int c = 0; c < kPiece; ++c) ov[h][c] = _mm256_setzero_ps();
    }
    for (int64_t t = 0; t < len; ++t) {
      if (keep && !keep[t]) continue;
      const T* value = cache + slots[t] * slot_stride + value_offset + 8 * c0;
      __m256 pt[kHeads];
      for (int h = 0; h < kHeads; ++h) pt[h] = _mm256_set1_ps(p[h * len + t]);
      for (int c = 0; c < kPiece; ++c) {
        const __m256 v = load8(value + 8 * c);
        for (int h = 0; h < kHeads; ++h) ov[h][c] = _mm256_fmadd_ps(pt[h], v, ov[h][c]);
      }
    }
    for (int h = 0; h < kHeads; ++h) {
      for (int c = 0; c < kPiece; ++c) {
        _mm256_storeu_ps(out + h * dim + 8 * (c0 + c),
                         _mm256_mul_ps(ov[h][c], _mm256_set1_ps(inverse[h])));
      }
    }
  }
}

// The group's query heads, up to four at a time.
template <int C, typename T>
void attend_group(const float* queries, int64_t group, int64_t dim, const T* cache,
                  const int64_t* slots, const bool* keep, int64_t len, int64_t key_offset,
                  int64_t value_offset, int64_t slot_stride, float scale, float* p, float* outs) {
  for (int64_t h = 0; h < group;) {
    const int64_t n = std::min<int64_t>(4, group - h);
    const auto attend = n == 4 ? attend_heads<C, 4, T> : n == 3 ? attend_heads<C, 3, T>
                        : n == 2 ? attend_heads<C, 2, T> : attend_heads<C, 1, T>;
    attend(queries + h * dim, dim, cache, slots, keep, len, key_offset, value_offset,
           slot_stride, scale, p, outs + h * dim);
    h += n;
  }
}

// Every (row, KV head) of the step: the query heads that share the KV head, over the row's slots.
template <typename T>
void attend_rows(const float* qp, const T* cache, const int64_t* index, const bool* keep_ptr,
                 int64_t rows, int64_t heads, int64_t kv_heads, int64_t dim, int64_t max_len,
                 float scale, float* op) {
  const int64_t group = heads / kv_heads, slot_stride = 2 * kv_heads * dim;
  const auto attend = dim == 64 ? attend_group<8, T> : dim == 128 ? attend_group<16, T>
                                                                 : attend_group<32, T>;
  // small problems run on the calling thread: waking a second one costs more than it saves
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, max_len * dim));
  at::parallel_for(0, rows * kv_heads, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(4 * max_len);  // up to 4 heads' at once
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / kv_heads, g = task % kv_heads;
      const int64_t* row_slots = index + row * max_len;
      const bool* row_keep = keep_ptr ? keep_ptr + row * max_len : nullptr;
      // the row's own length, without the padding after it: a row computes the same, to the
      // bit, whatever the longest row of its batch (the softmax's sums split the same way)
      int64_t len = max_len;
      while (row_keep && len > 0 && !row_keep[len - 1]) --len;
      attend(qp + (row * heads + g * group) * dim, group, dim, cache, row_slots, row_keep, len,
             g * dim, (kv_heads + g) * dim, slot_stride, scale, scores.data(),
             op + (row * heads + g * group) * dim);
    }
  });
}

// q (rows, heads, dim); kv_cache (slots, 2 * kv_heads, dim) float32 or float16: keys, then
// values; gather_index (rows * max_len) slots; mask (rows, ..., max_len) bool or none
// -> (rows, heads, dim) float32
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& kv_cache,
                            const at::Tensor& gather_index, const c10::optional<at::Tensor>& mask,
                            double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat, "q: (rows, heads, dim) float32");
  const bool half = kv_cache.scalar_type() == at::kHalf;
  TORCH_CHECK(kv_cache.dim() == 3 && (half || kv_cache.scalar_type() == at::kFloat) &&
                  kv_cache.is_contiguous(),
              "kv_cache: (slots, 2 * kv_heads, dim) float32 or float16, contiguous");
  TORCH_CHECK(gather_index.scalar_type() == at::kLong && gather_index.is_contiguous(),
              "gather_index: int64, contiguous");
  const int64_t rows = q.size(0), heads = q.size(1), dim = q.size(2);
  const int64_t kv_heads = kv_cache.size(1) / 2, slots = kv_cache.size(0);
  TORCH_CHECK(kv_cache.size(2) == dim && (dim == 64 || dim == 128 || dim == 256),
              "head_dim: 64, 128 or 256");
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0,
              "query heads must be a multiple of the cache's KV heads");
  TORCH_CHECK(rows > 0 && gather_index.numel() % rows == 0, "gather_index: rows * max_len");
  const int64_t max_len = gather_index.numel() / rows;
  const int64_t* index = gather_index.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows * max_len; ++i) {
    TORCH_CHECK(index[i] >= 0 && index[i] < slots, "gather_index out of the cache's range");
  }
  at::Tensor keep;
  if (mask.has_value()) {
    keep = mask->to(at::kBool).contiguous();
    TORCH_CHECK(keep.numel() == rows * max_len, "mask: one flag per gathered slot");
  }
  const bool* keep_ptr = keep.defined() ? keep.data_ptr<bool>() : nullptr;
  const at::Tensor qc = q.contiguous();
  at::Tensor out = at::zeros({rows, heads, dim}, q.options());  // rows that attend nothing: 0
  const float* qp = qc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float s = static_cast<float>(scale);
  if (half) {
    attend_rows(qp, kv_cache.data_ptr<c10::Half>(), index, keep_ptr, rows, heads, kv_heads, dim,
                max_len, s, op);
  } else {
    attend_rows(qp, kv_cache.data_ptr<float>(), index, keep_ptr, rows, heads, kv_heads, dim,
                max_len, s, op);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(infermcp, m) {
  m.def("decode_attention(Tensor q, Tensor kv_cache, Tensor gather_index, Tensor? mask, "
        "float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(infermcp, CPU, m) {
  m.impl("decode_attention", &decode_attention);
}
