// A GGUF file's Q4_K and Q6_K tensors decoded into the blocks core/models/gguf.py hands the
// layers, in one pass over the file's bytes on every thread: what gguf.py's torch decoders
// compute (they run where these are not built, and the tests hold both to the same bytes),
// without their temporaries. The layouts are ggml's (ggml-common.h), as gguf.py describes them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <tuple>

namespace {

constexpr int64_t kQ4KBytes = 144;  // a Q4_K super-block of 256 weights
constexpr int64_t kQ6KBytes = 210;  // a Q6_K super-block
constexpr int64_t kSubBlocks = 8;   // blocks of 32 in a super-block

std::tuple<int64_t, int64_t> super_blocks(const at::Tensor& raw, int64_t bytes) {
  TORCH_CHECK(raw.dim() == 2 && raw.scalar_type() == at::kByte && raw.is_contiguous() &&
                  raw.size(1) % bytes == 0,
              "raw: (rows, super-blocks * ", bytes, ") uint8, contiguous");
  return {raw.size(0), raw.size(1) / bytes};
}

// (rows, bytes) of Q4_K -> codes (rows, blocks, 16) uint8 (byte b: code b in the low nibble,
// code 16 + b in the high one), each block's 6-bit scale and minimum codes (rows, blocks, 2)
// uint8, each super-block's d and dmin (rows, super-blocks, 2) float16.
std::tuple<at::Tensor, at::Tensor, at::Tensor> q4k_decode(const at::Tensor& raw) {
  const auto [rows, supers] = super_blocks(raw, kQ4KBytes);
  const int64_t blocks = supers * kSubBlocks;
  at::Tensor codes = at::empty({rows, blocks, 16}, raw.options());
  at::Tensor sub = at::empty({rows, blocks, 2}, raw.options());
  at::Tensor super = at::empty({rows, supers, 2}, raw.options().dtype(at::kHalf));
  const uint8_t* in = raw.data_ptr<uint8_t>();
  uint8_t* c = codes.data_ptr<uint8_t>();
  uint8_t* s = sub.data_ptr<uint8_t>();
  uint8_t* d = reinterpret_cast<uint8_t*>(super.data_ptr<at::Half>());
  at::parallel_for(0, rows * supers, 256, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const uint8_t* x = in + b * kQ4KBytes;
      std::memcpy(d + 4 * b, x, 4);  // d, dmin
      const uint8_t* scales = x + 4;
      for (int j = 0; j < 4; ++j) {
        s[(b * kSubBlocks + j) * 2] = scales[j] & 63;
        s[(b * kSubBlocks + j) * 2 + 1] = scales[j + 4] & 63;
        s[(b * kSubBlocks + j + 4) * 2] = (scales[j + 8] & 15) | (scales[j] >> 6) << 4;
        s[(b * kSubBlocks + j + 4) * 2 + 1] = (scales[j + 8] >> 4) | (scales[j + 4] >> 6) << 4;
      }
      const uint8_t* qs = x + 16;
      for (int i = 0; i < 4; ++i) {  // 32 bytes: blocks 2i (low nibbles) and 2i + 1 (high)
        uint8_t* even = c + (b * kSubBlocks + 2 * i) * 16;
        uint8_t* odd = even + 16;
        for (int k = 0; k < 16; ++k) {
          const uint8_t first = qs[32 * i + k], last = qs[32 * i + 16 + k];
          even[k] = (first & 15) | (last & 15) << 4;
          odd[k] = (first >> 4) | (last & 0xF0);
        }
      }
    }
  });
  return {codes, sub, super};
}

// (rows, bytes) of Q6_K -> codes q - 32 (rows, blocks, 32) int8, each 16 codes' scale
// (rows, blocks * 2) int8, each super-block's d (rows, super-blocks) float16.
std::tuple<at::Tensor, at::Tensor, at::Tensor> q6k_decode(const at::Tensor& raw) {
  const auto [rows, supers] = super_blocks(raw, kQ6KBytes);
  at::Tensor codes = at::empty({rows, supers * kSubBlocks, 32}, raw.options().dtype(at::kChar));
  at::Tensor sub = at::empty({rows, supers * 16}, raw.options().dtype(at::kChar));
  at::Tensor super = at::empty({rows, supers}, raw.options().dtype(at::kHalf));
  const uint8_t* in = raw.data_ptr<uint8_t>();
  int8_t* c = codes.data_ptr<int8_t>();
  int8_t* s = sub.data_ptr<int8_t>();
  uint8_t* d = reinterpret_cast<uint8_t*>(super.data_ptr<at::Half>());
  at::parallel_for(0, rows * supers, 256, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const uint8_t* x = in + b * kQ6KBytes;
      std::memcpy(s + 16 * b, x + 192, 16);
      std::memcpy(d + 2 * b, x + 208, 2);
      int8_t* out = c + 256 * b;
      for (int h = 0; h < 2; ++h) {  // weight 128h + t: nibble t / 64 of low byte 64h + t % 64,
        const uint8_t* ql = x + 64 * h;  // pair t / 32 of high byte 32h + t % 32
        const uint8_t* qh = x + 128 + 32 * h;
        for (int t = 0; t < 128; ++t) {
          const int low = (ql[t % 64] >> (4 * (t / 64))) & 15;
          const int high = (qh[t % 32] >> (2 * (t / 32))) & 3;
          out[128 * h + t] = static_cast<int8_t>((low | high << 4) - 32);
        }
      }
    }
  });
  return {codes, sub, super};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(infermcp, m) {
  m.def("q4k_decode(Tensor raw) -> (Tensor, Tensor, Tensor)");
  m.def("q6k_decode(Tensor raw) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(infermcp, CPU, m) {
  m.impl("q4k_decode", &q4k_decode);
  m.impl("q6k_decode", &q6k_decode);
}
