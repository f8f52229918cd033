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

// One query head over its row's slots: scores into p (softmax-normalized), then out = p . values.
// C = dim / 8 vectors of the query and of the output stay in registers across the slots; of a
// head wider than 128 (Gemma's 256) the output goes in pieces of 16 vectors, a pass over the
// values each (the compiler keeps the rest of the query on the stack).
template <int C, typename T>
void attend_head(const float* query, const T* cache, const int64_t* slots, const bool* keep,
                 int64_t len, int64_t key_offset, int64_t value_offset, int64_t slot_stride,
                 float scale, float* p, float* out) {
  __m256 qv[C];
  for (int c = 0; c < C; ++c) qv[c] = _mm256_mul_ps(_mm256_loadu_ps(query + 8 * c), _mm256_set1_ps(scale));
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < len; ++t) {
    if (keep && !keep[t]) continue;
    const T* key = cache + slots[t] * slot_stride + key_offset;
    __m256 acc = _mm256_mul_ps(qv[0], load8(key));
    for (int c = 1; c < C; ++c) acc = _mm256_fmadd_ps(qv[c], load8(key + 8 * c), acc);
    p[t] = hsum(acc);
    best = std::max(best, p[t]);
  }
  if (best == -std::numeric_limits<float>::infinity()) return;  // nothing to attend
  if (keep) {  // padding: no weight (and no stale score) in the sum
    for (int64_t t = 0; t < len; ++t) p[t] = keep[t] ? p[t] : best - 1e30f;
  }
  const float inverse = 1.f / exp_shifted(p, len, best);
  constexpr int kPiece = C < 16 ? C : 16;
  for (int c0 = 0; c0 < C; c0 += kPiece) {
    __m256 ov[kPiece];
    for (int c = 0; c < kPiece; ++c) ov[c] = _mm256_setzero_ps();
    for (int64_t t = 0; t < len; ++t) {
      if (keep && !keep[t]) continue;
      const T* value = cache + slots[t] * slot_stride + value_offset + 8 * c0;
      const __m256 pt = _mm256_set1_ps(p[t]);
      for (int c = 0; c < kPiece; ++c) {
        ov[c] = _mm256_fmadd_ps(pt, load8(value + 8 * c), ov[c]);
      }
    }
    for (int c = 0; c < kPiece; ++c) {
      _mm256_storeu_ps(out + 8 * (c0 + c), _mm256_mul_ps(ov[c], _mm256_set1_ps(inverse)));
    }
  }
}

// Every (row, KV head) of the step: the query heads that share the KV head, over the row's slots.
template <typename T>
void attend_rows(const float* qp, const T* cache, const int64_t* index, const bool* keep_ptr,
                 int64_t rows, int64_t heads, int64_t kv_heads, int64_t dim, int64_t max_len,
                 float scale, float* op) {
  const int64_t group = heads / kv_heads, slot_stride = 2 * kv_heads * dim;
  const auto attend = dim == 64 ? attend_head<8, T> : dim == 128 ? attend_head<16, T>
                                                                 : attend_head<32, T>;
  // small problems run on the calling thread: waking a second one costs more than it saves
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, max_len * dim));
  at::parallel_for(0, rows * kv_heads, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(max_len);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / kv_heads, g = task % kv_heads;
      const int64_t* row_slots = index + row * max_len;
      const bool* row_keep = keep_ptr ? keep_ptr + row * max_len : nullptr;
      // the row's own length, without the padding after it: a row computes the same, to the
      // bit, whatever the longest row of its batch (the softmax's sums split the same way)
      int64_t len = max_len;
      while (row_keep && len > 0 && !row_keep[len - 1]) --len;
      const float* queries = qp + (row * heads + g * group) * dim;
      float* outs = op + (row * heads + g * group) * dim;
      for (int64_t h = 0; h < group; ++h) {
        attend(queries + h * dim, cache, row_slots, row_keep, len, g * dim,
               (kv_heads + g) * dim, slot_stride, scale, scores.data(), outs + h * dim);
      }
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
