// 3D fully connected CRF: mean-field inference with fast Gaussian filtering (CPU, OpenMP).
//
// Algorithm (Krähenbühl & Koltun 2011, Potts model; autoliver/ops/crf.py has the derivation):
//   U = -log(max(p, floor));  Q = softmax(-U)
//   repeat T times:  Q = softmax(-U + Σ_m w_m N_m Q),  N_m = D_m^-1/2 k_m D_m^-1/2,  D_m = k_m·1
// Two kernels k_m:
//   * smoothness: an exact Gaussian over position, separable: three 1D correlations (x, y, z)
//     with zero outside the volume (taps from Python: exp(-k²/2σ²), truncated at 4σ). Because the
//     kernel and the box are separable, so is its normaliser D^-1/2: it is applied on the fly.
//   * appearance: a Gaussian over position and intensity, by a 4D bilateral grid (z, y, x, b):
//     splat each voxel multilinearly onto its 16 surrounding cells, blur the grid with a binomial
//     along each axis, slice back multilinearly. The z and y weights depend only on the slice and
//     the row, so the splat runs in stages: a row splats along (x, b) into a row buffer, rows fold
//     into a slice buffer with their y weights, slices into the grid with their z weights: per
//     voxel 4 multiply-adds per channel (slicing mirrors it). Threads own z-slices and private
//     grids summed in a fixed order: no atomics, results independent of the thread count.
// With Potts, Σ_l Q_l = 1, so the last label's message is the filtered total minus the others:
// K labels cost K-1 filterings per kernel and iteration (for K = 2 only Q_0 is filtered and the
// update is a logistic function of one number per voxel). The mean-field update is fused into
// the appearance kernel's slicing, so Q is updated in place row by row, straight from cache.
// Python computes the geometry (taps, grid scale and shape); this file only executes it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

struct Dims {
    int64_t nz, ny, nx;
    int64_t plane() const { return ny * nx; }
    int64_t voxels() const { return nz * ny * nx; }
};

int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// Small volumes run on one thread: each iteration passes a few dozen barriers, and on a busy
// machine a barrier can wait a whole scheduler slice for a descheduled partner.
int threads_for(int64_t values, int threads) { return values < (int64_t(1) << 17) ? 1 : std::max(1, threads); }

// dst = Σ_{k=k0..k1} taps[r+k] · row(k) over nx elements; symmetric pairs when the window is whole.
template <class RowAt>
inline void correlate_rows(float* dst, int64_t nx, const float* taps, int r, int k0, int k1, RowAt row) {
    if (k0 == -r && k1 == r) {
        const float* c = row(0);
        const float w0 = taps[r];
        for (int64_t x = 0; x < nx; ++x) dst[x] = w0 * c[x];
        for (int k = 1; k <= r; ++k) {
            const float* a = row(-k);
            const float* b = row(k);
            const float w = taps[r + k];
            for (int64_t x = 0; x < nx; ++x) dst[x] += w * (a[x] + b[x]);
        }
        return;
    }
    std::fill(dst, dst + nx, 0.0f);
    for (int k = k0; k <= k1; ++k) {
        const float* a = row(k);
        const float w = taps[r + k];
        for (int64_t x = 0; x < nx; ++x) dst[x] += w * a[x];
    }
}

// ------------------------------------------------------------------ smoothness kernel
class SeparableGaussian {
public:
    SeparableGaussian(Dims d, std::vector<float> tz, std::vector<float> ty, std::vector<float> tx)
        : d_(d), tz_(std::move(tz)), ty_(std::move(ty)), tx_(std::move(tx)) {
        axis_normalisers(tz_, d.nz, az_, bz_);
        axis_normalisers(ty_, d.ny, ay_, by_);
        axis_normalisers(tx_, d.nx, ax_, bx_);
    }

    // out (+)= w · n ∘ k(n ∘ in) for C channel volumes (C, nz, ny, nx), n = (k·1)^-1/2.
    void apply(const float* in, float* out, int64_t C, float w, bool accumulate, int threads) const {
        const int64_t nz = d_.nz, ny = d_.ny, nx = d_.nx, P = d_.plane(), N = d_.voxels();
        const int rx = int(tx_.size() / 2), ry = int(ty_.size() / 2), rz = int(tz_.size() / 2);
        tmp_.resize(size_t(C * N));  // kept between calls: no page faults per iteration
        float* tmp = tmp_.data();
#pragma omp parallel num_threads(threads)
        {
            std::vector<float> row(static_cast<size_t>(nx + 2 * rx), 0.0f);
            std::vector<float> plane(static_cast<size_t>(P));
            std::vector<float> acc(static_cast<size_t>(nx));
            // x then y, one (channel, slice) plane at a time, all in cache.
#pragma omp for schedule(static)
            for (int64_t cz = 0; cz < C * nz; ++cz) {
                const int64_t z = cz % nz;
                const float* src = in + cz * P;
                for (int64_t y = 0; y < ny; ++y) {
                    float* r = row.data() + rx;
                    const float nzy = az_[size_t(z)] * ay_[size_t(y)];
                    for (int64_t x = 0; x < nx; ++x) r[x] = src[y * nx + x] * nzy * ax_[size_t(x)];
                    correlate_rows(plane.data() + y * nx, nx, tx_.data(), rx, -rx, rx, [r](int k) { return r + k; });
                }
                float* o = tmp + cz * P;
                for (int64_t y = 0; y < ny; ++y) {
                    const int k0 = int(std::max<int64_t>(-ry, -y)), k1 = int(std::min<int64_t>(ry, ny - 1 - y));
                    const float* pl = plane.data() + y * nx;
                    correlate_rows(o + y * nx, nx, ty_.data(), ry, k0, k1, [pl, nx](int k) { return pl + k * nx; });
                }
            }
            // z: one (channel, row) column of rows at a time; nz rows of nx floats stay in cache.
#pragma omp for schedule(static)
            for (int64_t cy = 0; cy < C * ny; ++cy) {
                const int64_t c = cy / ny, y = cy % ny;
                const float* base = tmp + c * N + y * nx;
                for (int64_t z = 0; z < nz; ++z) {
                    const int k0 = int(std::max<int64_t>(-rz, -z)), k1 = int(std::min<int64_t>(rz, nz - 1 - z));
                    const float* b = base + z * P;
                    correlate_rows(acc.data(), nx, tz_.data(), rz, k0, k1, [b, P](int k) { return b + k * P; });
                    float* dst = out + c * N + z * P + y * nx;
                    const float wzy = w * az_[size_t(z)] * ay_[size_t(y)];
                    if (accumulate) {
                        for (int64_t x = 0; x < nx; ++x) dst[x] += wzy * ax_[size_t(x)] * acc[size_t(x)];
                    } else {
                        for (int64_t x = 0; x < nx; ++x) dst[x] = wzy * ax_[size_t(x)] * acc[size_t(x)];
                    }
                }
            }
        }
    }

    // total += w · n ∘ k(n) per voxel; it factors over the axes like n itself.
    void add_total(float* total, float w, int threads) const {
        const int64_t ny = d_.ny, nx = d_.nx;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t zy = 0; zy < d_.nz * ny; ++zy) {
            const size_t z = size_t(zy / ny), y = size_t(zy % ny);
            const float f = w * az_[z] * bz_[z] * ay_[y] * by_[y];
            float* t = total + zy * nx;
            for (int64_t x = 0; x < nx; ++x) t[x] += f * ax_[size_t(x)] * bx_[size_t(x)];
        }
    }

private:
    // a = (Σ_k t_k over the taps inside the axis)^-1/2, b = Σ_k t_k a[i+k].
    static void axis_normalisers(const std::vector<float>& t, int64_t n, std::vector<float>& a, std::vector<float>& b) {
        const int64_t r = int64_t(t.size() / 2);
        std::vector<double> ad(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
            double d = 0.0;
            for (int64_t k = std::max(-r, -i); k <= std::min(r, n - 1 - i); ++k) d += t[size_t(r + k)];
            ad[size_t(i)] = 1.0 / std::sqrt(d);
        }
        a.assign(ad.begin(), ad.end());
        b.assign(size_t(n), 0.0f);
        for (int64_t i = 0; i < n; ++i) {
            double s = 0.0;
            for (int64_t k = std::max(-r, -i); k <= std::min(r, n - 1 - i); ++k) s += t[size_t(r + k)] * ad[size_t(i + k)];
            b[size_t(i)] = float(s);
        }
    }

    Dims d_;
    std::vector<float> tz_, ty_, tx_;
    std::vector<float> az_, ay_, ax_, bz_, by_, bx_;
    mutable std::vector<float> tmp_;
};

// ------------------------------------------------------------------ appearance kernel
class BilateralGrid {
public:
    BilateralGrid(Dims d, const float* image01, const double* scale, const int64_t* gshape, std::vector<float> blur,
                  int threads)
        : d_(d), blur_(std::move(blur)) {
        for (int i = 0; i < 4; ++i) g_[i] = gshape[i];
        axis_cells(d.nz, scale[0], g_[0], cz_, fz_);
        axis_cells(d.ny, scale[1], g_[1], cy_, fy_);
        axis_cells(d.nx, scale[2], g_[2], cx_, fx_);
        // Per voxel only the intensity coordinate (cell = its integer part, clamped).
        const int64_t N = d.voxels();
        ub_.resize(size_t(N));
        const float sb = float(scale[3]);
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t v = 0; v < N; ++v) ub_[size_t(v)] = image01[v] * sb;
        // Row buffers cost 3 sweeps over gx*gb cells per row; past ~2 cells per voxel, adding each
        // voxel's 8 (y, x, b) corners straight into the slice buffer is cheaper.
        row_mode_ = g_[2] * g_[3] <= 2 * d.nx;
    }

    int64_t cells() const { return g_[0] * g_[1] * g_[2] * g_[3]; }

    // grid = B Wᵀ (in_scale ∘ in) for C channels (in null: all ones); grid has cells·C doubles.
    void splat_blur(const float* in, const float* in_scale, int64_t C, std::vector<double>& grid, int threads) const {
        grid.assign(size_t(cells() * C), 0.0);
        if (C == 1)
            splat<1>(in, in_scale, 1, grid, threads);
        else
            splat<0>(in, in_scale, C, grid, threads);
        blur(grid, C, threads);
    }

    // For every row of voxels: acc[c·nx + x] = (W grid)[c, row start + x]; then sink(v0, nx, acc).
    // Rows of one z-slice go to one thread; sinks must only touch their own row's voxels.
    template <class Sink>
    void slice(const std::vector<double>& grid, int64_t C, int threads, Sink sink) const {
        if (C == 1)
            slice_impl<1>(grid, 1, threads, sink);
        else
            slice_impl<0>(grid, C, threads, sink);
    }

private:
    static void axis_cells(int64_t n, double scale, int64_t g, std::vector<int32_t>& cell, std::vector<float>& frac) {
        cell.resize(size_t(n));
        frac.resize(size_t(n));
        for (int64_t i = 0; i < n; ++i) {
            const double u = double(i) * scale;
            const int64_t c = std::clamp<int64_t>(int64_t(std::floor(u)), 0, g - 2);
            cell[size_t(i)] = int32_t(c);
            frac[size_t(i)] = float(u - double(c));
        }
    }

    // Intensity cell and upper weight of voxel v.
    inline void intensity_cell(int64_t v, int32_t& cb, float& fb) const {
        const float u = ub_[size_t(v)];
        cb = std::min(int32_t(u), int32_t(g_[3] - 2));
        fb = u - float(cb);
    }

    // CC: channels known at compile time (1), or 0 for the run-time count.
    template <int CC>
    void splat(const float* in, const float* is, int64_t Crt, std::vector<double>& grid, int threads) const {
        const int64_t C = CC > 0 ? CC : Crt;
        const int64_t ny = d_.ny, nx = d_.nx, N = d_.voxels(), P = d_.plane();
        const int64_t gx = g_[2], gb = g_[3];
        const int64_t rowcells = gx * gb * C, slicecells = g_[1] * rowcells;
        const int used = std::max(1, std::min<int>(threads, int(d_.nz)));
        std::vector<std::vector<double>> partial(static_cast<size_t>(used));
#pragma omp parallel num_threads(used)
        {
            std::vector<double>& mine = partial[size_t(thread_id())];
            mine.assign(grid.size(), 0.0);
            std::vector<double> slab(static_cast<size_t>(slicecells));
            std::vector<float> row(static_cast<size_t>(rowcells));
            std::vector<float> q(static_cast<size_t>(C * nx));
            std::vector<int32_t> cb(static_cast<size_t>(nx));
            std::vector<float> fb(static_cast<size_t>(nx));
#pragma omp for schedule(static)
            for (int64_t z = 0; z < d_.nz; ++z) {
                std::fill(slab.begin(), slab.end(), 0.0);
                for (int64_t y = 0; y < ny; ++y) {
                    const int64_t v0 = z * P + y * nx;
                    for (int64_t c = 0; c < C; ++c)
                        for (int64_t x = 0; x < nx; ++x)
                            q[size_t(c * nx + x)] = (in ? in[c * N + v0 + x] : 1.0f) * (is ? is[v0 + x] : 1.0f);
                    for (int64_t x = 0; x < nx; ++x) intensity_cell(v0 + x, cb[size_t(x)], fb[size_t(x)]);
                    const float wy1 = fy_[size_t(y)], wy0 = 1.0f - wy1;
                    if (row_mode_) {
                        std::fill(row.begin(), row.end(), 0.0f);
                        for (int64_t x = 0; x < nx; ++x) {
                            const float wx1 = fx_[size_t(x)], wx0 = 1.0f - wx1, wb1 = fb[size_t(x)], wb0 = 1.0f - wb1;
                            float* r = row.data() + (int64_t(cx_[size_t(x)]) * gb + cb[size_t(x)]) * C;
                            const float w00 = wx0 * wb0, w01 = wx0 * wb1, w10 = wx1 * wb0, w11 = wx1 * wb1;
                            for (int64_t c = 0; c < C; ++c) {
                                const float v = q[size_t(c * nx + x)];
                                r[c] += w00 * v;
                                r[C + c] += w01 * v;
                                r[gb * C + c] += w10 * v;
                                r[(gb + 1) * C + c] += w11 * v;
                            }
                        }
                        double* s0 = slab.data() + int64_t(cy_[size_t(y)]) * rowcells;
                        double* s1 = s0 + rowcells;
                        for (int64_t i = 0; i < rowcells; ++i) {
                            s0[i] += double(wy0 * row[size_t(i)]);
                            s1[i] += double(wy1 * row[size_t(i)]);
                        }
                    } else {
                        double* sy = slab.data() + int64_t(cy_[size_t(y)]) * rowcells;
                        const int64_t off[8] = {0, C, gb * C, (gb + 1) * C, rowcells, rowcells + C,
                                                rowcells + gb * C, rowcells + (gb + 1) * C};
                        for (int64_t x = 0; x < nx; ++x) {
                            const float wx1 = fx_[size_t(x)], wx0 = 1.0f - wx1, wb1 = fb[size_t(x)], wb0 = 1.0f - wb1;
                            double* s = sy + (int64_t(cx_[size_t(x)]) * gb + cb[size_t(x)]) * C;
                            const float w[8] = {wy0 * wx0 * wb0, wy0 * wx0 * wb1, wy0 * wx1 * wb0, wy0 * wx1 * wb1,
                                                wy1 * wx0 * wb0, wy1 * wx0 * wb1, wy1 * wx1 * wb0, wy1 * wx1 * wb1};
                            for (int64_t c = 0; c < C; ++c) {
                                const double v = q[size_t(c * nx + x)];
                                for (int k = 0; k < 8; ++k) s[off[k] + c] += double(w[k]) * v;
                            }
                        }
                    }
                }
                const double wz1 = fz_[size_t(z)], wz0 = 1.0 - wz1;
                double* g0 = mine.data() + int64_t(cz_[size_t(z)]) * slicecells;
                double* g1 = g0 + slicecells;
                for (int64_t i = 0; i < slicecells; ++i) {
                    g0[i] += wz0 * slab[size_t(i)];
                    g1[i] += wz1 * slab[size_t(i)];
                }
            }
        }
        // Partial grids are summed in a fixed order: results do not depend on thread timing.
        for (const auto& part : partial)
            for (size_t i = 0; i < part.size(); ++i) grid[i] += part[i];
    }

    void blur(std::vector<double>& grid, int64_t C, int threads) const {
        const int r = int(blur_.size() / 2);
        std::vector<double> next(grid.size());
        int64_t stride = C;
        for (int axis = 3; axis >= 0; --axis) {
            const int64_t n = g_[axis];
            const int64_t lines = cells() * C / n;
#pragma omp parallel for num_threads(threads) schedule(static)
            for (int64_t o = 0; o < lines; ++o) {
                const int64_t base = (o / stride) * n * stride + (o % stride);
                for (int64_t i = 0; i < n; ++i) {
                    double acc = 0.0;
                    const int64_t k0 = std::max<int64_t>(-r, -i), k1 = std::min<int64_t>(r, n - 1 - i);
                    for (int64_t k = k0; k <= k1; ++k) acc += double(blur_[size_t(r + k)]) * grid[size_t(base + (i + k) * stride)];
                    next[size_t(base + i * stride)] = acc;
                }
            }
            grid.swap(next);
            stride *= n;
        }
    }

    template <int CC, class Sink>
    void slice_impl(const std::vector<double>& grid, int64_t Crt, int threads, Sink& sink) const {
        const int64_t C = CC > 0 ? CC : Crt;
        const int64_t ny = d_.ny, nx = d_.nx, P = d_.plane();
        const int64_t gx = g_[2], gb = g_[3];
        const int64_t rowcells = gx * gb * C, slicecells = g_[1] * rowcells;
#pragma omp parallel num_threads(threads)
        {
            std::vector<float> slab(static_cast<size_t>(slicecells));
            std::vector<float> row(static_cast<size_t>(rowcells));
            std::vector<float> acc(static_cast<size_t>(C * nx));
#pragma omp for schedule(static)
            for (int64_t z = 0; z < d_.nz; ++z) {
                const double wz1 = fz_[size_t(z)], wz0 = 1.0 - wz1;
                const double* g0 = grid.data() + int64_t(cz_[size_t(z)]) * slicecells;
                const double* g1 = g0 + slicecells;
                for (int64_t i = 0; i < slicecells; ++i) slab[size_t(i)] = float(wz0 * g0[i] + wz1 * g1[i]);
                for (int64_t y = 0; y < ny; ++y) {
                    const int64_t v0 = z * P + y * nx;
                    const float wy1 = fy_[size_t(y)], wy0 = 1.0f - wy1;
                    const float* s0 = slab.data() + int64_t(cy_[size_t(y)]) * rowcells;
                    if (row_mode_) {
                        const float* s1 = s0 + rowcells;
                        for (int64_t i = 0; i < rowcells; ++i) row[size_t(i)] = wy0 * s0[i] + wy1 * s1[i];
                        for (int64_t x = 0; x < nx; ++x) {
                            int32_t cb;
                            float wb1;
                            intensity_cell(v0 + x, cb, wb1);
                            const float wx1 = fx_[size_t(x)], wx0 = 1.0f - wx1, wb0 = 1.0f - wb1;
                            const float* r = row.data() + (int64_t(cx_[size_t(x)]) * gb + cb) * C;
                            const float w00 = wx0 * wb0, w01 = wx0 * wb1, w10 = wx1 * wb0, w11 = wx1 * wb1;
                            for (int64_t c = 0; c < C; ++c)
                                acc[size_t(c * nx + x)] = w00 * r[c] + w01 * r[C + c] + w10 * r[gb * C + c] + w11 * r[(gb + 1) * C + c];
                        }
                    } else {
                        const int64_t off[8] = {0, C, gb * C, (gb + 1) * C, rowcells, rowcells + C,
                                                rowcells + gb * C, rowcells + (gb + 1) * C};
                        for (int64_t x = 0; x < nx; ++x) {
                            int32_t cb;
                            float wb1;
                            intensity_cell(v0 + x, cb, wb1);
                            const float wx1 = fx_[size_t(x)], wx0 = 1.0f - wx1, wb0 = 1.0f - wb1;
                            const float* s = s0 + (int64_t(cx_[size_t(x)]) * gb + cb) * C;
                            const float w[8] = {wy0 * wx0 * wb0, wy0 * wx0 * wb1, wy0 * wx1 * wb0, wy0 * wx1 * wb1,
                                                wy1 * wx0 * wb0, wy1 * wx0 * wb1, wy1 * wx1 * wb0, wy1 * wx1 * wb1};
                            for (int64_t c = 0; c < C; ++c) {
                                float a = 0.0f;
                                for (int k = 0; k < 8; ++k) a += w[k] * s[off[k] + c];
                                acc[size_t(c * nx + x)] = a;
                            }
                        }
                    }
                    sink(v0, nx, acc.data());
                }
            }
        }
    }

    Dims d_;
    int64_t g_[4];
    std::vector<float> blur_;
    std::vector<int32_t> cz_, cy_, cx_;
    std::vector<float> fz_, fy_, fx_;
    std::vector<float> ub_;
    bool row_mode_ = true;
};

// ------------------------------------------------------------------ the pairwise operator
struct Geometry {
    Dims dims;
    std::vector<float> tz, ty, tx;
    float smooth_weight;
    double scale[4];
    int64_t gshape[4];
    std::vector<float> blur;
    float appearance_weight;
};

// Σ_m w_m N_m with both kernels, their normalisers and total = Σ_m w_m N_m 1.
struct PairwiseOperator {
    PairwiseOperator(const Geometry& g, const float* image01, int threads) : N(g.dims.voxels()) {
        ws = g.smooth_weight;
        wa = g.appearance_weight;
        total.assign(size_t(N), 0.0f);
        if (ws > 0) {
            smooth = std::make_unique<SeparableGaussian>(g.dims, g.tz, g.ty, g.tx);
            smooth->add_total(total.data(), ws, threads);
        }
        if (wa > 0) {
            grid = std::make_unique<BilateralGrid>(g.dims, image01, g.scale, g.gshape, g.blur, threads);
            norm.resize(size_t(N));
            float* n = norm.data();
            grid->splat_blur(nullptr, nullptr, 1, cells, threads);
            grid->slice(cells, 1, threads, [n](int64_t v0, int64_t nx, const float* acc) {
                for (int64_t x = 0; x < nx; ++x) n[v0 + x] = 1.0f / std::sqrt(std::max(acc[x], 1e-30f));
            });
            float* t = total.data();
            const float w = wa;
            grid->splat_blur(nullptr, n, 1, cells, threads);
            grid->slice(cells, 1, threads, [n, t, w](int64_t v0, int64_t nx, const float* acc) {
                for (int64_t x = 0; x < nx; ++x) t[v0 + x] += w * n[v0 + x] * acc[x];
            });
        }
    }

    bool any() const { return smooth || grid; }

    // out = Σ_m w_m N_m values for C channels.
    void apply(const float* values, float* out, int64_t C, int threads) {
        if (smooth) smooth->apply(values, out, C, ws, false, threads);
        else std::fill(out, out + C * N, 0.0f);
        if (grid) {
            grid->splat_blur(values, norm.data(), C, cells, threads);
            const float* n = norm.data();
            const float w = wa;
            const int64_t NN = N;
            grid->slice(cells, C, threads, [=](int64_t v0, int64_t nx, const float* acc) {
                for (int64_t c = 0; c < C; ++c)
                    for (int64_t x = 0; x < nx; ++x) out[c * NN + v0 + x] += w * n[v0 + x] * acc[c * nx + x];
            });
        }
    }

    int64_t N;
    float ws = 0.0f, wa = 0.0f;
    std::unique_ptr<SeparableGaussian> smooth;
    std::unique_ptr<BilateralGrid> grid;
    std::vector<float> norm;   // appearance normaliser D^-1/2
    std::vector<float> total;  // Σ_m w_m N_m 1
    std::vector<double> cells;  // grid scratch
};

// ------------------------------------------------------------------ mean field
// K = 2: with d = U_1 - U_0 + m_0 - m_1 and m_1 = total - m_0, Q_0 = 1 / (1 + exp(-d)).
// Only Q_0 is filtered and updated; Q_1 = 1 - Q_0 is written at the end.
void mean_field_two(const float* p, float* q, int64_t N, const Geometry& g, const float* image01, int iterations,
                    float floor_p, int threads) {
    std::vector<float> ud(static_cast<size_t>(N));  // U_1 - U_0
    float* q0 = q;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t v = 0; v < N; ++v) {
        ud[size_t(v)] = std::log(std::max(p[v], floor_p)) - std::log(std::max(p[N + v], floor_p));
        q0[v] = 1.0f / (1.0f + std::exp(-ud[size_t(v)]));
    }
    if (iterations > 0 && (g.smooth_weight > 0 || g.appearance_weight > 0)) {
        PairwiseOperator op(g, image01, threads);
        std::vector<float> msg(op.smooth ? static_cast<size_t>(N) : 0);
        const float* total = op.total.data();
        const float* u = ud.data();
        const float* ms = op.smooth ? msg.data() : nullptr;
        for (int it = 0; it < iterations; ++it) {
            if (op.smooth) op.smooth->apply(q0, msg.data(), 1, op.ws, false, threads);
            if (op.grid) {
                op.grid->splat_blur(q0, op.norm.data(), 1, op.cells, threads);
                const float* n = op.norm.data();
                const float w = op.wa;
                op.grid->slice(op.cells, 1, threads, [=](int64_t v0, int64_t nx, const float* acc) {
                    for (int64_t x = 0; x < nx; ++x) {
                        const int64_t v = v0 + x;
                        const float m0 = (ms ? ms[v] : 0.0f) + w * n[v] * acc[x];
                        q0[v] = 1.0f / (1.0f + std::exp(-(u[v] + 2.0f * m0 - total[v])));
                    }
                });
            } else {
#pragma omp parallel for num_threads(threads) schedule(static)
                for (int64_t v = 0; v < N; ++v) q0[v] = 1.0f / (1.0f + std::exp(-(u[v] + 2.0f * ms[v] - total[v])));
            }
        }
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t v = 0; v < N; ++v) q[N + v] = 1.0f - q0[v];
}

// Q_v = softmax(logits) for one voxel, logits_l = -U_l + m_l, m_{K-1} = total - Σ_{l<K-1} m_l.
inline void softmax_voxel(float* q, const float* unary, int64_t K, int64_t N, int64_t v, const float* m, int64_t mstride,
                          float total, float* logits) {
    float rest = total;
    for (int64_t l = 0; l < K - 1; ++l) {
        const float ml = m ? m[l * mstride] : 0.0f;
        rest -= ml;
        logits[l] = -unary[l * N + v] + ml;
    }
    logits[K - 1] = -unary[(K - 1) * N + v] + (m ? rest : 0.0f);
    float mx = logits[0];
    for (int64_t l = 1; l < K; ++l) mx = std::max(mx, logits[l]);
    float sum = 0.0f;
    for (int64_t l = 0; l < K; ++l) sum += (logits[l] = std::exp(logits[l] - mx));
    const float inv = 1.0f / sum;
    for (int64_t l = 0; l < K; ++l) q[l * N + v] = logits[l] * inv;
}

void mean_field_many(const float* p, float* q, int64_t K, int64_t N, const Geometry& g, const float* image01,
                     int iterations, float floor_p, int threads) {
    std::vector<float> unary(static_cast<size_t>(K * N));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < K * N; ++i) unary[size_t(i)] = -std::log(std::max(p[i], floor_p));
    const float* u = unary.data();
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> logits(static_cast<size_t>(K));
#pragma omp for schedule(static)
        for (int64_t v = 0; v < N; ++v) softmax_voxel(q, u, K, N, v, nullptr, 0, 0.0f, logits.data());
    }
    if (iterations <= 0 || !(g.smooth_weight > 0 || g.appearance_weight > 0)) return;
    PairwiseOperator op(g, image01, threads);
    const int64_t C = K - 1;
    std::vector<float> msg(op.smooth ? static_cast<size_t>(C * N) : 0);
    const float* total = op.total.data();
    for (int it = 0; it < iterations; ++it) {
        if (op.smooth) op.smooth->apply(q, msg.data(), C, op.ws, false, threads);
        const float* ms = op.smooth ? msg.data() : nullptr;
        if (op.grid) {
            op.grid->splat_blur(q, op.norm.data(), C, op.cells, threads);
            const float* n = op.norm.data();
            const float w = op.wa;
            op.grid->slice(op.cells, C, threads, [=](int64_t v0, int64_t nx, const float* acc) {
                std::vector<float> m(static_cast<size_t>(C)), logits(static_cast<size_t>(K));
                for (int64_t x = 0; x < nx; ++x) {
                    const int64_t v = v0 + x;
                    for (int64_t l = 0; l < C; ++l) m[size_t(l)] = (ms ? ms[l * N + v] : 0.0f) + w * n[v] * acc[l * nx + x];
                    softmax_voxel(q, u, K, N, v, m.data(), 1, total[v], logits.data());
                }
            });
        } else {
#pragma omp parallel num_threads(threads)
            {
                std::vector<float> logits(static_cast<size_t>(K));
#pragma omp for schedule(static)
                for (int64_t v = 0; v < N; ++v) softmax_voxel(q, u, K, N, v, ms + v, N, total[v], logits.data());
            }
        }
    }
}

// ------------------------------------------------------------------ array plumbing
template <class T>
T* array_data(py::array& a, const char* name, std::vector<int64_t> shape = {}) {
    if (!py::isinstance<py::array_t<T>>(a) || !(a.flags() & py::array::c_style))
        throw std::invalid_argument(std::string("crf: ") + name + " must be a C-contiguous array of the kernel's dtype");
    if (!shape.empty()) {
        if (int64_t(a.ndim()) != int64_t(shape.size()))
            throw std::invalid_argument(std::string("crf: ") + name + " has the wrong number of dimensions");
        for (size_t i = 0; i < shape.size(); ++i)
            if (a.shape(py::ssize_t(i)) != shape[i]) throw std::invalid_argument(std::string("crf: ") + name + " has the wrong shape");
    }
    return static_cast<T*>(a.mutable_data());
}

std::vector<float> taps_of(py::array a, const char* name) {
    const float* p = array_data<float>(a, name);
    if (a.ndim() != 1 || a.shape(0) % 2 != 1) throw std::invalid_argument(std::string("crf: ") + name + " must have an odd length");
    return std::vector<float>(p, p + a.shape(0));
}

Geometry geometry_of(Dims dims, py::array tz, py::array ty, py::array tx, float smooth_weight, py::array scale,
                     py::array gshape, py::array blur, float appearance_weight) {
    Geometry g{dims, taps_of(tz, "taps_z"), taps_of(ty, "taps_y"), taps_of(tx, "taps_x"), smooth_weight, {}, {},
               taps_of(blur, "blur_taps"), appearance_weight};
    const double* s = array_data<double>(scale, "grid_scale", {4});
    const int64_t* gs = array_data<int64_t>(gshape, "grid_shape", {4});
    for (int i = 0; i < 4; ++i) {
        g.scale[i] = s[i];
        g.gshape[i] = gs[i];
        if (gs[i] < 2) throw std::invalid_argument("crf: grid_shape entries must be >= 2");
    }
    return g;
}

void mean_field(py::array prob, py::array image01, py::array out, py::array tz, py::array ty, py::array tx,
                float smooth_weight, py::array scale, py::array gshape, py::array blur, float appearance_weight,
                int iterations, float floor_p, int threads) {
    if (prob.ndim() != 4) throw std::invalid_argument("crf: probabilities must be (K, z, y, x)");
    const int64_t K = prob.shape(0);
    const Dims dims{prob.shape(1), prob.shape(2), prob.shape(3)};
    const float* p = array_data<float>(prob, "probabilities");
    const float* img = array_data<float>(image01, "image01", {dims.nz, dims.ny, dims.nx});
    float* q = array_data<float>(out, "out", {K, dims.nz, dims.ny, dims.nx});
    if (K < 2) throw std::invalid_argument("crf: needs at least 2 classes");
    const Geometry g = geometry_of(dims, tz, ty, tx, smooth_weight, scale, gshape, blur, appearance_weight);
    const int64_t N = dims.voxels();
    threads = threads_for(N * K, threads);
    py::gil_scoped_release release;
    if (K == 2)
        mean_field_two(p, q, N, g, img, iterations, floor_p, threads);
    else
        mean_field_many(p, q, K, N, g, img, iterations, floor_p, threads);
}

void messages(py::array values, py::array image01, py::array out, py::array tz, py::array ty, py::array tx,
              float smooth_weight, py::array scale, py::array gshape, py::array blur, float appearance_weight,
              int threads) {
    if (values.ndim() != 4) throw std::invalid_argument("crf: values must be (C, z, y, x)");
    const int64_t C = values.shape(0);
    const Dims dims{values.shape(1), values.shape(2), values.shape(3)};
    const float* v = array_data<float>(values, "values");
    const float* img = array_data<float>(image01, "image01", {dims.nz, dims.ny, dims.nx});
    float* o = array_data<float>(out, "out", {C, dims.nz, dims.ny, dims.nx});
    const Geometry g = geometry_of(dims, tz, ty, tx, smooth_weight, scale, gshape, blur, appearance_weight);
    threads = threads_for(C * dims.voxels(), threads);
    py::gil_scoped_release release;
    PairwiseOperator op(g, img, threads);
    op.apply(v, o, C, threads);
}

}  // namespace

PYBIND11_MODULE(crf, m) {
    m.doc() = "3D dense CRF mean-field inference (separable Gaussian + bilateral grid), OpenMP";
    m.def("mean_field", &mean_field, py::arg("probabilities"), py::arg("image01"), py::arg("out"), py::arg("taps_z"),
          py::arg("taps_y"), py::arg("taps_x"), py::arg("smooth_weight"), py::arg("grid_scale"), py::arg("grid_shape"),
          py::arg("blur_taps"), py::arg("appearance_weight"), py::arg("iterations"), py::arg("probability_floor"),
          py::arg("threads"),
          "Writes the marginals after `iterations` mean-field updates into out (K, z, y, x) float32; K >= 2.");
    m.def("messages", &messages, py::arg("values"), py::arg("image01"), py::arg("out"), py::arg("taps_z"),
          py::arg("taps_y"), py::arg("taps_x"), py::arg("smooth_weight"), py::arg("grid_scale"), py::arg("grid_shape"),
          py::arg("blur_taps"), py::arg("appearance_weight"), py::arg("threads"),
          "out = sum_m w_m N_m values for C fields (C, z, y, x): the pairwise operator alone.");
}
