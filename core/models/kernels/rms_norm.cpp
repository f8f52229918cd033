// RMSNorm in one pass over each row, for AVX2 CPUs: y = x / sqrt(mean(x^2) + eps) * weight.
// torch composes it from five elementwise kernels (pow, mean, add, rsqrt, two muls); a decode
// step of the default model runs it 61 times on rows of 576 values. Any leading dimensions are
// rows: a (tokens, heads, head_dim) query or key normalized per head (Qwen3's, Gemma's) too.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "avx2.h"

#include <algorithm>
#include <cmath>

namespace {

using infermcp::hsum;

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.dim() >= 2 && x.scalar_type() == at::kFloat, "x: (..., rows, hidden) float32");
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.numel() == n, "weight: (hidden,)");
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor out = at::empty_like(xc);
  const float* xp = xc.data_ptr<float>();
  const float* wp = wc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, n)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = xp + r * n;
      float* y = op + r * n;
      __m256 acc = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(row + i);
        acc = _mm256_fmadd_ps(v, v, acc);
      }
      float squares = hsum(acc);
      for (; i < n; ++i) squares += row[i] * row[i];
      const float inverse = 1.f / std::sqrt(squares / static_cast<float>(n) + static_cast<float>(eps));
      const __m256 iv = _mm256_set1_ps(inverse);
      for (i = 0; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(row + i), iv),
                                              _mm256_loadu_ps(wp + i)));
      }
      for (; i < n; ++i) y[i] = row[i] * inverse * wp[i];
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(infermcp, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(infermcp, CPU, m) {
  m.impl("rms_norm", &rms_norm);
}
