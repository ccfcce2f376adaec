// Exact 3D bilateral filter on the GPU: the same function as csrc/cpu/bilateral.cpp (ITK's
// BilateralImageFilter without its range-table quantisation), for int16 or float32 volumes.
//
//   out(v) = v + sum_q w(v,q) (I(q) - I(v)) / sum_q w(v,q)
//   w(v,q) = 2^-(c (I(v) - I(q))^2 + az dz^2 + ay dy^2 + ax dx^2)
//
// with c = log2(e) / (2 sigma_r^2) and a_i = log2(e) spacing_i^2 / (2 sigma_d,i^2) computed by the
// caller, the window radius (rz, ry, rx) = ceil(2.5 sigma_d / spacing) per axis, and neighbours
// outside the volume clamped to the nearest voxel on each axis (zero-flux Neumann borders).
//
// Algorithm: one thread per output voxel walks its window; x is the fastest thread index, so a
// warp reads 32 neighbouring voxels of one row at each tap and the window rows stay in L1. The
// spatial exponent of a (dz, dy) row is hoisted out of the dx loop; each tap costs one ex2 (SFU),
// so the kernel is compute-bound (one voxel's window is hundreds of taps), not memory-bound.
// Sums are kept relative to the centre value, so float accumulation loses nothing to large
// intensities. No torch or Python headers: the launchers take device pointers and a stream.
#include <cuda_runtime.h>

#include <cstdint>

namespace {

template <typename T>
__global__ void bilateral_kernel(const T* __restrict__ in, float* __restrict__ out, int Z, int Y, int X, int rz, int ry,
                                 int rx, float c, float az, float ay, float ax) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  const int z = blockIdx.z;
  if (x >= X || y >= Y) return;
  const size_t plane = static_cast<size_t>(Y) * X;
  const float centre = static_cast<float>(__ldg(in + z * plane + static_cast<size_t>(y) * X + x));
  float num = 0.0f, den = 0.0f;
  for (int dz = -rz; dz <= rz; ++dz) {
    const int zz = min(max(z + dz, 0), Z - 1);
    for (int dy = -ry; dy <= ry; ++dy) {
      const int yy = min(max(y + dy, 0), Y - 1);
      const T* row = in + zz * plane + static_cast<size_t>(yy) * X;
      const float s_zy = az * dz * dz + ay * dy * dy;
      for (int dx = -rx; dx <= rx; ++dx) {
        const int xx = min(max(x + dx, 0), X - 1);
        const float d = static_cast<float>(__ldg(row + xx)) - centre;
        const float w = exp2f(-(c * d * d + (s_zy + ax * dx * dx)));
        num += w * d;
        den += w;
      }
    }
  }
  out[z * plane + static_cast<size_t>(y) * X + x] = centre + num / den;
}

template <typename T>
int launch(const T* in, float* out, int Z, int Y, int X, int rz, int ry, int rx, float c, float az, float ay, float ax,
           cudaStream_t stream) {
  if (Z <= 0 || Y <= 0 || X <= 0) return 0;
  if (Z > 65535) return static_cast<int>(cudaErrorInvalidValue);
  const dim3 block(32, 8);
  const dim3 grid((X + block.x - 1) / block.x, (Y + block.y - 1) / block.y, Z);
  bilateral_kernel<T><<<grid, block, 0, stream>>>(in, out, Z, Y, X, rz, ry, rx, c, az, ay, ax);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" {

// Returns 0 on success, else a cudaError_t code. in/out: device pointers to Z*Y*X contiguous values.
int autoliver_bilateral3d_i16(const int16_t* in, float* out, int Z, int Y, int X, int rz, int ry, int rx, float c,
                              float az, float ay, float ax, cudaStream_t stream) {
  return launch<int16_t>(in, out, Z, Y, X, rz, ry, rx, c, az, ay, ax, stream);
}

int autoliver_bilateral3d_f32(const float* in, float* out, int Z, int Y, int X, int rz, int ry, int rx, float c,
                              float az, float ay, float ax, cudaStream_t stream) {
  return launch<float>(in, out, Z, Y, X, rz, ry, rx, c, az, ay, ax, stream);
}

}  // extern "C"
