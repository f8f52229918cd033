// A GGUF file's tensors written from its bytes straight into the integer kernels' tiled layouts
// (q4_matmul.cpp, q8_matmul.cpp, q6_matmul.cpp): one pass over the file's bytes, on every
// thread, where core/models/quant.py's layers would otherwise take gguf.py's decoded blocks,
// concatenate a fused projection's parts, tile them (quant.py's tile and tile_pairs) and, for
// Q6_K, pack the tiles to 6 bits. The bytes written are those, bit for bit: the tests hold
// them to it. Block layouts are ggml's (ggml-common.h), as gguf.py describes them.
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
// In a tile's block, byte 32 * i + 4 * r + q of the codes is row r's byte 4 * i + q (of its
// 16 bytes of 4-bit codes, or 32 codes); a scale of row r lies at [..][r].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>

namespace {

constexpr int64_t kTile = 8;
constexpr int64_t kRunBytes = 32;  // a run: 4 bytes of each of a tile's 8 rows

// Where row r of a tile's block takes its bytes: byte 4 * i + q at 32 * i + 4 * r + q.
inline void put_runs(uint8_t* block, int64_t r, const uint8_t* row_bytes, int64_t n) {
  for (int64_t i = 0; i < n / 4; ++i) std::memcpy(block + kRunBytes * i + 4 * r, row_bytes + 4 * i, 4);
}

inline void put_half(uint8_t* at, const uint8_t* from) { std::memcpy(at, from, 2); }

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

// Q4_0 and Q4_1: the 16 code bytes as they are, d (and m) beside them.
void q4_simple(const Part& p, int64_t i, int64_t blocks, bool with_min,
               at::TensorList out) {
  const int64_t block_bytes = with_min ? 20 : 18, code_at = with_min ? 4 : 2;
  const uint8_t* row = p.raw + p.source_row(i) * p.row_bytes;
  const int64_t dest = p.first_row + i, t = dest / kTile, r = dest % kTile;
  uint8_t* codes = bytes_of(out[0]) + t * blocks * 128;
  uint8_t* scales = bytes_of(out[1]) + t * blocks * kTile * 2;
  uint8_t* mins = with_min ? bytes_of(out[2]) + t * blocks * kTile * 2 : nullptr;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* x = row + b * block_bytes;
    put_runs(codes + b * 128, r, x + code_at, 16);
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

// Q4_K: 144-byte super-blocks: d, dmin, 12 bytes of 6-bit scales and minimums, 128 of codes
// (32 bytes i: block 2i in the low nibbles, 2i + 1 in the high ones).
void q4_k(const Part& p, int64_t i, int64_t supers, at::TensorList out) {
  const int64_t blocks = supers * 8;
  const uint8_t* row = p.raw + p.source_row(i) * p.row_bytes;
  const int64_t dest = p.first_row + i, t = dest / kTile, r = dest % kTile;
  uint8_t* codes = bytes_of(out[0]) + t * blocks * 128;
  uint8_t* sub = bytes_of(out[1]) + t * blocks * 2 * kTile;
  uint8_t* super = bytes_of(out[2]) + t * supers * 2 * kTile * 2;
  for (int64_t s = 0; s < supers; ++s) {
    const uint8_t* x = row + s * 144;
    put_half(super + ((s * 2) * kTile + r) * 2, x);          // d
    put_half(super + ((s * 2 + 1) * kTile + r) * 2, x + 2);  // dmin
    const uint8_t* sc = x + 4;
    uint8_t scale[8], min[8];
    for (int j = 0; j < 4; ++j) {
      scale[j] = sc[j] & 63;
      min[j] = sc[j + 4] & 63;
      scale[j + 4] = (sc[j + 8] & 15) | (sc[j] >> 6) << 4;
      min[j + 4] = (sc[j + 8] >> 4) | (sc[j + 4] >> 6) << 4;
    }
    for (int j = 0; j < 8; ++j) {
      const int64_t b = s * 8 + j;
      sub[(b * 2) * kTile + r] = scale[j];
      sub[(b * 2 + 1) * kTile + r] = min[j];
    }
    const uint8_t* qs = x + 16;
    for (int k = 0; k < 4; ++k) {
      uint8_t even[16], odd[16];
      for (int c = 0; c < 16; ++c) {
        const uint8_t first = qs[32 * k + c], last = qs[32 * k + 16 + c];
        even[c] = (first & 15) | (last & 15) << 4;
        odd[c] = (first >> 4) | (last & 0xF0);
      }
      put_runs(codes + (s * 8 + 2 * k) * 128, r, even, 16);
      put_runs(codes + (s * 8 + 2 * k + 1) * 128, r, odd, 16);
    }
  }
}

// Q6_K: 210-byte super-blocks: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8
// scales, float16 d. Weight 128h + w takes nibble w / 64 of low byte 64h + w % 64 and pair
// w / 32 of high byte 32h + w % 32; its code q is 0..63 (the weight is d * sc * (q - 32)).
void q6_k(const Part& p, int64_t i, int64_t supers, at::TensorList out) {
  const int64_t blocks = supers * 8;
  const uint8_t* row = p.raw + p.source_row(i) * p.row_bytes;
  const int64_t dest = p.first_row + i, t = dest / kTile, r = dest % kTile;
  uint8_t* codes = bytes_of(out[0]) + t * blocks * 192;
  int8_t* sub = reinterpret_cast<int8_t*>(bytes_of(out[1])) + t * blocks * 2 * kTile;
  uint8_t* super = bytes_of(out[2]) + t * supers * kTile * 2;
  for (int64_t s = 0; s < supers; ++s) {
    const uint8_t* x = row + s * 210;
    uint8_t q[256];
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = x + 64 * h;
      const uint8_t* qh = x + 128 + 32 * h;
      for (int w = 0; w < 128; ++w) {
        q[128 * h + w] = ((ql[w % 64] >> (4 * (w / 64))) & 15) | ((qh[w % 32] >> (2 * (w / 32))) & 3) << 4;
      }
    }
    for (int j = 0; j < 16; ++j) sub[(s * 16 + j) * kTile + r] = static_cast<int8_t>(x[192 + j]);
    put_half(super + (s * kTile + r) * 2, x + 208);
    for (int j = 0; j < 8; ++j) {  // block j: runs of codes 4 * run + c
      const uint8_t* code = q + 32 * j;
      uint8_t* o = codes + (s * 8 + j) * 192 + 4 * r;
      for (int c = 0; c < 4; ++c) {
        for (int pair = 0; pair < 4; ++pair) {  // runs 2 * pair (low nibble), 2 * pair + 1
          o[kRunBytes * pair + c] = (code[8 * pair + c] & 15) | (code[8 * pair + 4 + c] & 15) << 4;
        }
        for (int h = 0; h < 2; ++h) {  // bits 4-5 of runs 4h + 0..3
          uint8_t high = 0;
          for (int run = 0; run < 4; ++run) high |= ((code[4 * (4 * h + run) + c] >> 4) & 3) << (2 * run);
          o[128 + kRunBytes * h + c] = high;
        }
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
  if (kind == "Q4_0" || kind == "Q4_1") {
    const bool with_min = kind == "Q4_1";
    const int64_t block_bytes = with_min ? 20 : 18;
    TORCH_CHECK(row_bytes % block_bytes == 0, "raw: whole ", kind, " blocks a row");
    check_out(out, with_min ? 3 : 2, first_row + rows);
    const int64_t blocks = row_bytes / block_bytes;
    one_row = [&, blocks, with_min](int64_t i) { q4_simple(part, i, blocks, with_min, out); };
  } else if (kind == "Q8_0") {
    TORCH_CHECK(row_bytes % 34 == 0, "raw: whole Q8_0 blocks a row");
    check_out(out, 2, first_row + rows);
    const int64_t blocks = row_bytes / 34;
    one_row = [&, blocks](int64_t i) { q8_0(part, i, blocks, out); };
  } else if (kind == "Q4_K" || kind == "Q6_K") {
    const int64_t super_bytes = kind == "Q4_K" ? 144 : 210;
    TORCH_CHECK(row_bytes % super_bytes == 0, "raw: whole ", kind, " super-blocks a row");
    check_out(out, 3, first_row + rows);
    const int64_t supers = row_bytes / super_bytes;
    if (kind == "Q4_K") {
      one_row = [&, supers](int64_t i) { q4_k(part, i, supers, out); };
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
  m.def("gguf_tiles(str kind, Tensor raw, Tensor order, int first_row, Tensor(a!)[] out) -> ()");
}

TORCH_LIBRARY_IMPL(infermcp, CPU, m) { m.impl("gguf_tiles", &gguf_tiles); }
