// Compiled CPU backend of the multi-view projection: the per-element functions of projection_common.cuh
// (pixel and depth of a point, key packing, splatting, unpacking) in contiguous loops. Points go in blocks
// whose temporaries stay in cache: their unit coordinates, then per view their pixels and keys (loops the
// compiler vectorises) and the scatter-min of the keys. Pixels go row by row: the row's splatted keys, then
// their depths and colours. Views are independent: a call deals them to up to `threads` threads, the calling
// one among them.
#include <cstdint>
#include <system_error>
#include <thread>
#include <vector>

#include "projection_common.cuh"

// The vectorised point loops are compiled twice, for AVX2 and for any x86-64 (SSE2), and the dynamic loader
// picks the one the CPU runs (GCC's target_clones; the same float32 operations either way, FMA contraction is
// off). Elsewhere, or with MVVDP_BASELINE_ONLY defined, once for the compiler's target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MVVDP_BASELINE_ONLY)
#define MVVDP_X86_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MVVDP_X86_CLONES
#endif

namespace {

using mvvdp::Key;

constexpr int64_t kBlock = 512;        // points per block
constexpr int kLookahead = 16;         // how far ahead the random reads (key slots, colours) are prefetched
constexpr int kMaxResolution = 46340;  // a view's pixel index, and one more, fit an int32

// The cube and the views: per view the base axis (0, 1, 2) and sign (+-1) of its image right, image down and
// viewing direction; the cube's float32 centre and bounds; the image resolution.
struct Geometry {
  const int32_t* axes;  // (V, 3)
  const float* signs;   // (V, 3)
  const float* center;  // (3,)
  const float* lower;   // (3,)
  const float* upper;   // (3,)
  float edge;
  int resolution;
};

// Z-orders the points into the key images of views first, first + step, ... (< num_views): each pixel keeps
// the smallest key. keys: per view resolution^2 keys and one more, where points outside the cube go. Returns
// false when a coordinate is NaN or infinite.
MVVDP_X86_CLONES bool scatter_views(const float* points, int64_t num_points, const Geometry& geometry,
                                    int64_t first, int64_t step, int64_t num_views, Key* keys) {
  const int resolution = geometry.resolution;
  const float edge = geometry.edge;
  const int32_t outside_slot = resolution * resolution;
  float unit[3][kBlock];
  int32_t inside[kBlock];
  int32_t slot[kBlock];
  Key block_keys[kBlock];
  for (int64_t start = 0; start < num_points; start += kBlock) {
    const int64_t count = num_points - start < kBlock ? num_points - start : kBlock;
    const float* xyz = points + 3 * start;
    for (int64_t i = 0; i < count; ++i) inside[i] = 1;
    int32_t finite = 1;
    for (int axis = 0; axis < 3; ++axis) {
      const float center = geometry.center[axis], lower = geometry.lower[axis], upper = geometry.upper[axis];
      float* units = unit[axis];
      for (int64_t i = 0; i < count; ++i) {
        const float coordinate = xyz[3 * i + axis];
        finite &= coordinate - coordinate == 0.0f;  // NaN for NaN and infinities
        inside[i] &= (coordinate >= lower) & (coordinate <= upper);
        units[i] = mvvdp::unit_coordinate(coordinate, center, edge);
      }
    }
    if (!finite) return false;
    for (int64_t view = first; view < num_views; view += step) {
      const int32_t* axes = geometry.axes + 3 * view;
      const float *right = unit[axes[0]], *down = unit[axes[1]], *forward = unit[axes[2]];
      const float* signs = geometry.signs + 3 * view;
      const float right_sign = signs[0], down_sign = signs[1], forward_sign = signs[2];
      for (int64_t i = 0; i < count; ++i) {
        const int col = mvvdp::pixel_coordinate(mvvdp::camera_coordinate(right[i], right_sign), resolution);
        const int row = mvvdp::pixel_coordinate(mvvdp::camera_coordinate(down[i], down_sign), resolution);
        const float depth = mvvdp::pixel_depth(mvvdp::camera_coordinate(forward[i], forward_sign), edge);
        slot[i] = inside[i] ? row * resolution + col : outside_slot;
        block_keys[i] = mvvdp::pack_key(depth, static_cast<uint32_t>(start + i));
      }
      Key* const view_keys = keys + view * (outside_slot + 1);
      for (int64_t i = 0; i < count; ++i) {
        if (i + kLookahead < count) __builtin_prefetch(view_keys + slot[i + kLookahead], 1);
        Key& kept = view_keys[slot[i]];
        kept = block_keys[i] < kept ? block_keys[i] : kept;
      }
    }
  }
  return true;
}

// Depth and colour of each pixel of a row from its splatted key; kChannels > 0: the channel count known to
// the compiler (the copy unrolls), 0: `channels`.
template <int64_t kChannels>
void unpack_row(const Key* row_keys, int width, const float* colors, int64_t channels, int64_t view_size,
                float* rgb, float* depth_image) {
  const int64_t stride = kChannels > 0 ? kChannels : channels;
  for (int col = 0; col < width; ++col) {
    if (col + kLookahead < width) {
      __builtin_prefetch(colors + mvvdp::key_point_index(row_keys[col + kLookahead]) * stride);
    }
    mvvdp::unpack_pixel(row_keys[col], colors, kChannels > 0 ? kChannels : channels, view_size, rgb + col,
                        depth_image + col);
  }
}

// Splats and unpacks one view's key image into its depth and feature images. The row's splatted keys come
// first, so that the colour lookups (cache misses in a large cloud) go in a loop of their own and overlap.
void splat_and_unpack_view(const Key* keys, const float* colors, int64_t channels, int resolution, int reach,
                           int max_d2, float* rgb, float* depth_image) {
  const int64_t view_size = static_cast<int64_t>(resolution) * resolution;
  std::vector<Key> row_keys(static_cast<size_t>(resolution));
  for (int row = 0; row < resolution; ++row) {
    for (int col = 0; col < resolution; ++col) {
      row_keys[col] = mvvdp::splat_pixel(keys, resolution, resolution, row, col, reach, max_d2);
    }
    const int64_t row_start = static_cast<int64_t>(row) * resolution;
    float* const rgb_row = rgb + row_start;
    float* const depth_row = depth_image + row_start;
    if (channels == 3) {
      unpack_row<3>(row_keys.data(), resolution, colors, channels, view_size, rgb_row, depth_row);
    } else {
      unpack_row<0>(row_keys.data(), resolution, colors, channels, view_size, rgb_row, depth_row);
    }
  }
}

}  // namespace

// points (N, 3) and colors (N, C) float32; view_axes, view_signs, center, lower, upper, edge: see Geometry;
// rgb (V, C, H, W) and depth_image (V, H, W) float32 outputs, H = W = resolution <= kMaxResolution; reach and
// max_d2: the splat disc. Returns 0; 1 when a point has a NaN or infinite coordinate (the outputs are then
// undefined); 2 when the resolution is too large.
extern "C" int mvvdp_cpu_project(const float* points, int64_t num_points, const float* colors,
                                 int64_t channels, const int32_t* view_axes, const float* view_signs,
                                 int64_t num_views, const float* center, const float* lower,
                                 const float* upper, float edge, int resolution, int reach, int max_d2,
                                 int threads, float* rgb, float* depth_image) {
  if (resolution > kMaxResolution) return 2;
  const Geometry geometry{view_axes, view_signs, center, lower, upper, edge, resolution};
  const int64_t view_size = static_cast<int64_t>(resolution) * resolution;
  thread_local std::vector<Key> keys;  // reused from call to call: mapped already, often still cached
  keys.assign(static_cast<size_t>(num_views * (view_size + 1)), mvvdp::kEmptyKey);
  Key* const key_images = keys.data();  // (a worker naming `keys` would get its own, empty one)
  const int64_t groups = threads < num_views ? (threads > 1 ? threads : 1) : num_views;
  std::vector<char> finite(static_cast<size_t>(groups), 1);
  auto project_group = [&](int64_t group) {  // views group, group + groups, ...
    if (!scatter_views(points, num_points, geometry, group, groups, num_views, key_images)) {
      finite[group] = 0;
      return;
    }
    for (int64_t view = group; view < num_views; view += groups) {
      Key* const view_keys = key_images + view * (view_size + 1);
      splat_and_unpack_view(view_keys, colors, channels, resolution, reach, max_d2,
                            rgb + view * channels * view_size, depth_image + view * view_size);
    }
  };
  std::vector<std::thread> workers;
  std::vector<int64_t> unstarted;  // groups without a thread of their own run on the calling one
  for (int64_t group = 1; group < groups; ++group) {
    try {
      workers.emplace_back(project_group, group);
    } catch (const std::system_error&) {
      unstarted.push_back(group);
    }
  }
  project_group(0);
  for (const int64_t group : unstarted) project_group(group);
  for (auto& worker : workers) worker.join();
  for (const char ok : finite) {
    if (!ok) return 1;
  }
  return 0;
}
