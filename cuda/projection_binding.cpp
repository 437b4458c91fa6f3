// Torch binding of the CUDA projection kernels.
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <limits>
#include <vector>

#include "projection_common.cuh"

namespace mvvdp {
cudaError_t launch_projection(const int64_t* flat_index, const float* depth, int64_t num_views,
                              int64_t num_points, const float* colors, int64_t channels, int height, int width,
                              int reach, int max_d2, Key* keys, Key* splatted, float* rgb, float* depth_image,
                              cudaStream_t stream);
}

// flat_index (V, N) int64 pixel index into (V, H, W), -1 to skip; depth (V, N) float32 >= 0; colors (N, C)
// float32. Returns {rgb (V, C, H, W), depth (V, H, W)}.
std::vector<torch::Tensor> project(torch::Tensor flat_index, torch::Tensor depth, torch::Tensor colors,
                                   int64_t height, int64_t width, int64_t reach, int64_t max_d2) {
  TORCH_CHECK(flat_index.is_cuda() && depth.is_cuda() && colors.is_cuda(), "inputs must be CUDA tensors");
  TORCH_CHECK(flat_index.dim() == 2 && flat_index.scalar_type() == torch::kInt64, "flat_index: int64 (V, N)");
  TORCH_CHECK(depth.sizes() == flat_index.sizes() && depth.scalar_type() == torch::kFloat32,
              "depth: float32 with the shape of flat_index");
  TORCH_CHECK(colors.dim() == 2 && colors.size(0) == flat_index.size(1) && colors.scalar_type() == torch::kFloat32,
              "colors: float32 (N, C)");
  TORCH_CHECK(flat_index.size(1) <= std::numeric_limits<int32_t>::max(), "too many points for 32-bit indices");
  TORCH_CHECK(height > 0 && width > 0 && reach >= 0 && max_d2 >= 0, "bad image size or splat extent");
  const auto flat_c = flat_index.contiguous();
  const auto depth_c = depth.contiguous();
  const auto colors_c = colors.contiguous();
  const int64_t num_views = flat_c.size(0);
  const int64_t channels = colors_c.size(1);
  const auto key_options = flat_c.options().dtype(torch::kInt64);
  auto keys = torch::full({num_views, height, width}, static_cast<int64_t>(mvvdp::kEmptyKey), key_options);
  auto splatted = torch::empty_like(keys);
  auto rgb = torch::empty({num_views, channels, height, width}, colors_c.options());
  auto depth_image = torch::empty({num_views, height, width}, colors_c.options());
  const auto err = mvvdp::launch_projection(
      flat_c.data_ptr<int64_t>(), depth_c.data_ptr<float>(), num_views, flat_c.size(1), colors_c.data_ptr<float>(),
      channels, static_cast<int>(height), static_cast<int>(width), static_cast<int>(reach),
      static_cast<int>(max_d2), reinterpret_cast<mvvdp::Key*>(keys.data_ptr<int64_t>()),
      reinterpret_cast<mvvdp::Key*>(splatted.data_ptr<int64_t>()), rgb.data_ptr<float>(),
      depth_image.data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "projection kernels failed: ", cudaGetErrorString(err));
  return {rgb, depth_image};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("project", &project, "z-ordered multi-view projection with screen-space splatting (CUDA)");
}
