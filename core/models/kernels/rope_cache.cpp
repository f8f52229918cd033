// Rotary position embedding of a step's queries and keys, and the write of its keys and values
// into the paged KV cache, in one pass for AVX2 CPUs. torch runs it as a roll, two multiplies
// and an index_copy_, each with its own slicing, 30 times a decode step for the default model.
//
// qkv (tokens, heads + 2 * kv_heads, dim) float32: each token's query heads, key heads, value
// heads. Queries and keys are rotated in place, Hugging Face's rotate-half layout:
//   x' = x * cos + roll(x, dim / 2) * sin   (sin's first half negated, as core.model keeps it)
// and each token's rotated keys and its values go to kv_cache[slot_mapping[token]], a float32
// or float16 cache (rounded to nearest even, as torch's conversion rounds).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <c10/util/Half.h>
#include <immintrin.h>

#include <cstring>

namespace {

// One head of dim values rotated in place by the token's cos/sin rows.
void rotate(float* x, const float* cos, const float* sin, int64_t dim) {
  const int64_t half = dim / 2;
  float rolled[256];
  std::memcpy(rolled, x + half, half * sizeof(float));
  std::memcpy(rolled + half, x, half * sizeof(float));
  int64_t i = 0;
  for (; i + 8 <= dim; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(cos + i));
    _mm256_storeu_ps(x + i, _mm256_fmadd_ps(_mm256_loadu_ps(rolled + i),
                                            _mm256_loadu_ps(sin + i), v));
  }
  for (; i < dim; ++i) x[i] = x[i] * cos[i] + rolled[i] * sin[i];
}

// n float32 values into the cache's slot.
void store(float* to, const float* from, int64_t n) { std::memcpy(to, from, n * sizeof(float)); }
void store(c10::Half* to, const float* from, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(to + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(from + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) to[i] = c10::Half(from[i]);
}

template <typename T>
void rotate_and_store(float* x, const float* cp, const float* sp, const int64_t* slot, T* cache,
                      int64_t tokens, int64_t heads, int64_t kv_heads, int64_t width,
                      int64_t dim) {
  const int64_t kv_width = 2 * kv_heads * dim;
  at::parallel_for(0, tokens, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* row = x + t * width;
      for (int64_t h = 0; h < heads + kv_heads; ++h) {
        rotate(row + h * dim, cp + t * dim, sp + t * dim, dim);
      }
      store(cache + slot[t] * kv_width, row + heads * dim, kv_width);
    }
  });
}

void rope_and_cache(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                    const at::Tensor& slot_mapping, const at::Tensor& kv_cache, int64_t heads) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.scalar_type() == at::kFloat && qkv.is_contiguous(),
              "qkv: (tokens, heads + 2 * kv_heads, dim) float32, contiguous");
  const int64_t tokens = qkv.size(0), dim = qkv.size(2);
  TORCH_CHECK(dim % 2 == 0 && dim <= 256, "head_dim: even, at most 256");
  const bool half = kv_cache.scalar_type() == at::kHalf;
  TORCH_CHECK(kv_cache.dim() == 3 && (half || kv_cache.scalar_type() == at::kFloat) &&
                  kv_cache.is_contiguous() && kv_cache.size(2) == dim,
              "kv_cache: (slots, 2 * kv_heads, dim) float32 or float16, contiguous");
  const int64_t kv_heads = kv_cache.size(1) / 2, slots = kv_cache.size(0);
  TORCH_CHECK(heads > 0 && qkv.size(1) == heads + 2 * kv_heads,
              "qkv's heads must be heads + the cache's 2 * kv_heads");
  for (const at::Tensor* table : {&cos, &sin}) {
    TORCH_CHECK(table->scalar_type() == at::kFloat && table->is_contiguous() &&
                    table->numel() == tokens * dim, "cos, sin: (tokens, 1, dim) float32");
  }
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.is_contiguous() &&
                  slot_mapping.numel() == tokens, "slot_mapping: (tokens,) int64");
  const int64_t* slot = slot_mapping.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    TORCH_CHECK(slot[t] >= 0 && slot[t] < slots, "slot_mapping out of the cache's range");
  }
  float* x = qkv.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t width = qkv.size(1) * dim;
  if (half) {
    rotate_and_store(x, cp, sp, slot, kv_cache.data_ptr<c10::Half>(), tokens, heads, kv_heads,
                     width, dim);
  } else {
    rotate_and_store(x, cp, sp, slot, kv_cache.data_ptr<float>(), tokens, heads, kv_heads, width,
                     dim);
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(infermcp, m) {
  m.def("rope_and_cache(Tensor(a!) qkv, Tensor cos, Tensor sin, Tensor slot_mapping, "
        "Tensor(b!) kv_cache, int heads) -> ()");
}

TORCH_LIBRARY_IMPL(infermcp, CPU, m) {
  m.impl("rope_and_cache", &rope_and_cache);
}
