// A GGUF file's tensors from its bytes, in one pass on every thread, two ways. Block layouts
// are ggml's (ggml-common.h), as core/models/gguf.py describes them.
//
// q4k_decode, q6k_decode: Q4_K and Q6_K tensors decoded into the blocks gguf.py hands the
// layers: what gguf.py's torch decoders compute (they run where these are not built, and the
// tests hold both to the same bytes), without their temporaries.
//
// gguf_tiles: tensors written straight into the integer kernels' tiled layouts (q4_matmul.cpp,
// q8_matmul.cpp, q6_matmul.cpp), where core/models/quant.py's layers would otherwise take the
// decoded blocks, concatenate a fused projection's parts, tile them (quant.py's tile and
// tile_pairs) and, for Q6_K, pack the tiles to 6 bits. The bytes written are those, bit for
// bit: the tests hold them to it. The 5-bit types, which the layers otherwise take a byte a
// code (q8_matmul), are written for q5_matmul and q5k_matmul (q4_matmul.cpp) instead.
//
// gguf_tiles(kind, raw, order, first_row, out): raw is one tensor's (rows, bytes); its row
// order[i] (order empty: row i) becomes row first_row + i of the tensors in out, which the
// caller allocates for a whole fused projection (rows in tiles of 8; padding rows zero):
//   Q4_0: codes (tiles, blocks, 128) uint8, scales (tiles, blocks, 8) float16 d
//   Q4_1: as Q4_0, and mins (tiles, blocks, 8) float16 m
//   Q4_K: codes as Q4_0 (byte b of a block: code b low, code 16 + b high), sub (tiles, blocks,
//         2, 8) uint8 6-bit scale and minimum codes, super (tiles, super-blocks, 2, 8) float16
//         d and dmin
//   Q8_0: codes (tiles, blocks, 256) int8, scales (tiles, blocks, 8) float16 d
//   Q6_K: codes (tiles, blocks, 192) uint8 in q6_pack's layout, sub (tiles, blocks * 2, 8) int8
//         scales of 16 codes, super (tiles, super-blocks, 8) float16 d
//   Q5_0: codes (tiles, blocks, 160) uint8: as Q4_0's, then the fifth bits (byte 128 + 4 * r +
//         q, bit s: row r's code 4 * s + q), scales (tiles, blocks, 8) float16 d
//   Q5_1: as Q5_0, and mins (tiles, blocks, 8) float16 m
//   Q5_K: codes as Q5_0's, sub and super as Q4_K's
// In a tile's block, byte 32 * i + 4 * r + q of the codes is row r's byte 4 * i + q (of its
// 16 bytes of 4-bit codes, or 32 codes); a scale of row r lies at [..][r].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>

namespace {

constexpr int64_t kQ4KBytes = 144;  // a Q4_K super-block of 256 weights
constexpr int64_t kQ6KBytes = 210;  // a Q6_K super-block
constexpr int64_t kQ5KBytes = 176;  // a Q5_K super-block
constexpr int64_t kSubBlocks = 8;   // blocks of 32 in a super-block

// A Q4_K super-block's 12 bytes of 6-bit scales and minimums: the first four blocks' in the low
// 6 bits of bytes 0-3 and 4-7, the last four's in the nibbles of bytes 8-11 with their top 2
// bits in the top bits of bytes 0-3 and 4-7.
inline void q4k_scales(const uint8_t* sc, uint8_t scale[8], uint8_t min[8]) {
  for (int j = 0; j < 4; ++j) {
    scale[j] = sc[j] & 63;
    min[j] = sc[j + 4] & 63;
    scale[j + 4] = (sc[j + 8] & 15) | (sc[j] >> 6) << 4;
    min[j + 4] = (sc[j + 8] >> 4) | (sc[j + 4] >> 6) << 4;
  }
}

// The code bytes of a Q4_K super-block's blocks 2k and 2k + 1, each 16 bytes as ggml's 4-bit
// blocks hold them (byte c: code c in the low nibble, code 16 + c in the high one), from its 32
// bytes k (block 2k in their low nibbles, 2k + 1 in their high ones).
inline void q4k_code_bytes(const uint8_t* qs, int k, uint8_t even[16], uint8_t odd[16]) {
  for (int c = 0; c < 16; ++c) {
    const uint8_t first = qs[32 * k + c], last = qs[32 * k + 16 + c];
    even[c] = (first & 15) | (last & 15) << 4;
    odd[c] = (first >> 4) | (last & 0xF0);
  }
}

// A Q6_K super-block's 256 codes q, 0..63 (its weights are d * sc * (q - 32)): weight 128h + w
// takes nibble w / 64 of low byte 64h + w % 64 and pair w / 32 of high byte 128 + 32h + w % 32.
inline void q6k_codes(const uint8_t* x, uint8_t q[256]) {
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = x + 64 * h;
    const uint8_t* qh = x + 128 + 32 * h;
    for (int w = 0; w < 128; ++w) {
      q[128 * h + w] = ((ql[w % 64] >> (4 * (w / 64))) & 15) |
                       ((qh[w % 32] >> (2 * (w / 32))) & 3) << 4;
    }
  }
}

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
      uint8_t scale[8], min[8];
      q4k_scales(x + 4, scale, min);
      for (int j = 0; j < 8; ++j) {
        s[(b * kSubBlocks + j) * 2] = scale[j];
        s[(b * kSubBlocks + j) * 2 + 1] = min[j];
      }
      for (int k = 0; k < 4; ++k) {
        uint8_t* even = c + (b * kSubBlocks + 2 * k) * 16;
        q4k_code_bytes(x + 16, k, even, even + 16);
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
      uint8_t q[256];
      q6k_codes(x, q);
      int8_t* out = c + 256 * b;
      for (int w = 0; w < 256; ++w) out[w] = static_cast<int8_t>(q[w] - 32);
    }
  });
  return {codes, sub, super};
}

constexpr int64_t kTile = 8;
constexpr int64_t kRunBytes = 32;  // a run: 4 bytes of each of a tile's 8 rows

// Where row r of a tile's block takes its bytes: byte 4 * i + q at 32 * i + 4 * r + q.
inline void put_runs(uint8_t* block, int64_t r, const uint8_t* row_bytes, int64_t n) {
  for (int64_t i = 0; i < n / 4; ++i) std::memcpy(block + kRunBytes * i + 4 * r, row_bytes + 4 * i, 4);
}

inline void put_half(uint8_t* at, const uint8_t* from) { std::memcpy(at, from, 2); }

// Row r's fifth bits of a tile's 5-bit block: fifth[c] is the fifth bit (0 or 1) of code c;
// byte 128 + 4 * r + q, bit s, takes code 4 * s + q's (q4_matmul.cpp).
inline void put_fifth_bits(uint8_t* block, int64_t r, const uint8_t fifth[32]) {
  for (int q = 0; q < 4; ++q) {
    uint8_t bits = 0;
    for (int s = 0; s < 8; ++s) bits |= fifth[4 * s + q] << s;
    block[128 + 4 * r + q] = bits;
  }
}

struct Part {
  const uint8_t* raw;
  int64_t row_bytes;
  const int64_t* order;  // nullptr: identity
  int64_t first_row;
  int64_t source_row(int64_t i) const { return order ? order[i] : i; }
};

uint8_t* bytes_of(const at::Tensor& t) { return static_cast<uint8_t*>(t.data_ptr()); }

void check_out(at::TensorList out, size_t count, int64_t rows_needed) {
  TORCH_CHECK(out.size() == count, "gguf_tiles: ", count, " output tensors expected");
  for (const auto& t : out) {
    TORCH_CHECK(t.is_contiguous() && t.size(0) * kTile >= rows_needed,
                "gguf_tiles: outputs must be contiguous and hold every row");
  }
}

// Q4_0 and Q4_1 (kBits 4): d (and m), then the 16 code bytes, taken as they are. Q5_0 and Q5_1
// (kBits 5): d (and m), the fifth bits as a little-endian 32-bit word (bit c: code c's), then
// the 16 bytes of low nibbles as Q4_0's codes.
template <int kBits>
void simple(const Part& p, int64_t i, int64_t blocks, bool with_min, at::TensorList out) {
  constexpr int64_t tile_bytes = kBits == 5 ? 160 : 128, fifth_bytes = kBits == 5 ? 4 : 0;
  const int64_t halves = with_min ? 4 : 2, block_bytes = halves + fifth_bytes + 16;
  const uint8_t* row = p.raw + p.source_row(i) * p.row_bytes;
  const int64_t dest = p.first_row + i, t = dest / kTile, r = dest % kTile;
  uint8_t* codes = bytes_of(out[0]) + t * blocks * tile_bytes;
  uint8_t* scales = bytes_of(out[1]) + t * blocks * kTile * 2;
  uint8_t* mins = with_min ? bytes_of(out[2]) + t * blocks * kTile * 2 : nullptr;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* x = row + b * block_bytes;
    put_runs(codes + b * tile_bytes, r, x + halves + fifth_bytes, 16);
    if constexpr (kBits == 5) {
      uint8_t fifth[32];
      for (int c = 0; c < 32; ++c) fifth[c] = (x[halves + c / 8] >> (c % 8)) & 1;
      put_fifth_bits(codes + b * tile_bytes, r, fifth);
    }
    put_half(scales + (b * kTile + r) * 2, x);
    if (mins) put_half(mins + (b * kTile + r) * 2, x + 2);
  }
}

void q8_0(const Part& p, int64_t i, int64_t blocks, at::TensorList out) {
  const uint8_t* row = p.raw + p.source_row(i) * p.row_bytes;
  const int64_t dest = p.first_row + i, t = dest / kTile, r = dest % kTile;
  uint8_t* codes = bytes_of(out[0]) + t * blocks * 256;
  uint8_t* scales = bytes_of(out[1]) + t * blocks * kTile * 2;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* x = row + b * 34;
    put_runs(codes + b * 256, r, x + 2, 32);
    put_half(scales + (b * kTile + r) * 2, x);
  }
}

// Q4_K (kBits 4): 144-byte super-blocks: d, dmin, 12 bytes of scales and minimums, 128 of
// codes. Q5_K (kBits 5): 176-byte ones: d, dmin, the scales and minimums as Q4_K's, 32 bytes of
// fifth bits (bit j of byte c: block j's code c), then 128 of low nibbles as Q4_K's codes.
template <int kBits>
void k_quant(const Part& p, int64_t i, int64_t supers, at::TensorList out) {
  constexpr int64_t super_bytes = kBits == 5 ? kQ5KBytes : kQ4KBytes;
  constexpr int64_t block_bytes = kBits == 5 ? 160 : 128, codes_at = kBits == 5 ? 48 : 16;
  const int64_t blocks = supers * kSubBlocks;
  const uint8_t* row = p.raw + p.source_row(i) * p.row_bytes;
  const int64_t dest = p.first_row + i, t = dest / kTile, r = dest % kTile;
  uint8_t* codes = bytes_of(out[0]) + t * blocks * block_bytes;
  uint8_t* sub = bytes_of(out[1]) + t * blocks * 2 * kTile;
  uint8_t* super = bytes_of(out[2]) + t * supers * 2 * kTile * 2;
  for (int64_t s = 0; s < supers; ++s) {
    const uint8_t* x = row + s * super_bytes;
    put_half(super + ((s * 2) * kTile + r) * 2, x);          // d
    put_half(super + ((s * 2 + 1) * kTile + r) * 2, x + 2);  // dmin
    uint8_t scale[8], min[8];
    q4k_scales(x + 4, scale, min);
    for (int j = 0; j < 8; ++j) {
      const int64_t b = s * 8 + j;
      sub[(b * 2) * kTile + r] = scale[j];
      sub[(b * 2 + 1) * kTile + r] = min[j];
      if constexpr (kBits == 5) {
        uint8_t fifth[32];
        for (int c = 0; c < 32; ++c) fifth[c] = (x[16 + c] >> j) & 1;
        put_fifth_bits(codes + b * block_bytes, r, fifth);
      }
    }
    for (int k = 0; k < 4; ++k) {
      uint8_t even[16], odd[16];
      q4k_code_bytes(x + codes_at, k, even, odd);
      put_runs(codes + (s * 8 + 2 * k) * block_bytes, r, even, 16);
      put_runs(codes + (s * 8 + 2 * k + 1) * block_bytes, r, odd, 16);
    }
  }
}

inline uint64_t load64(const uint8_t* at) {
  uint64_t word;
  std::memcpy(&word, at, 8);
  return word;
}

// Q6_K: 210-byte super-blocks: 192 bytes of codes, 16 int8 scales, float16 d. Block j's code
// k takes the low nibbles from ql byte 64 * (j / 4) + 32 * (j % 2) + k, shifted by 4 * (j % 4
// / 2), and two high bits from qh byte 32 * (j / 4) + k, shifted by 2 * (j % 4) (q6k_codes):
// eight bytes at a time, as 64-bit words whose bytes stay apart (the masks keep each byte's
// bits in it). In q6_pack's layout, row r's 4 bytes of run p (p < 4) hold the low nibbles of
// codes 8p..8p+3 and, above them, of 8p+4..8p+7; of run 4 + h, codes 16h + 4 * run + c's high
// bits at bit pair run of byte c.
void q6_k(const Part& p, int64_t i, int64_t supers, at::TensorList out) {
  constexpr uint64_t kNibbles = 0x0F0F0F0F0F0F0F0FULL, kPairs = 0x0303030303030303ULL;
  const int64_t blocks = supers * kSubBlocks;
  const uint8_t* row = p.raw + p.source_row(i) * p.row_bytes;
  const int64_t dest = p.first_row + i, t = dest / kTile, r = dest % kTile;
  uint8_t* codes = bytes_of(out[0]) + t * blocks * 192;
  int8_t* sub = reinterpret_cast<int8_t*>(bytes_of(out[1])) + t * blocks * 2 * kTile;
  uint8_t* super = bytes_of(out[2]) + t * supers * kTile * 2;
  for (int64_t s = 0; s < supers; ++s) {
    const uint8_t* x = row + s * kQ6KBytes;
    for (int j = 0; j < 16; ++j) sub[(s * 16 + j) * kTile + r] = static_cast<int8_t>(x[192 + j]);
    put_half(super + (s * kTile + r) * 2, x + 208);
    for (int j = 0; j < 8; ++j) {
      const uint8_t* ql = x + 64 * (j / 4) + 32 * (j % 2);
      const uint8_t* qh = x + 128 + 32 * (j / 4);
      const int low_shift = 4 * (j % 4 / 2), high_shift = 2 * (j % 4);
      uint8_t* o = codes + (s * 8 + j) * 192 + 4 * r;
      for (int q = 0; q < 4; ++q) {  // codes 8q..8q+7: run q
        const uint64_t low = (load64(ql + 8 * q) >> low_shift) & kNibbles;
        const uint32_t run = static_cast<uint32_t>(low) | static_cast<uint32_t>(low >> 32) << 4;
        std::memcpy(o + kRunBytes * q, &run, 4);
      }
      for (int h = 0; h < 2; ++h) {  // codes 16h..16h+15: run 4 + h
        const uint64_t first = (load64(qh + 16 * h) >> high_shift) & kPairs;
        const uint64_t last = (load64(qh + 16 * h + 8) >> high_shift) & kPairs;
        const uint32_t run = static_cast<uint32_t>(first) | static_cast<uint32_t>(first >> 32) << 2 |
                             static_cast<uint32_t>(last) << 4 | static_cast<uint32_t>(last >> 32) << 6;
        std::memcpy(o + 128 + kRunBytes * h, &run, 4);
      }
    }
  }
}

void gguf_tiles(const std::string& kind, const at::Tensor& raw, const at::Tensor& order,
                int64_t first_row, at::TensorList out) {
  TORCH_CHECK(raw.dim() == 2 && raw.scalar_type() == at::kByte && raw.is_contiguous(),
              "raw: (rows, bytes) uint8, contiguous");
  TORCH_CHECK(order.numel() == 0 || (order.dim() == 1 && order.scalar_type() == at::kLong &&
                                     order.is_contiguous() && order.size(0) == raw.size(0)),
              "order: empty, or (rows,) int64");
  const int64_t rows = raw.size(0), row_bytes = raw.size(1);
  const Part part{raw.data_ptr<uint8_t>(), row_bytes,
                  order.numel() ? order.data_ptr<int64_t>() : nullptr, first_row};
  if (part.order) {
    for (int64_t i = 0; i < rows; ++i) {
      TORCH_CHECK(part.order[i] >= 0 && part.order[i] < rows, "order: rows out of range");
    }
  }
  std::function<void(int64_t)> one_row;
  if (kind == "Q4_0" || kind == "Q4_1" || kind == "Q5_0" || kind == "Q5_1") {
    const bool five = kind[1] == '5', with_min = kind[3] == '1';
    const int64_t block_bytes = (with_min ? 4 : 2) + (five ? 4 : 0) + 16;
    TORCH_CHECK(row_bytes % block_bytes == 0, "raw: whole ", kind, " blocks a row");
    check_out(out, with_min ? 3 : 2, first_row + rows);
    const int64_t blocks = row_bytes / block_bytes;
    one_row = [&, blocks, with_min, five](int64_t i) {
      if (five) {
        simple<5>(part, i, blocks, with_min, out);
      } else {
        simple<4>(part, i, blocks, with_min, out);
      }
    };
  } else if (kind == "Q8_0") {
    TORCH_CHECK(row_bytes % 34 == 0, "raw: whole Q8_0 blocks a row");
    check_out(out, 2, first_row + rows);
    const int64_t blocks = row_bytes / 34;
    one_row = [&, blocks](int64_t i) { q8_0(part, i, blocks, out); };
  } else if (kind == "Q4_K" || kind == "Q5_K" || kind == "Q6_K") {
    const int64_t super_bytes = kind == "Q4_K" ? kQ4KBytes : kind == "Q5_K" ? kQ5KBytes
                                                                            : kQ6KBytes;
    TORCH_CHECK(row_bytes % super_bytes == 0, "raw: whole ", kind, " super-blocks a row");
    check_out(out, 3, first_row + rows);
    const int64_t supers = row_bytes / super_bytes;
    if (kind == "Q4_K") {
      one_row = [&, supers](int64_t i) { k_quant<4>(part, i, supers, out); };
    } else if (kind == "Q5_K") {
      one_row = [&, supers](int64_t i) { k_quant<5>(part, i, supers, out); };
    } else {
      one_row = [&, supers](int64_t i) { q6_k(part, i, supers, out); };
    }
  } else {
    TORCH_CHECK(false, "gguf_tiles: no tiles for ", kind);
  }
  at::parallel_for(0, rows, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) one_row(i);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(infermcp, m) {
  m.def("q4k_decode(Tensor raw) -> (Tensor, Tensor, Tensor)");
  m.def("q6k_decode(Tensor raw) -> (Tensor, Tensor, Tensor)");
  m.def("gguf_tiles(str kind, Tensor raw, Tensor order, int first_row, Tensor(a!)[] out) -> ()");
}

TORCH_LIBRARY_IMPL(infermcp, CPU, m) {
  m.impl("q4k_decode", &q4k_decode);
  m.impl("q6k_decode", &q6k_decode);
  m.impl("gguf_tiles", &gguf_tiles);
}
