// CPU harness of the projection kernels: runs the same per-element functions as the CUDA kernels, one
// "thread" after another, so their logic can be checked against the torch reference without a GPU. The
// atomicMin of the scatter kernel becomes a plain min in this serial loop.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "projection_common.cuh"

extern "C" int mvvdp_harness_project(const int64_t* flat_index, const float* depth, int64_t num_views,
                                     int64_t num_points, const float* colors, int64_t channels, int64_t height,
                                     int64_t width, int reach, int max_d2, float* rgb, float* depth_image) {
  using mvvdp::Key;
  const int64_t view_size = height * width;
  const int64_t num_pixels = num_views * view_size;
  std::vector<Key> keys(static_cast<size_t>(num_pixels), mvvdp::kEmptyKey);
  std::vector<Key> splatted(static_cast<size_t>(num_pixels));
  for (int64_t entry = 0; entry < num_views * num_points; ++entry) {  // scatter_min_kernel
    const int64_t pixel = flat_index[entry];
    if (pixel < 0) continue;
    if (pixel >= num_pixels) return 1;
    const Key key = mvvdp::pack_key(depth[entry], static_cast<uint32_t>(entry % num_points));
    keys[pixel] = std::min(keys[pixel], key);
  }
  for (int64_t pixel = 0; pixel < num_pixels; ++pixel) {  // splat_kernel
    const int64_t view = pixel / view_size;
    const int64_t within = pixel - view * view_size;
    splatted[pixel] = mvvdp::splat_pixel(keys.data() + view * view_size, static_cast<int>(height),
                                         static_cast<int>(width), static_cast<int>(within / width),
                                         static_cast<int>(within % width), reach, max_d2);
  }
  for (int64_t pixel = 0; pixel < num_pixels; ++pixel) {  // unpack_kernel
    const int64_t view = pixel / view_size;
    const int64_t within = pixel - view * view_size;
    mvvdp::unpack_pixel(splatted[pixel], colors, channels, view_size, rgb + view * channels * view_size + within,
                        depth_image + pixel);
  }
  return 0;
}
