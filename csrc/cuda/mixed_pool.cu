// Mixed max/average pooling, forward and backward fused (CUDA).
//
// For each pooling window w of channel c:   y = α_c · max(w) + (1 - α_c) · mean(w)
// Forward: one thread per output; one sweep over the window gives the maximum, its first position
// in scan order (z, y, x; a NaN wins and propagates, as in PyTorch's max pooling) stored as a
// byte, and the sum; with learned α it also stores max - mean.
// Backward: ∂L/∂x_i = Σ_{o ∋ i} g_o · ((1 - α_c)/|w| + α_c · [i = argmax_o]). When the windows
// tile the input (kernel = stride on every axis, the U-Net case) each input lies in at most one
// window, so one thread per output writes its whole window; otherwise one thread per input
// gathers from the windows that contain it. Either way there are no atomics and the result is
// deterministic. ∂L/∂α_c = Σ_o g_o · (max_o - mean_o) is reduced in double precision into a fixed
// number of partial sums per (n, c) plane (kAlphaChunks blocks each), which the caller adds up.
// Tiled kernels index within one output slice in 32 bits (a 2D grid walks the slices), which
// spares the 64-bit divisions that otherwise dominate these memory-bound kernels.
// Arrays: x (P, D, H, W) with P = N·C planes (2D pooling: D = 1, kernel and stride 1 along z).
// Entry points (extern "C", device pointers, a stream; return 0 or the CUDA error code):
//   autoliver_mixed_pool_forward_{f32,f64}, autoliver_mixed_pool_backward_{f32,f64},
//   autoliver_mixed_pool_alpha_chunks.
#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr int kThreads = 256;
constexpr int kAlphaChunks = 32;  // partial sums of the α gradient per plane

struct Shape {
    int64_t P, C, D, H, W;
    int64_t kd, kh, kw, sd, sh, sw;
    int64_t oD, oH, oW;
};

Shape make_shape(int64_t P, int64_t C, int64_t D, int64_t H, int64_t W, int64_t kd, int64_t kh, int64_t kw, int64_t sd,
                 int64_t sh, int64_t sw) {
    Shape s{P, C, D, H, W, kd, kh, kw, sd, sh, sw, 0, 0, 0};
    s.oD = (D - kd) / sd + 1;
    s.oH = (H - kh) / sh + 1;
    s.oW = (W - kw) / sw + 1;
    return s;
}

template <class T>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ alpha, T* __restrict__ y,
                               uint8_t* __restrict__ arg, T* __restrict__ diff, Shape s) {
    const int64_t n = s.P * s.oD * s.oH * s.oW;
    const int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (o >= n) return;
    const int64_t ow = o % s.oW, oh = (o / s.oW) % s.oH, od = (o / (s.oW * s.oH)) % s.oD, p = o / (s.oW * s.oH * s.oD);
    const T* base = x + ((p * s.D + od * s.sd) * s.H + oh * s.sh) * s.W + ow * s.sw;
    T best = base[0], sum = T(0);
    int k = 0, at = 0;
    for (int64_t dz = 0; dz < s.kd; ++dz)
        for (int64_t dy = 0; dy < s.kh; ++dy)
            for (int64_t dx = 0; dx < s.kw; ++dx, ++k) {
                const T v = base[(dz * s.H + dy) * s.W + dx];
                if (k > 0 && ((v > best) || isnan(v))) {
                    best = v;
                    at = k;
                }
                sum += v;
            }
    const T mean = sum / T(s.kd * s.kh * s.kw);
    const T a = alpha[p % s.C];
    y[o] = a * best + (T(1) - a) * mean;
    arg[o] = uint8_t(at);
    if (diff) diff[o] = best - mean;
}

// First and last output index along one axis whose window contains input position i.
__device__ inline void covering(int64_t i, int64_t k, int64_t st, int64_t n_out, int64_t& lo, int64_t& hi) {
    lo = i - k + 1 <= 0 ? 0 : (i - k + 1 + st - 1) / st;
    hi = i / st;
    if (hi > n_out - 1) hi = n_out - 1;
}

bool tiles(const Shape& s) {
    return s.kd == s.sd && s.kh == s.sh && s.kw == s.sw && s.P * s.oD < (int64_t(1) << 31) &&
           s.oH * s.oW < (int64_t(1) << 31);
}

// Threads per block of the tiled kernels: a whole output slice when it is small (deep layers).
int tiled_threads(const Shape& s) {
    const int64_t hw = s.oH * s.oW;
    return hw >= kThreads ? kThreads : int((hw + 31) / 32 * 32);
}

dim3 tiled_grid(const Shape& s, int threads) {
    const int64_t slices = s.P * s.oD;
    return dim3(unsigned((s.oH * s.oW + threads - 1) / threads), unsigned(slices < 65535 ? slices : 65535));
}

template <class T>
__global__ void forward_tiled_kernel(const T* __restrict__ x, const T* __restrict__ alpha, T* __restrict__ y,
                                     uint8_t* __restrict__ arg, T* __restrict__ diff, Shape s) {
    const int oW = int(s.oW), hw = int(s.oH) * oW;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= hw) return;
    const int oh = idx / oW, ow = idx - oh * oW;
    const int kd = int(s.kd), kh = int(s.kh), kw = int(s.kw);
    const T window = T(kd * kh * kw);
    const int slices = int(s.P * s.oD), oD = int(s.oD), C = int(s.C);
    for (int slice = blockIdx.y; slice < slices; slice += gridDim.y) {
        const int p = slice / oD, od = slice - p * oD;
        const T* base = x + ((int64_t(p) * s.D + int64_t(od) * kd) * s.H + int64_t(oh) * kh) * s.W + int64_t(ow) * kw;
        T best = base[0], sum = T(0);
        int k = 0, at = 0;
        for (int dz = 0; dz < kd; ++dz)
            for (int dy = 0; dy < kh; ++dy) {
                const T* row = base + (int64_t(dz) * s.H + dy) * s.W;
                for (int dx = 0; dx < kw; ++dx, ++k) {
                    const T v = row[dx];
                    if (k > 0 && ((v > best) || isnan(v))) {
                        best = v;
                        at = k;
                    }
                    sum += v;
                }
            }
        const T mean = sum / window;
        const T a = alpha[p % C];
        const int64_t o = int64_t(slice) * hw + idx;
        y[o] = a * best + (T(1) - a) * mean;
        arg[o] = uint8_t(at);
        if (diff) diff[o] = best - mean;
    }
}

template <class T>
__global__ void backward_tiled_kernel(const T* __restrict__ g, const uint8_t* __restrict__ arg,
                                      const T* __restrict__ alpha, T* __restrict__ gx, Shape s) {
    const int oW = int(s.oW), hw = int(s.oH) * oW;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= hw) return;
    const int oh = idx / oW, ow = idx - oh * oW;
    const int kd = int(s.kd), kh = int(s.kh), kw = int(s.kw);
    const int slices = int(s.P * s.oD), oD = int(s.oD), C = int(s.C);
    for (int slice = blockIdx.y; slice < slices; slice += gridDim.y) {
        const int p = slice / oD, od = slice - p * oD;
        const int64_t o = int64_t(slice) * hw + idx;
        const T go = g[o];
        const int at = arg[o];
        const T a = alpha[p % C];
        const T share = (T(1) - a) / T(kd * kh * kw);
        T* base = gx + ((int64_t(p) * s.D + int64_t(od) * kd) * s.H + int64_t(oh) * kh) * s.W + int64_t(ow) * kw;
        int k = 0;
        for (int dz = 0; dz < kd; ++dz)
            for (int dy = 0; dy < kh; ++dy) {
                T* row = base + (int64_t(dz) * s.H + dy) * s.W;
                for (int dx = 0; dx < kw; ++dx, ++k) row[dx] = go * (share + (k == at ? a : T(0)));
            }
    }
}

template <class T>
__global__ void backward_kernel(const T* __restrict__ g, const uint8_t* __restrict__ arg, const T* __restrict__ alpha,
                                T* __restrict__ gx, Shape s) {
    const int64_t n = s.P * s.D * s.H * s.W;
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t w = i % s.W, h = (i / s.W) % s.H, d = (i / (s.W * s.H)) % s.D, p = i / (s.W * s.H * s.D);
    int64_t d0, d1, h0, h1, w0, w1;
    covering(d, s.kd, s.sd, s.oD, d0, d1);
    covering(h, s.kh, s.sh, s.oH, h0, h1);
    covering(w, s.kw, s.sw, s.oW, w0, w1);
    const T a = alpha[p % s.C];
    const T share = (T(1) - a) / T(s.kd * s.kh * s.kw);
    T acc = T(0);
    for (int64_t od = d0; od <= d1; ++od)
        for (int64_t oh = h0; oh <= h1; ++oh)
            for (int64_t ow = w0; ow <= w1; ++ow) {
                const int64_t o = ((p * s.oD + od) * s.oH + oh) * s.oW + ow;
                const int64_t k = ((d - od * s.sd) * s.kh + (h - oh * s.sh)) * s.kw + (w - ow * s.sw);
                acc += g[o] * (share + (int64_t(arg[o]) == k ? a : T(0)));
            }
    gx[i] = acc;
}

// Partial sums of g · diff: block (plane, chunk) adds up its share of the plane's outputs (planes
// on the grid's x axis, which holds 2^31 - 1 blocks; y holds only 65535).
template <class T>
__global__ void alpha_grad_kernel(const T* __restrict__ g, const T* __restrict__ diff, double* __restrict__ out,
                                  int64_t per_plane) {
    __shared__ double part[kThreads];
    const int64_t p = blockIdx.x;
    const int64_t chunk = (per_plane + kAlphaChunks - 1) / kAlphaChunks;
    const int64_t lo = blockIdx.y * chunk, hi = lo + chunk < per_plane ? lo + chunk : per_plane;
    const T* gp = g + p * per_plane;
    const T* dp = diff + p * per_plane;
    double acc = 0.0;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) acc += double(gp[j]) * double(dp[j]);
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (int(threadIdx.x) < stride) part[threadIdx.x] += part[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[p * kAlphaChunks + blockIdx.y] = part[0];
}

template <class T>
int forward(const T* x, const T* alpha, T* y, uint8_t* arg, T* diff, const Shape& s, cudaStream_t stream) {
    const int64_t n = s.P * s.oD * s.oH * s.oW;
    if (n == 0) return 0;
    if (tiles(s)) {
        const int threads = tiled_threads(s);
        forward_tiled_kernel<T><<<tiled_grid(s, threads), threads, 0, stream>>>(x, alpha, y, arg, diff, s);
    } else {
        forward_kernel<T><<<unsigned((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(x, alpha, y, arg, diff, s);
    }
    return int(cudaGetLastError());
}

template <class T>
int backward(const T* g, const uint8_t* arg, const T* alpha, T* gx, const T* diff, double* grad_alpha, const Shape& s,
             cudaStream_t stream) {
    const int64_t n = s.P * s.D * s.H * s.W;
    if (n == 0) return 0;
    if (tiles(s) && s.oD * s.oH * s.oW > 0) {
        // inputs past the last whole window get no gradient; only then is gx cleared first
        if (s.oD * s.kd != s.D || s.oH * s.kh != s.H || s.oW * s.kw != s.W) {
            const cudaError_t err = cudaMemsetAsync(gx, 0, size_t(n) * sizeof(T), stream);
            if (err != cudaSuccess) return int(err);
        }
        const int threads = tiled_threads(s);
        backward_tiled_kernel<T><<<tiled_grid(s, threads), threads, 0, stream>>>(g, arg, alpha, gx, s);
    } else {
        backward_kernel<T><<<unsigned((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(g, arg, alpha, gx, s);
    }
    if (grad_alpha && diff && s.P > 0)
        alpha_grad_kernel<T><<<dim3(unsigned(s.P), kAlphaChunks), kThreads, 0, stream>>>(g, diff, grad_alpha,
                                                                                         s.oD * s.oH * s.oW);
    return int(cudaGetLastError());
}

}  // namespace

#define AUTOLIVER_MIXED_POOL_ENTRY(SUFFIX, T)                                                                        \
    extern "C" int autoliver_mixed_pool_forward_##SUFFIX(const T* x, const T* alpha, T* y, uint8_t* arg, T* diff,    \
                                                         int64_t P, int64_t C, int64_t D, int64_t H, int64_t W,      \
                                                         int64_t kd, int64_t kh, int64_t kw, int64_t sd, int64_t sh, \
                                                         int64_t sw, cudaStream_t stream) {                          \
        return forward<T>(x, alpha, y, arg, diff, make_shape(P, C, D, H, W, kd, kh, kw, sd, sh, sw), stream);        \
    }                                                                                                                \
    extern "C" int autoliver_mixed_pool_backward_##SUFFIX(const T* g, const uint8_t* arg, const T* alpha, T* gx,     \
                                                          const T* diff, double* grad_alpha, int64_t P, int64_t C,   \
                                                          int64_t D, int64_t H, int64_t W, int64_t kd, int64_t kh,   \
                                                          int64_t kw, int64_t sd, int64_t sh, int64_t sw,            \
                                                          cudaStream_t stream) {                                     \
        return backward<T>(g, arg, alpha, gx, diff, grad_alpha, make_shape(P, C, D, H, W, kd, kh, kw, sd, sh, sw),   \
                           stream);                                                                                  \
    }

// Partial sums per plane that the backward launchers write to grad_alpha (P × this doubles).
extern "C" int autoliver_mixed_pool_alpha_chunks() { return kAlphaChunks; }

AUTOLIVER_MIXED_POOL_ENTRY(f32, float)
AUTOLIVER_MIXED_POOL_ENTRY(f64, double)
