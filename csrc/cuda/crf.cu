// 3D fully connected CRF: mean-field inference with fast Gaussian filtering (CUDA).
//
// The same algorithm and geometry as csrc/cpu/crf.cpp (autoliver/ops/crf.py has the derivation):
//   U = -log(max(p, floor));  Q = softmax(-U)
//   repeat T times:  Q = softmax(-U + Σ_m w_m N_m Q),  N_m = D_m^-1/2 k_m D_m^-1/2,  D_m = k_m·1
//   * smoothness kernel: exact Gaussian over position, three 1D correlations (x, y, z), zero
//     outside the volume; one thread per output value.
//   * appearance kernel: 4D bilateral grid (z, y, x, intensity). Each voxel splats onto its 16
//     surrounding cells with multilinear weights (double-precision atomics: the grid is small,
//     so float sums of millions of voxels would lose digits), the grid is blurred by a binomial
//     along each axis, and each voxel reads its 16 cells back.
//   * Potts: Σ_l Q_l = 1, so K labels need K-1 filterings; the last label's message is the
//     filtered total minus the others.
// Atomics make the splat's summation order vary between runs: results agree with the CPU kernel
// to float rounding, not bit for bit.
// Entry point: autoliver_crf_mean_field (extern "C"; device pointers, host-side geometry, stream).
// Returns 0 or the CUDA error code.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

// Device memory owned for the duration of one call, freed in stream order.
template <class T>
class DeviceArray {
public:
    DeviceArray(size_t n, cudaStream_t stream) : stream_(stream) {
        if (n > 0) status_ = cudaMallocAsync(reinterpret_cast<void**>(&ptr_), n * sizeof(T), stream);
        if (status_ != cudaSuccess) ptr_ = nullptr;
    }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
    ~DeviceArray() {
        if (ptr_) cudaFreeAsync(ptr_, stream_);
    }
    T* get() const { return ptr_; }
    cudaError_t status() const { return status_; }

private:
    T* ptr_ = nullptr;
    cudaStream_t stream_;
    cudaError_t status_ = cudaSuccess;
};

struct Dims {
    int64_t nz, ny, nx;
    __host__ __device__ int64_t voxels() const { return nz * ny * nx; }
};

// out (+)= weight · out_scale ∘ result; the scales are per voxel, null means 1.
struct Scaling {
    const float* in_scale = nullptr;
    const float* out_scale = nullptr;
    float weight = 1.0f;
    bool accumulate = false;
};

__device__ inline void store_scaled(float* out, int64_t i, int64_t v, float value, const Scaling& s) {
    float r = s.weight * value * (s.out_scale ? s.out_scale[v] : 1.0f);
    out[i] = s.accumulate ? out[i] + r : r;
}

// ------------------------------------------------------------------ smoothness kernel
// One 1D correlation along `axis` (0 z, 1 y, 2 x) for C channel volumes.
__global__ void correlate_axis(const float* __restrict__ in, float* __restrict__ out, int64_t C, Dims d, int axis,
                               const float* __restrict__ taps, int r, Scaling s, bool final_pass) {
    const int64_t N = d.voxels();
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= C * N) return;
    const int64_t v = i % N;
    const int64_t x = v % d.nx, y = (v / d.nx) % d.ny, z = v / (d.nx * d.ny);
    const int64_t pos = axis == 0 ? z : (axis == 1 ? y : x);
    const int64_t n = axis == 0 ? d.nz : (axis == 1 ? d.ny : d.nx);
    const int64_t stride = axis == 0 ? d.nx * d.ny : (axis == 1 ? d.nx : 1);
    const int64_t k0 = pos - r < 0 ? -pos : -r;
    const int64_t k1 = pos + r > n - 1 ? n - 1 - pos : r;
    float acc = 0.0f;
    for (int64_t k = k0; k <= k1; ++k) {
        const int64_t j = i + k * stride;
        const float value = in[j] * (s.in_scale ? s.in_scale[v + k * stride] : 1.0f);
        acc += taps[r + k] * value;
    }
    if (final_pass) {
        store_scaled(out, i, v, acc, s);
    } else {
        out[i] = acc;
    }
}

class SeparableGaussian {
public:
    SeparableGaussian(Dims d, const float* taps_device[3], const int radius[3], cudaStream_t stream)
        : d_(d), stream_(stream) {
        for (int a = 0; a < 3; ++a) {
            taps_[a] = taps_device[a];
            r_[a] = radius[a];
        }
    }

    // out (+)= weight · out_scale ∘ k(in_scale ∘ in); needs two scratch volumes of C·N floats.
    cudaError_t apply(const float* in, float* out, int64_t C, float* scratch1, float* scratch2, const Scaling& s) const {
        const int64_t n = C * d_.voxels();
        Scaling first;
        first.in_scale = s.in_scale;
        correlate_axis<<<blocks_for(n), kThreads, 0, stream_>>>(in, scratch1, C, d_, 2, taps_[2], r_[2], first, false);
        correlate_axis<<<blocks_for(n), kThreads, 0, stream_>>>(scratch1, scratch2, C, d_, 1, taps_[1], r_[1], Scaling(), false);
        Scaling last = s;
        last.in_scale = nullptr;
        correlate_axis<<<blocks_for(n), kThreads, 0, stream_>>>(scratch2, out, C, d_, 0, taps_[0], r_[0], last, true);
        return cudaGetLastError();
    }

private:
    Dims d_;
    cudaStream_t stream_;
    const float* taps_[3];
    int r_[3];
};

// ------------------------------------------------------------------ appearance kernel
struct GridGeometry {
    double scale[4];
    int64_t shape[4];  // (gz, gy, gx, gb)
};

__device__ inline void cell_of(double u, int64_t g, int64_t& c, float& f) {
    int64_t i = int64_t(floor(u));
    i = i < 0 ? 0 : (i > g - 2 ? g - 2 : i);
    c = i;
    f = float(u - double(i));
}

// The 16 corners of voxel v: base cell index per axis and upper weights.
__device__ inline void corners(int64_t v, Dims d, const float* image01, const GridGeometry& g, int64_t c[4], float f[4]) {
    const int64_t x = v % d.nx, y = (v / d.nx) % d.ny, z = v / (d.nx * d.ny);
    cell_of(double(z) * g.scale[0], g.shape[0], c[0], f[0]);
    cell_of(double(y) * g.scale[1], g.shape[1], c[1], f[1]);
    cell_of(double(x) * g.scale[2], g.shape[2], c[2], f[2]);
    cell_of(double(image01[v]) * g.scale[3], g.shape[3], c[3], f[3]);
}

__global__ void grid_splat(const float* __restrict__ in, const float* __restrict__ image01, double* grid, int64_t C,
                           Dims d, GridGeometry g, const float* __restrict__ in_scale) {
    const int64_t N = d.voxels();
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= C * N) return;
    const int64_t ch = i / N, v = i % N;
    int64_t c[4];
    float f[4];
    corners(v, d, image01, g, c, f);
    const double value = double(in[i]) * (in_scale ? in_scale[v] : 1.0f);
    for (int corner = 0; corner < 16; ++corner) {
        int64_t idx = 0;
        float w = 1.0f;
        for (int a = 0; a < 4; ++a) {
            const int bit = (corner >> (3 - a)) & 1;
            idx = idx * g.shape[a] + c[a] + bit;
            w *= bit ? f[a] : 1.0f - f[a];
        }
        atomicAdd(grid + idx * C + ch, double(w) * value);
    }
}

__global__ void grid_blur_axis(const double* __restrict__ in, double* __restrict__ out, int64_t total, int64_t n,
                               int64_t stride, const float* __restrict__ taps, int r) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int64_t pos = (i / stride) % n;
    const int64_t k0 = pos - r < 0 ? -pos : -r;
    const int64_t k1 = pos + r > n - 1 ? n - 1 - pos : r;
    double acc = 0.0;
    for (int64_t k = k0; k <= k1; ++k) acc += double(taps[r + k]) * in[i + k * stride];
    out[i] = acc;
}

__global__ void grid_slice(const double* __restrict__ grid, const float* __restrict__ image01, float* out, int64_t C,
                           Dims d, GridGeometry g, Scaling s) {
    const int64_t N = d.voxels();
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= C * N) return;
    const int64_t ch = i / N, v = i % N;
    int64_t c[4];
    float f[4];
    corners(v, d, image01, g, c, f);
    double acc = 0.0;
    for (int corner = 0; corner < 16; ++corner) {
        int64_t idx = 0;
        float w = 1.0f;
        for (int a = 0; a < 4; ++a) {
            const int bit = (corner >> (3 - a)) & 1;
            idx = idx * g.shape[a] + c[a] + bit;
            w *= bit ? f[a] : 1.0f - f[a];
        }
        acc += double(w) * grid[idx * C + ch];
    }
    store_scaled(out, i, v, float(acc), s);
}

class BilateralGrid {
public:
    BilateralGrid(Dims d, const float* image01, const GridGeometry& g, const float* blur_device, int blur_radius,
                  cudaStream_t stream)
        : d_(d), image01_(image01), g_(g), blur_(blur_device), rb_(blur_radius), stream_(stream) {}

    int64_t cells() const { return g_.shape[0] * g_.shape[1] * g_.shape[2] * g_.shape[3]; }

    // out (+)= weight · out_scale ∘ (W B Wᵀ)(in_scale ∘ in); grid scratch of 2·cells·C doubles.
    cudaError_t apply(const float* in, float* out, int64_t C, double* grid_a, double* grid_b, const Scaling& s) const {
        const int64_t n = C * d_.voxels(), total = cells() * C;
        cudaError_t err = cudaMemsetAsync(grid_a, 0, size_t(total) * sizeof(double), stream_);
        if (err != cudaSuccess) return err;
        grid_splat<<<blocks_for(n), kThreads, 0, stream_>>>(in, image01_, grid_a, C, d_, g_, s.in_scale);
        double* src = grid_a;
        double* dst = grid_b;
        int64_t stride = C;
        for (int axis = 3; axis >= 0; --axis) {
            grid_blur_axis<<<blocks_for(total), kThreads, 0, stream_>>>(src, dst, total, g_.shape[axis], stride, blur_, rb_);
            stride *= g_.shape[axis];
            double* t = src;
            src = dst;
            dst = t;
        }
        grid_slice<<<blocks_for(n), kThreads, 0, stream_>>>(src, image01_, out, C, d_, g_, s);
        return cudaGetLastError();
    }

private:
    Dims d_;
    const float* image01_;
    GridGeometry g_;
    const float* blur_;
    int rb_;
    cudaStream_t stream_;
};

// ------------------------------------------------------------------ element-wise steps
__global__ void fill_value(float* a, int64_t n, float value) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) a[i] = value;
}

__global__ void inverse_sqrt(float* a, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) a[i] = rsqrtf(fmaxf(a[i], 1e-30f));
}

__global__ void negative_log(const float* __restrict__ p, float* __restrict__ u, int64_t n, float floor_p) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) u[i] = -logf(fmaxf(p[i], floor_p));
}

// q = softmax(-U + m); m_l for l < K-1 from msg, m_{K-1} = total - Σ_l m_l; msg null: m = 0.
__global__ void softmax_update(const float* __restrict__ unary, const float* __restrict__ msg,
                               const float* __restrict__ total, float* q, int64_t K, int64_t N) {
    const int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (v >= N) return;
    float mx = -INFINITY;
    float rest = msg ? total[v] : 0.0f;
    for (int64_t l = 0; l < K; ++l) {
        float m = 0.0f;
        if (msg) {
            m = l < K - 1 ? msg[l * N + v] : rest;
            if (l < K - 1) rest -= m;
        }
        const float logit = -unary[l * N + v] + m;
        q[l * N + v] = logit;  // logits parked in q, overwritten below
        mx = fmaxf(mx, logit);
    }
    float sum = 0.0f;
    for (int64_t l = 0; l < K; ++l) {
        const float e = expf(q[l * N + v] - mx);
        q[l * N + v] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
    for (int64_t l = 0; l < K; ++l) q[l * N + v] *= inv;
}

__global__ void combine_totals(float* total, const float* a, float wa, const float* b, float wb, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) total[i] = (a ? wa * a[i] : 0.0f) + (b ? wb * b[i] : 0.0f);
}

template <class T>
cudaError_t to_device(DeviceArray<T>& dst, const T* host, size_t n, cudaStream_t stream) {
    if (dst.status() != cudaSuccess) return dst.status();
    return cudaMemcpyAsync(dst.get(), host, n * sizeof(T), cudaMemcpyHostToDevice, stream);
}

#define AUTOLIVER_CHECK(expr)                    \
    do {                                         \
        cudaError_t err_ = (expr);               \
        if (err_ != cudaSuccess) return int(err_); \
    } while (0)

}  // namespace

extern "C" int autoliver_crf_mean_field(const float* prob, const float* image01, float* out, int K, int nz, int ny,
                                        int nx, const float* taps_z, int rz, const float* taps_y, int ry,
                                        const float* taps_x, int rx, float smooth_weight, const double* grid_scale,
                                        const int64_t* grid_shape, const float* blur_taps, int rb,
                                        float appearance_weight, int iterations, float floor_p, cudaStream_t stream) {
    const Dims d{nz, ny, nx};
    const int64_t N = d.voxels();
    const int64_t C = K - 1;  // filtered channels per kernel
    DeviceArray<float> unary(size_t(K) * size_t(N), stream);
    AUTOLIVER_CHECK(unary.status());
    negative_log<<<blocks_for(int64_t(K) * N), kThreads, 0, stream>>>(prob, unary.get(), int64_t(K) * N, floor_p);
    softmax_update<<<blocks_for(N), kThreads, 0, stream>>>(unary.get(), nullptr, nullptr, out, K, N);
    AUTOLIVER_CHECK(cudaGetLastError());
    const bool smooth_on = smooth_weight > 0.0f, grid_on = appearance_weight > 0.0f;
    if (iterations <= 0 || K < 2 || (!smooth_on && !grid_on)) return int(cudaStreamSynchronize(stream));

    // Geometry to the device.
    DeviceArray<float> tz(size_t(2 * rz + 1), stream), ty(size_t(2 * ry + 1), stream), tx(size_t(2 * rx + 1), stream);
    DeviceArray<float> blur(size_t(2 * rb + 1), stream);
    AUTOLIVER_CHECK(to_device(tz, taps_z, size_t(2 * rz + 1), stream));
    AUTOLIVER_CHECK(to_device(ty, taps_y, size_t(2 * ry + 1), stream));
    AUTOLIVER_CHECK(to_device(tx, taps_x, size_t(2 * rx + 1), stream));
    AUTOLIVER_CHECK(to_device(blur, blur_taps, size_t(2 * rb + 1), stream));
    GridGeometry geom;
    for (int a = 0; a < 4; ++a) {
        geom.scale[a] = grid_scale[a];
        geom.shape[a] = grid_shape[a];
    }
    const int64_t cells = geom.shape[0] * geom.shape[1] * geom.shape[2] * geom.shape[3];
    const float* taps_device[3] = {tz.get(), ty.get(), tx.get()};
    const int radius[3] = {rz, ry, rx};
    SeparableGaussian smooth(d, taps_device, radius, stream);
    BilateralGrid grid(d, image01, geom, blur.get(), rb, stream);

    // Scratch: two volumes of C channels (at least one for the normalisers), grids, messages.
    const int64_t width = C > 1 ? C : 1;
    DeviceArray<float> scratch1(size_t(width * N), stream), scratch2(size_t(width * N), stream);
    DeviceArray<float> msg(size_t(C * N), stream), ones(size_t(N), stream), total(size_t(N), stream);
    DeviceArray<float> norm_s(smooth_on ? size_t(N) : 0, stream), total_s(smooth_on ? size_t(N) : 0, stream);
    DeviceArray<float> norm_a(grid_on ? size_t(N) : 0, stream), total_a(grid_on ? size_t(N) : 0, stream);
    DeviceArray<double> grid_a(grid_on ? size_t(cells * width) : 0, stream), grid_b(grid_on ? size_t(cells * width) : 0, stream);
    for (const cudaError_t e : {scratch1.status(), scratch2.status(), msg.status(), ones.status(), total.status(),
                                norm_s.status(), total_s.status(), norm_a.status(), total_a.status(), grid_a.status(),
                                grid_b.status()})
        AUTOLIVER_CHECK(e);
    fill_value<<<blocks_for(N), kThreads, 0, stream>>>(ones.get(), N, 1.0f);

    // Normalisers: norm = (k·1)^-1/2, total = norm ∘ k(norm).
    if (smooth_on) {
        AUTOLIVER_CHECK(smooth.apply(ones.get(), norm_s.get(), 1, scratch1.get(), scratch2.get(), Scaling()));
        inverse_sqrt<<<blocks_for(N), kThreads, 0, stream>>>(norm_s.get(), N);
        Scaling s;
        s.in_scale = norm_s.get();
        s.out_scale = norm_s.get();
        AUTOLIVER_CHECK(smooth.apply(ones.get(), total_s.get(), 1, scratch1.get(), scratch2.get(), s));
    }
    if (grid_on) {
        AUTOLIVER_CHECK(grid.apply(ones.get(), norm_a.get(), 1, grid_a.get(), grid_b.get(), Scaling()));
        inverse_sqrt<<<blocks_for(N), kThreads, 0, stream>>>(norm_a.get(), N);
        Scaling s;
        s.in_scale = norm_a.get();
        s.out_scale = norm_a.get();
        AUTOLIVER_CHECK(grid.apply(ones.get(), total_a.get(), 1, grid_a.get(), grid_b.get(), s));
    }
    combine_totals<<<blocks_for(N), kThreads, 0, stream>>>(total.get(), smooth_on ? total_s.get() : nullptr,
                                                            smooth_weight, grid_on ? total_a.get() : nullptr,
                                                            appearance_weight, N);
    AUTOLIVER_CHECK(cudaGetLastError());

    for (int it = 0; it < iterations; ++it) {
        bool accumulate = false;
        if (smooth_on) {
            Scaling s;
            s.in_scale = norm_s.get();
            s.out_scale = norm_s.get();
            s.weight = smooth_weight;
            AUTOLIVER_CHECK(smooth.apply(out, msg.get(), C, scratch1.get(), scratch2.get(), s));
            accumulate = true;
        }
        if (grid_on) {
            Scaling s;
            s.in_scale = norm_a.get();
            s.out_scale = norm_a.get();
            s.weight = appearance_weight;
            s.accumulate = accumulate;
            AUTOLIVER_CHECK(grid.apply(out, msg.get(), C, grid_a.get(), grid_b.get(), s));
        }
        softmax_update<<<blocks_for(N), kThreads, 0, stream>>>(unary.get(), msg.get(), total.get(), out, K, N);
        AUTOLIVER_CHECK(cudaGetLastError());
    }
    // The scratch buffers are freed in stream order when this returns; wait so that errors of the
    // kernels surface here and not in the caller's next CUDA call.
    return int(cudaStreamSynchronize(stream));
}
