// The gated MLP's activation in one pass, for AVX2 CPUs: out = silu(gate) * up, or Gemma's
// tanh-approximated gelu(gate) * up, where each row of gate_up holds gate then up (the fused
// gate/up projection's output). torch runs it as a split, the activation and a multiply.
// Both are gate * sigmoid(z): silu's z is the gate, and gelu's 0.5 * (1 + tanh(u)) is
// sigmoid(2u), with u = sqrt(2 / pi) * (g + 0.044715 g^3), so z = g * (c1 + c2 * g^2).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "avx2.h"

#include <algorithm>
#include <cmath>

namespace {

using infermcp::exp8;

constexpr float kGelu1 = 1.5957691216057308f;   // 2 * sqrt(2 / pi)
constexpr float kGelu3 = 0.07135481627260025f;  // 2 * sqrt(2 / pi) * 0.044715

template <bool kGelu>
at::Tensor gated(const at::Tensor& gate_up) {
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
      for (; i + 8 <= n; i += 8) {  // g / (1 + e^-z)
        const __m256 g = _mm256_loadu_ps(gate + i);
        __m256 z = g;
        if constexpr (kGelu) {
          z = _mm256_mul_ps(g, _mm256_fmadd_ps(_mm256_mul_ps(g, g), _mm256_set1_ps(kGelu3),
                                               _mm256_set1_ps(kGelu1)));
        }
        const __m256 act = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_xor_ps(z, sign))));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(act, _mm256_loadu_ps(up + i)));
      }
      for (; i < n; ++i) {
        const float g = gate[i], z = kGelu ? g * (kGelu1 + kGelu3 * g * g) : g;
        y[i] = g / (1.f + std::exp(-z)) * up[i];
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(infermcp, m) {
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.def("gelu_tanh_mul(Tensor gate_up) -> Tensor");
}

TORCH_LIBRARY_IMPL(infermcp, CPU, m) {
  m.impl("silu_mul", &gated<false>);
  m.impl("gelu_tanh_mul", &gated<true>);
}
