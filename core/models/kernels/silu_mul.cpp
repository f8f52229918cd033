// The gated MLP's activation in one pass, for AVX2 CPUs: out = silu(gate) * up, where each row of
// gate_up holds gate then up (the fused gate/up projection's output). torch runs it as a split,
// a silu and a multiply.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "avx2.h"

#include <algorithm>
#include <cmath>

namespace {

using infermcp::exp8;

at::Tensor silu_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.scalar_type() == at::kFloat &&
                  gate_up.size(1) % 2 == 0, "gate_up: (rows, 2 * n) float32");
  const at::Tensor in = gate_up.contiguous();
  const int64_t rows = in.size(0), n = in.size(1) / 2;
  at::Tensor out = at::empty({rows, n}, in.options());
  const float* ip = in.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* gate = ip + r * 2 * n;
      const float* up = gate + n;
      float* y = op + r * n;
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) {  // silu(g) = g / (1 + e^-g)
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_xor_ps(g, sign))));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
      }
      for (; i < n; ++i) y[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(infermcp, m) {
  m.def("silu_mul(Tensor gate_up) -> Tensor");
}

TORCH_LIBRARY_IMPL(infermcp, CPU, m) {
  m.impl("silu_mul", &silu_mul);
}
