// Per-element logic of the multi-view projection, shared by the CUDA kernels and the CPU harness.
//
// A key packs (depth, point index) into 64 bits: the high 32 bits are the float32 bit pattern of the
// non-negative depth (ordered like the depth), the low 32 bits the point index. The smallest key per pixel is
// the nearest point, ties broken by the smaller index. kEmptyKey marks a pixel that no point reached.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define MVVDP_HD __host__ __device__ __forceinline__
#else
#define MVVDP_HD inline
#endif

namespace mvvdp {

using Key = unsigned long long;

constexpr Key kEmptyKey = 0x7FFFFFFFFFFFFFFFull;
constexpr uint32_t kInfinityBits = 0x7F800000u;

MVVDP_HD uint32_t float_to_bits(float value) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

MVVDP_HD float bits_to_float(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

MVVDP_HD Key pack_key(float depth, uint32_t point_index) {
  return (static_cast<Key>(float_to_bits(depth)) << 32) | static_cast<Key>(point_index);
}

MVVDP_HD uint32_t key_depth_bits(Key key) { return static_cast<uint32_t>(key >> 32); }

MVVDP_HD uint32_t key_point_index(Key key) { return static_cast<uint32_t>(key & 0xFFFFFFFFull); }

// Splatting for the pixel (row, col) of one view's key image (height x width, row-major): the key of the
// nearest pixel within squared pixel distance max_d2 whose depth is strictly smaller than this pixel's; ties
// in distance go to the smaller key (smaller depth, then smaller point index). Returns the pixel's own key
// when no such neighbour exists.
MVVDP_HD Key splat_pixel(const Key* keys, int height, int width, int row, int col, int reach, int max_d2) {
  const Key own = keys[row * width + col];
  const uint32_t own_bits = key_depth_bits(own);
  Key best = kEmptyKey;
  int best_d2 = max_d2 + 1;
  for (int dy = -reach; dy <= reach; ++dy) {
    const int r = row + dy;
    if (r < 0 || r >= height) continue;
    for (int dx = -reach; dx <= reach; ++dx) {
      const int c = col + dx;
      const int d2 = dy * dy + dx * dx;
      if (c < 0 || c >= width || d2 == 0 || d2 > max_d2) continue;
      const Key candidate = keys[r * width + c];
      if (key_depth_bits(candidate) >= own_bits) continue;
      if (d2 < best_d2 || (d2 == best_d2 && candidate < best)) {
        best = candidate;
        best_d2 = d2;
      }
    }
  }
  return best_d2 <= max_d2 ? best : own;
}

// Writes the depth and the channels (channel_stride apart) of one pixel from its key; colors is (N, C).
MVVDP_HD void unpack_pixel(Key key, const float* colors, int64_t channels, int64_t channel_stride,
                           float* rgb_out, float* depth_out) {
  if (key == kEmptyKey) {
    *depth_out = bits_to_float(kInfinityBits);
    for (int64_t c = 0; c < channels; ++c) rgb_out[c * channel_stride] = 0.0f;
    return;
  }
  *depth_out = bits_to_float(key_depth_bits(key));
  const float* feature = colors + static_cast<int64_t>(key_point_index(key)) * channels;
  for (int64_t c = 0; c < channels; ++c) rgb_out[c * channel_stride] = feature[c];
}

}  // namespace mvvdp
