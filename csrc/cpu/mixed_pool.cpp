// Mixed max/average pooling, forward and backward fused (CPU, OpenMP).
//
// For each pooling window w of channel c:   y = α_c · max(w) + (1 - α_c) · mean(w)
// Forward: one sweep over each window computes the maximum, its first position in scan order
// (z, y, x; a NaN wins and propagates, as in PyTorch's max pooling), and the sum. The position is
// stored as a byte (the offset inside the window, so windows up to 255 elements), and, when α is
// learned, max - mean is stored for α's gradient.
// Backward: ∂L/∂x_i = Σ_{windows o ∋ i} g_o · ((1 - α_c)/|w| + α_c · [i = argmax_o]),
//           ∂L/∂α_c = Σ_o g_o · (max_o - mean_o)   (summed here per (n, c) plane).
// When the windows tile the input exactly (kernel = stride, as in a U-Net's downsampling) every
// input element is written once, in parallel over (plane, output slice); otherwise each plane is
// zeroed and accumulated by one thread.
// Arrays: x (P, D, H, W) with P = N·C planes (2D pooling: D = 1, kernel and stride 1 along z).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

struct Shape {
    int64_t P, D, H, W;     // input planes and extent
    int64_t oD, oH, oW;     // output extent
    int64_t kd, kh, kw;     // window
    int64_t sd, sh, sw;     // stride
    int64_t C;              // channels (α per channel: plane p has channel p % C)
    int64_t window() const { return kd * kh * kw; }
    bool tiles() const { return kd == sd && kh == sh && kw == sw; }
};

template <class T>
T* data_of(const py::handle& h, const char* name, const std::vector<int64_t>& shape) {
    py::array a = py::reinterpret_borrow<py::array>(h);
    if (!py::isinstance<py::array_t<T>>(a) || !(a.flags() & py::array::c_style))
        throw std::invalid_argument(std::string("mixed_pool: ") + name + " must be a C-contiguous array of the op's dtype");
    if (a.ndim() != py::ssize_t(shape.size())) throw std::invalid_argument(std::string("mixed_pool: ") + name + " has the wrong rank");
    for (size_t i = 0; i < shape.size(); ++i)
        if (a.shape(py::ssize_t(i)) != shape[i]) throw std::invalid_argument(std::string("mixed_pool: ") + name + " has the wrong shape");
    return static_cast<T*>(a.mutable_data());
}

Shape shape_of(const py::array& x, int64_t C, const std::vector<int64_t>& k, const std::vector<int64_t>& s) {
    if (x.ndim() != 4) throw std::invalid_argument("mixed_pool: x must be (planes, D, H, W)");
    if (k.size() != 3 || s.size() != 3) throw std::invalid_argument("mixed_pool: kernel and stride need 3 entries");
    Shape sh{x.shape(0), x.shape(1), x.shape(2), x.shape(3), 0, 0, 0, k[0], k[1], k[2], s[0], s[1], s[2], C};
    for (int i = 0; i < 3; ++i)
        if (k[size_t(i)] < 1 || s[size_t(i)] < 1) throw std::invalid_argument("mixed_pool: kernel and stride must be >= 1");
    if (sh.window() > 255) throw std::invalid_argument("mixed_pool: windows of more than 255 elements are not supported");
    if (sh.D < sh.kd || sh.H < sh.kh || sh.W < sh.kw) throw std::invalid_argument("mixed_pool: input smaller than the window");
    if (C < 1 || sh.P % C != 0) throw std::invalid_argument("mixed_pool: planes must be a multiple of the channels");
    sh.oD = (sh.D - sh.kd) / sh.sd + 1;
    sh.oH = (sh.H - sh.kh) / sh.sh + 1;
    sh.oW = (sh.W - sh.kw) / sh.sw + 1;
    return sh;
}

// Small tensors run on one thread: on a busy machine an OpenMP barrier can wait a whole
// scheduler slice for a descheduled partner, far longer than the work.
int threads_for(int64_t elements, int threads) { return elements < (int64_t(1) << 17) ? 1 : std::max(1, threads); }

// ------------------------------------------------------------------ forward
// One output row (plane p, slice od, row oh): running max / argmax / sum over the window, kept in
// row buffers so the inner loop runs along ow and vectorises.
template <class T, int SW>
void forward_row(const T* x, const Shape& s, int64_t p, int64_t od, int64_t oh, T alpha, T* y, uint8_t* arg, T* diff,
                 T* best, T* sum, uint8_t* idx) {
    const int64_t oW = s.oW, sw = SW > 0 ? SW : s.sw;
    const T inv = T(1) / T(s.window());
    bool first = true;
    uint8_t k = 0;
    for (int64_t dz = 0; dz < s.kd; ++dz) {
        for (int64_t dy = 0; dy < s.kh; ++dy) {
            const T* row = x + ((p * s.D + od * s.sd + dz) * s.H + oh * s.sh + dy) * s.W;
            for (int64_t dx = 0; dx < s.kw; ++dx, ++k) {
                const T* r = row + dx;
                if (first) {
                    for (int64_t o = 0; o < oW; ++o) {
                        best[o] = r[o * sw];
                        sum[o] = r[o * sw];
                        idx[o] = 0;
                    }
                    first = false;
                    continue;
                }
                for (int64_t o = 0; o < oW; ++o) {
                    const T v = r[o * sw];
                    const bool take = (v > best[o]) | (v != v);
                    best[o] = take ? v : best[o];
                    idx[o] = take ? k : idx[o];
                    sum[o] += v;
                }
            }
        }
    }
    const int64_t base = ((p * s.oD + od) * s.oH + oh) * oW;
    for (int64_t o = 0; o < oW; ++o) {
        const T mean = sum[o] * inv;
        y[base + o] = alpha * best[o] + (T(1) - alpha) * mean;
        arg[base + o] = idx[o];
    }
    if (diff)
        for (int64_t o = 0; o < oW; ++o) diff[base + o] = best[o] - sum[o] * inv;
}

template <class T>
void forward_impl(py::array x, py::array alpha, const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                  py::array out, py::array argmax, py::object diff, int threads) {
    const Shape s = shape_of(x, alpha.ndim() == 1 ? alpha.shape(0) : 0, kernel, stride);
    const T* xp = data_of<T>(x, "x", {s.P, s.D, s.H, s.W});
    const T* ap = data_of<T>(alpha, "alpha", {s.C});
    T* yp = data_of<T>(out, "out", {s.P, s.oD, s.oH, s.oW});
    uint8_t* ip = data_of<uint8_t>(argmax, "argmax", {s.P, s.oD, s.oH, s.oW});
    T* dp = diff.is_none() ? nullptr : data_of<T>(diff, "diff", {s.P, s.oD, s.oH, s.oW});
    py::gil_scoped_release release;
    threads = threads_for(s.P * s.D * s.H * s.W, threads);
#pragma omp parallel num_threads(threads)
    {
        std::vector<T> best(static_cast<size_t>(s.oW)), sum(static_cast<size_t>(s.oW));
        std::vector<uint8_t> idx(static_cast<size_t>(s.oW));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < s.P * s.oD; ++t) {
            const int64_t p = t / s.oD, od = t % s.oD;
            for (int64_t oh = 0; oh < s.oH; ++oh) {
                // A compile-time stride of 2 (the usual downsampling) lets the row loops vectorise.
                if (s.sw == 2)
                    forward_row<T, 2>(xp, s, p, od, oh, ap[p % s.C], yp, ip, dp, best.data(), sum.data(), idx.data());
                else
                    forward_row<T, 0>(xp, s, p, od, oh, ap[p % s.C], yp, ip, dp, best.data(), sum.data(), idx.data());
            }
        }
    }
}

// ------------------------------------------------------------------ backward
// Windows tile the input: task (plane, od) owns input slices [od·sd, od·sd + sd) and writes every
// element there once (the share of the mean, then the max's share on top), zeros where no window
// reaches (right and bottom remainders), and the last task also zeros the trailing slices.
// Input offset of each window position k from the window's first element (no divisions per output).
std::vector<int64_t> window_offsets(const Shape& s) {
    std::vector<int64_t> off;
    for (int64_t dz = 0; dz < s.kd; ++dz)
        for (int64_t dy = 0; dy < s.kh; ++dy)
            for (int64_t dx = 0; dx < s.kw; ++dx) off.push_back((dz * s.H + dy) * s.W + dx);
    return off;
}

template <class T>
void backward_tiled(const T* g, const uint8_t* arg, const T* alpha, const Shape& s, T* gx, int threads) {
    const T inv = T(1) / T(s.window());
    const int64_t HW = s.H * s.W;
    const std::vector<int64_t> offsets = window_offsets(s);
    const int64_t* off = offsets.data();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < s.P * s.oD; ++t) {
        const int64_t p = t / s.oD, od = t % s.oD;
        const T a = alpha[p % s.C];
        const T share = (T(1) - a) * inv;
        for (int64_t dz = 0; dz < s.kd; ++dz) {
            T* slice = gx + (p * s.D + od * s.sd + dz) * HW;
            for (int64_t oh = 0; oh < s.oH; ++oh) {
                const T* grow = g + ((p * s.oD + od) * s.oH + oh) * s.oW;
                for (int64_t dy = 0; dy < s.kh; ++dy) {
                    T* row = slice + (oh * s.sh + dy) * s.W;
                    if (s.kw == 2) {
                        for (int64_t o = 0; o < s.oW; ++o) {
                            const T v = grow[o] * share;
                            row[2 * o] = v;
                            row[2 * o + 1] = v;
                        }
                    } else {
                        for (int64_t o = 0; o < s.oW; ++o) {
                            const T v = grow[o] * share;
                            for (int64_t dx = 0; dx < s.kw; ++dx) row[o * s.kw + dx] = v;
                        }
                    }
                    std::fill(row + s.oW * s.kw, row + s.W, T(0));
                }
            }
            std::fill(slice + s.oH * s.kh * s.W, slice + HW, T(0));
        }
        // The max's share, on top of the mean's (the slab is still in cache).
        for (int64_t oh = 0; oh < s.oH; ++oh) {
            const int64_t ob = ((p * s.oD + od) * s.oH + oh) * s.oW;
            T* corner = gx + (p * s.D + od * s.sd) * HW + oh * s.sh * s.W;
            for (int64_t o = 0; o < s.oW; ++o) corner[o * s.sw + off[arg[ob + o]]] += a * g[ob + o];
        }
        if (od == s.oD - 1)
            std::fill(gx + (p * s.D + s.oD * s.sd) * HW, gx + (p + 1) * s.D * HW, T(0));
    }
}

// General windows (overlapping or with gaps): one thread per plane, zero then accumulate.
template <class T>
void backward_general(const T* g, const uint8_t* arg, const T* alpha, const Shape& s, T* gx, int threads) {
    const T inv = T(1) / T(s.window());
    const int64_t HW = s.H * s.W;
    const std::vector<int64_t> offsets = window_offsets(s);
    const int64_t* off = offsets.data();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < s.P; ++p) {
        T* plane = gx + p * s.D * HW;
        std::fill(plane, plane + s.D * HW, T(0));
        const T a = alpha[p % s.C];
        for (int64_t od = 0; od < s.oD; ++od)
            for (int64_t oh = 0; oh < s.oH; ++oh)
                for (int64_t ow = 0; ow < s.oW; ++ow) {
                    const int64_t o = ((p * s.oD + od) * s.oH + oh) * s.oW + ow;
                    const T share = g[o] * (T(1) - a) * inv;
                    T* corner = plane + (od * s.sd) * HW + (oh * s.sh) * s.W + ow * s.sw;
                    for (int64_t dz = 0; dz < s.kd; ++dz)
                        for (int64_t dy = 0; dy < s.kh; ++dy)
                            for (int64_t dx = 0; dx < s.kw; ++dx) corner[dz * HW + dy * s.W + dx] += share;
                    corner[off[arg[o]]] += a * g[o];
                }
    }
}

template <class T>
void backward_impl(py::array grad_out, py::array argmax, py::array alpha, const std::vector<int64_t>& kernel,
                   const std::vector<int64_t>& stride, py::array grad_in, py::object diff, py::object grad_alpha,
                   int threads) {
    const Shape s = shape_of(grad_in, alpha.ndim() == 1 ? alpha.shape(0) : 0, kernel, stride);
    const T* gp = data_of<T>(grad_out, "grad_out", {s.P, s.oD, s.oH, s.oW});
    const uint8_t* ip = data_of<uint8_t>(argmax, "argmax", {s.P, s.oD, s.oH, s.oW});
    const T* ap = data_of<T>(alpha, "alpha", {s.C});
    T* gx = data_of<T>(grad_in, "grad_in", {s.P, s.D, s.H, s.W});
    const T* dp = diff.is_none() ? nullptr : data_of<T>(diff, "diff", {s.P, s.oD, s.oH, s.oW});
    double* ga = grad_alpha.is_none() ? nullptr : data_of<double>(grad_alpha, "grad_alpha", {s.P});
    if (ga && !dp) throw std::invalid_argument("mixed_pool: grad_alpha needs the diff saved by the forward pass");
    py::gil_scoped_release release;
    threads = threads_for(s.P * s.D * s.H * s.W, threads);
    if (s.tiles()) {
        backward_tiled(gp, ip, ap, s, gx, threads);
    } else {
        backward_general(gp, ip, ap, s, gx, threads);
    }
    if (ga) {
        const int64_t per = s.oD * s.oH * s.oW;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t p = 0; p < s.P; ++p) {
            double acc = 0.0;
            for (int64_t i = p * per; i < (p + 1) * per; ++i) acc += double(gp[i]) * double(dp[i]);
            ga[p] = acc;
        }
    }
}

void forward(py::array x, py::array alpha, std::vector<int64_t> kernel, std::vector<int64_t> stride, py::array out,
             py::array argmax, py::object diff, int threads) {
    if (py::isinstance<py::array_t<float>>(x)) return forward_impl<float>(x, alpha, kernel, stride, out, argmax, diff, threads);
    if (py::isinstance<py::array_t<double>>(x)) return forward_impl<double>(x, alpha, kernel, stride, out, argmax, diff, threads);
    throw std::invalid_argument("mixed_pool: x must be float32 or float64");
}

void backward(py::array grad_out, py::array argmax, py::array alpha, std::vector<int64_t> kernel,
              std::vector<int64_t> stride, py::array grad_in, py::object diff, py::object grad_alpha, int threads) {
    if (py::isinstance<py::array_t<float>>(grad_in))
        return backward_impl<float>(grad_out, argmax, alpha, kernel, stride, grad_in, diff, grad_alpha, threads);
    if (py::isinstance<py::array_t<double>>(grad_in))
        return backward_impl<double>(grad_out, argmax, alpha, kernel, stride, grad_in, diff, grad_alpha, threads);
    throw std::invalid_argument("mixed_pool: grad_in must be float32 or float64");
}

}  // namespace

PYBIND11_MODULE(mixed_pool, m) {
    m.doc() = "Mixed max/average pooling, fused forward and backward (OpenMP)";
    m.def("forward", &forward, py::arg("x"), py::arg("alpha"), py::arg("kernel"), py::arg("stride"), py::arg("out"),
          py::arg("argmax"), py::arg("diff"), py::arg("threads"),
          "out = alpha*max + (1-alpha)*mean per window; argmax (uint8 offset in the window); diff = max - mean or None.");
    m.def("backward", &backward, py::arg("grad_out"), py::arg("argmax"), py::arg("alpha"), py::arg("kernel"),
          py::arg("stride"), py::arg("grad_in"), py::arg("diff"), py::arg("grad_alpha"), py::arg("threads"),
          "Writes grad_in (every element) and, when given, grad_alpha per plane (float64).");
}
