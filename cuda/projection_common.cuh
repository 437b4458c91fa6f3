// Per-element logic of the multi-view projection, shared by the CUDA kernels, the CPU harness and the
// compiled CPU backend (projection_cpu.cpp).
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

// A point's coordinates in a view, the same float32 operations as pixels.view_terms (the reference): per base
// axis unit = (coordinate - centre) / edge, in [-0.5, 0.5] inside the cube; along a signed base axis of the
// view camera = sign * unit + 0.5 (sign +-1: the product is exact, so this is unit + 0.5 or 0.5 - unit).
MVVDP_HD float unit_coordinate(float coordinate, float center, float edge) {
  return (coordinate - center) / edge;
}

MVVDP_HD float camera_coordinate(float unit, float sign) { return sign * unit + 0.5f; }

MVVDP_HD float clamp_float(float value, float low, float high) {
  const float above_low = value < low ? low : value;  // (one select each: compilers vectorise them)
  return above_low > high ? high : above_low;
}

// Column or row of a camera coordinate: floor(camera * resolution) clamped to the image (truncating a value
// >= 0 is its floor).
MVVDP_HD int pixel_coordinate(float camera, int resolution) {
  const float last = static_cast<float>(resolution - 1);
  return static_cast<int>(clamp_float(camera * static_cast<float>(resolution), 0.0f, last));
}

// Depth from the camera face, clamped to [0, edge]; adding +0.0 turns -0.0 into +0.0.
MVVDP_HD float pixel_depth(float camera, float edge) { return clamp_float(camera * edge, 0.0f, edge) + 0.0f; }

MVVDP_HD Key pack_key(float depth, uint32_t point_index) {
  return (static_cast<Key>(float_to_bits(depth)) << 32) | static_cast<Key>(point_index);
}

MVVDP_HD uint32_t key_depth_bits(Key key) { return static_cast<uint32_t>(key >> 32); }

MVVDP_HD uint32_t key_point_index(Key key) { return static_cast<uint32_t>(key & 0xFFFFFFFFull); }

// Key at (row, col) of a key image, kEmptyKey outside it.
MVVDP_HD Key key_at(const Key* keys, int height, int width, int row, int col) {
  return row < 0 || row >= height || col < 0 || col >= width ? kEmptyKey : keys[row * width + col];
}

// splat_pixel ring by ring, nearest first: a ring is the pixels (row +- dy, col +- dx) with dy^2 + dx^2 = d2
// (per dy >= 0 the dx >= 0 that fits, if any). A ring's smallest key is below `own depth bits << 32` exactly
// when some key of the ring is, so a ring costs one minimum per pixel and one test, and the first ring that
// passes gives the result. kInterior: the whole disc lies inside the image (no bounds checks).
template <bool kInterior>
MVVDP_HD Key splat_rings(const Key* keys, int height, int width, int row, int col, int reach, int max_d2) {
  const Key own = keys[row * width + col];
  const Key floor = own & ~static_cast<Key>(0xFFFFFFFFull);  // keys below it have a strictly smaller depth
  for (int d2 = 1; d2 <= max_d2; ++d2) {
    Key ring = kEmptyKey;
    int dx = reach;
    for (int dy = 0; dy * dy <= d2; ++dy) {
      const int rest = d2 - dy * dy;
      while (dx * dx > rest) --dx;
      if (dx * dx != rest) continue;
      const int rows[2] = {row - dy, row + dy};
      const int cols[2] = {col - dx, col + dx};
      for (const int r : rows) {
        for (const int c : cols) {  // (a zero offset visits a pixel twice: the minimum stays)
          const Key candidate = kInterior ? keys[r * width + c] : key_at(keys, height, width, r, c);
          ring = candidate < ring ? candidate : ring;
        }
      }
    }
    if (ring < floor) return ring;
  }
  return own;
}

// Splatting for the pixel (row, col) of one view's key image (height x width, row-major): the key of the
// nearest pixel within squared pixel distance max_d2 (reach = isqrt(max_d2)) whose depth is strictly smaller
// than this pixel's; ties in distance go to the smaller key (smaller depth, then smaller point index).
// Returns the pixel's own key when no such neighbour exists.
MVVDP_HD Key splat_pixel(const Key* keys, int height, int width, int row, int col, int reach, int max_d2) {
  const bool interior = row >= reach && row + reach < height && col >= reach && col + reach < width;
  return interior ? splat_rings<true>(keys, height, width, row, col, reach, max_d2)
                  : splat_rings<false>(keys, height, width, row, col, reach, max_d2);
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
