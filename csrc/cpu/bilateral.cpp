// Exact 3D bilateral filter: the function ITK's BilateralImageFilter computes, without its
// quantised range table.
//
//   out(v) = sum_q w(v,q) I(q) / sum_q w(v,q)        q in a (2rz+1) x (2ry+1) x (2rx+1) window
//   w(v,q) = exp(-sum_i ((v_i - q_i) spacing_i / sigma_d,i)^2 / 2) * exp(-(I(v) - I(q))^2 / (2 sigma_r^2))
//
// The window radius per axis is ceil(2.5 sigma_d,i / spacing_i) (computed by the caller, as ITK
// does); a neighbour outside the volume takes the value of the nearest voxel on each axis
// (zero-flux Neumann, ITK's default boundary condition).
//
// Algorithm
// ---------
// The weight of a pair is symmetric, w(p,q) = w(q,p), so each unordered pair is visited once:
// for every voxel p and every offset o in the forward half of the window (after the centre in
// scan order) r = w(p, p+o) is computed once and added to both ends. This halves the number of
// exponentials, which dominate the cost. The spatial factor is folded into the exponent,
// r = 2^-(c d^2 + s_o), with s_o precomputed per offset, and 2^-t is evaluated on SIMD vectors
// with a degree-5 polynomial (relative error below 3e-7, i.e. float rounding).
// Sums are kept relative to the centre value, num(v) = sum w (I(q) - I(v)), so float32
// accumulation loses nothing to large intensities: out(v) = I(v) + num(v) / (1 + den(v)).
//
// Data flow: each thread takes slabs of z-slices. It sweeps the p-slices of its slab in order,
// keeping a ring of (rz+1) padded float copies of the input (replicated borders) and a ring of
// (rz+1) accumulator slices; once the sweep has passed a slice, its sums are complete and it
// is normalised into the output. For one p-row and one row offset (dz, dy), phase 1 computes r
// for every dx along the row (keeping the p-side sums in registers and storing r and r*d), and
// phase 2, running a few columns behind while those values are still in L1, adds them, shifted
// by dx, into the q-row. The vector code uses GCC/Clang vector extensions (AVX-512 intrinsics
// for round/scale where available), so it builds for any target. The sweep starts rz slices
// before the slab, and covers ry rows and rx columns outside the volume (on the replicated
// values), so that sums of voxels next to a slab or volume border are complete too.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#if defined(__AVX__)
// GCC 12 warns about its own intrinsics' undefined-value idiom under -Wall; nothing is uninitialised.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

// The SIMD helpers below pass vectors by value inside this file only; their ABI never crosses it.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace {

// SIMD width: 16 floats with AVX-512, 8 otherwise (AUTOLIVER_SIMD_WIDTH overrides). The code is
// written with GCC/Clang vector extensions, so it compiles for any target.
#ifndef AUTOLIVER_SIMD_WIDTH
#if defined(__AVX512F__)
#define AUTOLIVER_SIMD_WIDTH 16
#else
#define AUTOLIVER_SIMD_WIDTH 8
#endif
#endif
#if AUTOLIVER_SIMD_WIDTH == 16 && defined(__AVX512F__)
#define SIMD16 1
#else
#define SIMD16 0
#endif
#if AUTOLIVER_SIMD_WIDTH == 8 && defined(__AVX__)
#define SIMD8 1
#else
#define SIMD8 0
#endif
constexpr int W = AUTOLIVER_SIMD_WIDTH;
typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));
typedef float vf_u __attribute__((vector_size(W * 4), aligned(4), may_alias));

inline vf load(const float* p) { return *reinterpret_cast<const vf_u*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf_u*>(p) = v; }
inline vf splat(float x) { return vf{} + x; }

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// max(a, b), round to nearest integer, and p * 2^n (n integral): one instruction each where the
// target has it, plain vector code otherwise.
inline vf vmax(vf a, vf b) {
#if SIMD16
  return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#elif SIMD8
  return (vf)_mm256_max_ps((__m256)a, (__m256)b);
#else
  return a > b ? a : b;
#endif
}
inline vf vround(vf a) {
#if SIMD16
  return (vf)_mm512_roundscale_ps((__m512)a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#elif SIMD8
  return (vf)_mm256_round_ps((__m256)a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds (|a| < 2^22)
  return (a + magic) - magic;
#endif
}
inline vf vscale2(vf p, vf n) {  // n in [-200, 0]
#if SIMD16
  return (vf)_mm512_scalef_ps((__m512)p, (__m512)n);
#elif SIMD8 && defined(__AVX512VL__)
  return (vf)_mm256_scalef_ps((__m256)p, (__m256)n);
#endif
  const vf nn = vmax(n, splat(-126.0f));  // keep the exponent field in range
  const vi e = (__builtin_convertvector(nn, vi) + 127) << 23;
  return p * (vf)e;
}

// 2^u for u <= 0, as 2^n * 2^f with n = round(u) and a degree-5 polynomial for 2^f, f in
// [-0.5, 0.5] (relative error < 3e-7). u is floored at -200 (2^-200 is 0 in float) so that huge
// differences stay finite.
inline vf exp2_nonpos(vf u) {
  u = vmax(u, splat(-200.0f));
  const vf n = vround(u);
  const vf f = u - n;
  vf p = splat(1.3276470126584172e-3f);
  p = p * f + 9.675541892647743e-3f;
  p = p * f + 5.550713464617729e-2f;
  p = p * f + 2.4022120237350464e-1f;
  p = p * f + 6.931469440460205e-1f;
  p = p * f + 1.0000001192092896f;
  return vscale2(p, n);
}

// A float buffer whose data() is aligned to 64 bytes (a cache line).
class AlignedFloats {
 public:
  void assign(size_t n, float v) {
    storage_.assign(n + 16, v);
    const uintptr_t addr = reinterpret_cast<uintptr_t>(storage_.data());
    ptr_ = storage_.data() + ((64 - addr % 64) % 64) / sizeof(float);
  }
  float* data() { return ptr_; }
  const float* data() const { return ptr_; }

 private:
  std::vector<float> storage_;
  float* ptr_ = nullptr;
};

struct Params {
  int Z, Y, X;
  int rz, ry, rx;
  float c;           // log2(e) / (2 sigma_r^2)
  float az, ay, ax;  // log2(e) spacing_i^2 / (2 sigma_d,i^2)
};

// Per-thread working memory (allocated once per thread, reused across slabs).
struct Workspace {
  const Params& P;
  int64_t Xs, Yp, slice_len;  // padded input slice: Yp rows of Xs floats, columns [-2rx, Xs - 2rx)
  int64_t Xa;                 // accumulator row: columns [-rx, Xa - rx) (the margins take p-side sums of
                              // columns outside the volume, which are never read)
  int64_t Xr;                 // r-buffer row: p columns [-rx, Xr - rx)
  int ring;                   // rz + 1 slices in each ring
  AlignedFloats in_ring, num_ring, den_ring, r_buf, rd_buf;
  std::vector<int> in_slice_id;  // which z each input ring entry holds (INT32_MIN: none)

  explicit Workspace(const Params& p) : P(p) {
    Xs = round_up(P.X + 4 * P.rx + 2 * W, W);
    Yp = P.Y + 4 * P.ry;
    slice_len = Xs * Yp;
    Xa = round_up(P.X + 2 * P.rx + 2 * W, W);
    Xr = Xa;
    ring = P.rz + 1;
    in_ring.assign(static_cast<size_t>(slice_len) * ring, 0.0f);
    num_ring.assign(static_cast<size_t>(Xa) * P.Y * ring, 0.0f);
    den_ring.assign(static_cast<size_t>(Xa) * P.Y * ring, 0.0f);
    r_buf.assign(static_cast<size_t>(Xr) * (2 * P.rx + 1), 0.0f);
    rd_buf.assign(static_cast<size_t>(Xr) * (2 * P.rx + 1), 0.0f);
    in_slice_id.assign(ring, INT32_MIN);
  }
  int slot(int z) const { return ((z % ring) + ring) % ring; }
  // Padded input row y (may be outside [0, Y)) of slice z, pointing at column x = 0.
  const float* in_row(int z, int y) const {
    return in_ring.data() + slot(z) * slice_len + (y + 2 * P.ry) * Xs + 2 * P.rx;
  }
  float* num_row(int z, int y) { return num_ring.data() + (static_cast<int64_t>(slot(z)) * P.Y + y) * Xa + P.rx; }
  float* den_row(int z, int y) { return den_ring.data() + (static_cast<int64_t>(slot(z)) * P.Y + y) * Xa + P.rx; }

  template <typename T>
  void load_slice(const T* in, int z) {
    const int s = slot(z);
    if (in_slice_id[s] == z) return;
    in_slice_id[s] = z;
    float* dst = in_ring.data() + s * slice_len;
    const int zc = clampi(z, 0, P.Z - 1);
    const int x_lo = -2 * P.rx;
    const int64_t x_hi = Xs - 2 * P.rx;  // exclusive
    for (int64_t yy = 0; yy < Yp; ++yy) {
      const int y = clampi(static_cast<int>(yy) - 2 * P.ry, 0, P.Y - 1);
      const T* src = in + (static_cast<int64_t>(zc) * P.Y + y) * P.X;
      float* row = dst + yy * Xs;
      const float first = static_cast<float>(src[0]);
      const float last = static_cast<float>(src[P.X - 1]);
      for (int x = x_lo; x < 0; ++x) row[x - x_lo] = first;
      for (int x = 0; x < P.X; ++x) row[x - x_lo] = static_cast<float>(src[x]);
      for (int64_t x = P.X; x < x_hi; ++x) row[x - x_lo] = last;
    }
  }
};

// All pairs between p-row `prow` and q-row `qrow` (pointers at column 0) for dx in
// [dx_lo, dx_hi]. Phase 1 (per vector of p columns): r = 2^-(c d^2 + s_dx), d = I(p) - I(p+dx),
// stored as r and r*d in row dx + rx of the r-buffers; with PSIDE the p-side sums go straight
// into num_p/den_p. With QSIDE, phase 2 follows rx columns behind, while the values are still
// in L1: q column x' gets the pair values computed at p columns x' - dx.
template <bool PSIDE, bool QSIDE>
inline void row_pairs(const Params& P, const float* prow, const float* qrow, int dx_lo, int dx_hi, const float* s_dx,
                      float* r_buf, float* rd_buf, int64_t Xr, float* num_p, float* den_p, float* num_q,
                      float* den_q) {
  const vf neg_c = splat(-P.c);
  const int rx = P.rx;
  // q columns [0, X) need p columns [-rx, X + rx); the p-side alone needs [0, X).
  const int x_begin = QSIDE ? -rx : 0;
  const int x_end = QSIDE ? P.X + rx : P.X;
  int xq = 0;
  auto q_vector = [&](int x) {
    vf nsum = splat(0.0f), dsum = splat(0.0f);
    const float* rb = r_buf + (dx_lo + rx) * Xr + x - dx_lo + rx;
    const float* rdb = rd_buf + (dx_lo + rx) * Xr + x - dx_lo + rx;
    for (int dx = dx_lo; dx <= dx_hi; ++dx, rb += Xr - 1, rdb += Xr - 1) {
      nsum += load(rdb);
      dsum += load(rb);
    }
    store(num_q + x, load(num_q + x) + nsum);
    store(den_q + x, load(den_q + x) + dsum);
  };
  for (int x = x_begin; x < x_end; x += W) {
    const vf vp = load(prow + x);
    vf nsum = splat(0.0f), dsum = splat(0.0f);
    const float* qx = qrow + x + dx_lo;
    float* rb = r_buf + (dx_lo + rx) * Xr + x + rx;
    float* rdb = rd_buf + (dx_lo + rx) * Xr + x + rx;
    for (int dx = dx_lo; dx <= dx_hi; ++dx, ++qx, rb += Xr, rdb += Xr) {
      const vf d = vp - load(qx);
      const vf r = exp2_nonpos(neg_c * d * d - s_dx[dx + rx]);
      const vf rd = r * d;
      // Stored even without a q-side pass: the store keeps r * d a separately rounded product
      // in every variant (no fused multiply-add), so results do not depend on the slab split.
      store(rb, r);
      store(rdb, rd);
      if (PSIDE) {
        nsum -= rd;
        dsum += r;
      }
    }
    if (PSIDE) {
      store(num_p + x, load(num_p + x) + nsum);
      store(den_p + x, load(den_p + x) + dsum);
    }
    if (QSIDE) {
      // p columns < x + W are done; q vector x' needs p columns up to x' + W - 1 + rx.
      for (; xq < P.X && xq + rx <= x; xq += W) q_vector(xq);
    }
  }
  if (QSIDE)
    for (; xq < P.X; xq += W) q_vector(xq);
}

template <typename T>
void filter_slab(const T* in, float* out, const Params& P, Workspace& ws, int z0, int z1) {
  std::vector<float> s_dx(2 * P.rx + 1);
  for (int pz = z0 - P.rz; pz < z1; ++pz) {
    // Input slices pz .. pz+rz in the ring; a fresh accumulator slice for pz+rz.
    for (int z = pz; z <= pz + P.rz; ++z) ws.load_slice(in, z);
    const int znew = pz + P.rz;
    if (znew >= z0 && znew < z1) {
      std::fill_n(ws.num_row(znew, 0) - P.rx, ws.Xa * P.Y, 0.0f);
      std::fill_n(ws.den_row(znew, 0) - P.rx, ws.Xa * P.Y, 0.0f);
    }
    const bool p_slice_inside = pz >= z0 && pz < z1;
    for (int y = -P.ry; y < P.Y + P.ry; ++y) {
      const bool p_side = p_slice_inside && y >= 0 && y < P.Y;
      const float* prow = ws.in_row(pz, y);
      for (int dz = 0; dz <= P.rz; ++dz) {
        const int qz = pz + dz;
        const bool q_slice_inside = qz >= z0 && qz < z1;
        for (int dy = (dz == 0 ? 0 : -P.ry); dy <= P.ry; ++dy) {
          const int qy = y + dy;
          const bool q_side = q_slice_inside && qy >= 0 && qy < P.Y;
          const int dx_lo = (dz == 0 && dy == 0) ? 1 : -P.rx;
          const int dx_hi = P.rx;
          if ((!p_side && !q_side) || dx_lo > dx_hi) continue;
          const float s_zy = P.az * dz * dz + P.ay * dy * dy;
          for (int dx = -P.rx; dx <= P.rx; ++dx) s_dx[dx + P.rx] = s_zy + P.ax * dx * dx;
          const float* qrow = ws.in_row(qz, qy);
          float* rb = ws.r_buf.data();
          float* rdb = ws.rd_buf.data();
          float* np = p_side ? ws.num_row(pz, y) : nullptr;
          float* dp = p_side ? ws.den_row(pz, y) : nullptr;
          float* nq = q_side ? ws.num_row(qz, qy) : nullptr;
          float* dq = q_side ? ws.den_row(qz, qy) : nullptr;
          if (p_side && q_side)
            row_pairs<true, true>(P, prow, qrow, dx_lo, dx_hi, s_dx.data(), rb, rdb, ws.Xr, np, dp, nq, dq);
          else if (p_side)
            row_pairs<true, false>(P, prow, qrow, dx_lo, dx_hi, s_dx.data(), rb, rdb, ws.Xr, np, dp, nq, dq);
          else
            row_pairs<false, true>(P, prow, qrow, dx_lo, dx_hi, s_dx.data(), rb, rdb, ws.Xr, np, dp, nq, dq);
        }
      }
    }
    // Slice pz is complete: normalise it into the output.
    if (p_slice_inside) {
      for (int y = 0; y < P.Y; ++y) {
        const float* v = ws.in_row(pz, y);
        const float* num = ws.num_row(pz, y);
        const float* den = ws.den_row(pz, y);
        float* o = out + (static_cast<int64_t>(pz) * P.Y + y) * P.X;
        for (int x = 0; x < P.X; ++x) o[x] = v[x] + num[x] / (1.0f + den[x]);
      }
    }
  }
}

template <typename T>
void filter(const T* in, float* out, const Params& P, int threads) {
  threads = std::max(1, std::min(threads, P.Z));
  // Slabs: a few per thread so a busy core does not hold the others up; each slab re-sweeps rz
  // slices before it, so slabs stay several times longer than that.
  int nslabs = 1;
  if (threads > 1) {
    const int min_len = 4 * (P.rz + 1);
    nslabs = std::max(1, std::min(4 * threads, P.Z / min_len));
    nslabs = std::max(nslabs, std::min(threads, P.Z));
  }
  const int64_t base = P.Z / nslabs, extra = P.Z % nslabs;
#pragma omp parallel num_threads(threads)
  {
    Workspace ws(P);
#pragma omp for schedule(dynamic, 1)
    for (int s = 0; s < nslabs; ++s) {
      const int z0 = static_cast<int>(s * base + std::min<int64_t>(s, extra));
      const int z1 = static_cast<int>(z0 + base + (s < extra ? 1 : 0));
      std::fill(ws.in_slice_id.begin(), ws.in_slice_id.end(), INT32_MIN);
      filter_slab(in, out, P, ws, z0, z1);
    }
  }
}

template <typename T>
py::array_t<float> run(const py::array& volume, const Params& P, int threads) {
  py::array_t<float> out({static_cast<py::ssize_t>(P.Z), static_cast<py::ssize_t>(P.Y),
                          static_cast<py::ssize_t>(P.X)});
  const T* in = static_cast<const T*>(volume.data());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    filter<T>(in, o, P, threads);
  }
  return out;
}

py::array_t<float> bilateral3d(const py::array& volume, std::vector<int> radius_zyx, std::vector<double> spacing_zyx,
                               std::vector<double> domain_sigma_zyx, double range_sigma, int threads) {
  if (volume.ndim() != 3) throw std::invalid_argument("bilateral3d: volume must be 3D (z, y, x)");
  if (!(volume.flags() & py::array::c_style)) throw std::invalid_argument("bilateral3d: volume must be C-contiguous");
  if (radius_zyx.size() != 3 || spacing_zyx.size() != 3 || domain_sigma_zyx.size() != 3)
    throw std::invalid_argument("bilateral3d: radius, spacing and domain sigma need 3 values (z, y, x)");
  if (!(range_sigma > 0)) throw std::invalid_argument("bilateral3d: range sigma must be > 0");
  const double log2e = 1.4426950408889634;
  Params P;
  P.Z = static_cast<int>(volume.shape(0));
  P.Y = static_cast<int>(volume.shape(1));
  P.X = static_cast<int>(volume.shape(2));
  P.rz = radius_zyx[0];
  P.ry = radius_zyx[1];
  P.rx = radius_zyx[2];
  if (P.rz < 0 || P.ry < 0 || P.rx < 0) throw std::invalid_argument("bilateral3d: radius must be >= 0");
  for (int i = 0; i < 3; ++i)
    if (!(spacing_zyx[i] > 0) || !(domain_sigma_zyx[i] > 0))
      throw std::invalid_argument("bilateral3d: spacing and domain sigma must be > 0");
  P.c = static_cast<float>(log2e / (2.0 * range_sigma * range_sigma));
  auto a = [&](int i) {
    const double u = spacing_zyx[i] / domain_sigma_zyx[i];
    return static_cast<float>(log2e * 0.5 * u * u);
  };
  P.az = a(0);
  P.ay = a(1);
  P.ax = a(2);
  if (P.Z == 0 || P.Y == 0 || P.X == 0)
    return py::array_t<float>({static_cast<py::ssize_t>(P.Z), static_cast<py::ssize_t>(P.Y),
                               static_cast<py::ssize_t>(P.X)});
  const auto kind = volume.dtype().kind();
  const auto size = volume.dtype().itemsize();
  if (volume.dtype().byteorder() == '>')
    throw std::invalid_argument("bilateral3d: volume must have native byte order");
  if (kind == 'i' && size == 2) return run<int16_t>(volume, P, threads);
  if (kind == 'f' && size == 4) return run<float>(volume, P, threads);
  if (kind == 'u' && size == 1) return run<uint8_t>(volume, P, threads);
  if (kind == 'i' && size == 1) return run<int8_t>(volume, P, threads);
  if (kind == 'u' && size == 2) return run<uint16_t>(volume, P, threads);
  if (kind == 'i' && size == 4) return run<int32_t>(volume, P, threads);
  if (kind == 'f' && size == 8) return run<double>(volume, P, threads);
  throw std::invalid_argument("bilateral3d: unsupported dtype");
}

}  // namespace

PYBIND11_MODULE(bilateral, m) {
  m.doc() = "Exact 3D bilateral filter (ITK semantics, zero-flux borders), OpenMP + SIMD";
  m.def("bilateral3d", &bilateral3d, py::arg("volume"), py::arg("radius_zyx"), py::arg("spacing_zyx"),
        py::arg("domain_sigma_zyx"), py::arg("range_sigma"), py::arg("threads") = 1,
        "Bilateral filter of a C-contiguous native-endian (z, y, x) volume; returns float32.");
  m.attr("simd_width") = W;
}
