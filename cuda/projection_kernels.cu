// CUDA kernels of the multi-view projection: atomicMin z-ordering, screen-space splatting, unpacking.
#include <cuda_runtime.h>

#include "projection_common.cuh"

namespace mvvdp {
namespace {

constexpr int kThreads = 256;

// One thread per (view, point) entry: keep the smallest key at the entry's pixel.
__global__ void scatter_min_kernel(const int64_t* flat_index, const float* depth, int64_t num_entries,
                                   int64_t num_points, Key* keys) {
  const int64_t entry = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (entry >= num_entries) return;
  const int64_t pixel = flat_index[entry];
  if (pixel < 0) return;
  atomicMin(keys + pixel, pack_key(depth[entry], static_cast<uint32_t>(entry % num_points)));
}

// One thread per pixel of all views; reads the z-ordered keys, writes the splatted keys.
__global__ void splat_kernel(const Key* keys, Key* splatted, int64_t num_pixels, int height, int width,
                             int reach, int max_d2) {
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pixel >= num_pixels) return;
  const int64_t view_size = static_cast<int64_t>(height) * width;
  const int64_t view = pixel / view_size;
  const int within = static_cast<int>(pixel - view * view_size);
  splatted[pixel] = splat_pixel(keys + view * view_size, height, width, within / width, within % width, reach,
                                max_d2);
}

// One thread per pixel: keys -> depth image (V, H, W) and feature image (V, C, H, W).
__global__ void unpack_kernel(const Key* keys, const float* colors, int64_t channels, int64_t num_pixels,
                              int64_t view_size, float* rgb, float* depth) {
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pixel >= num_pixels) return;
  const int64_t view = pixel / view_size;
  const int64_t within = pixel - view * view_size;
  unpack_pixel(keys[pixel], colors, channels, view_size, rgb + view * channels * view_size + within,
               depth + pixel);
}

int blocks_for(int64_t count) { return static_cast<int>((count + kThreads - 1) / kThreads); }

}  // namespace

// keys must hold num_views * height * width entries set to kEmptyKey; splatted the same size (scratch).
cudaError_t launch_projection(const int64_t* flat_index, const float* depth, int64_t num_views,
                              int64_t num_points, const float* colors, int64_t channels, int height, int width,
                              int reach, int max_d2, Key* keys, Key* splatted, float* rgb, float* depth_image,
                              cudaStream_t stream) {
  const int64_t num_entries = num_views * num_points;
  const int64_t num_pixels = num_views * static_cast<int64_t>(height) * width;
  if (num_entries > 0) {
    scatter_min_kernel<<<blocks_for(num_entries), kThreads, 0, stream>>>(flat_index, depth, num_entries,
                                                                         num_points, keys);
  }
  splat_kernel<<<blocks_for(num_pixels), kThreads, 0, stream>>>(keys, splatted, num_pixels, height, width,
                                                                 reach, max_d2);
  unpack_kernel<<<blocks_for(num_pixels), kThreads, 0, stream>>>(
      splatted, colors, channels, num_pixels, static_cast<int64_t>(height) * width, rgb, depth_image);
  return cudaGetLastError();
}

}  // namespace mvvdp
