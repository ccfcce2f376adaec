// Connected components of 2D/3D binary or multi-label arrays (6/18/26-connectivity in 3D,
// 4/8 in 2D as the in-plane part of 6/26), labels numbered 1..n in raster-scan order of each
// component's first voxel (the order scipy.ndimage.label uses), plus per-component filters
// (keep the largest, drop small ones) and per-label statistics.
//
// Algorithm: run-based union-find.
//  1. Runs. Every row (z, y) is cut into runs: maximal segments [x0, x1) of equal nonzero value
//     (of nonzero values, in binary mode). Voxels of one run are connected by construction, so
//     the rest of the algorithm works on runs, not voxels. Masks of organs and lesions have a few
//     runs per row, so this shrinks the problem by one to two orders of magnitude. Bytes are
//     scanned eight at a time (SWAR) to skip background and find run ends.
//  2. Links. A run connects to the runs of the earlier neighbouring rows (z, y-1), (z-1, y-1),
//     (z-1, y), (z-1, y+1) that overlap it; "overlap" allows a one-column offset when the
//     connectivity includes diagonal contacts in that direction (8/26: all four rows, 18: the
//     two face rows only, 4/6: none, and 6/4 use only the two face rows). Both rows are sorted,
//     so a merge-like sweep finds the pairs. Runs are united in a union-find forest in which
//     the smaller index always becomes the root, so every parent index is smaller than its
//     child's and a root is the first run of its component in scan order.
//  3. Numbers. One pass over the runs in order gives label[i] = ++n for a root and
//     label[parent[i]] otherwise (already final, since parent[i] < i).
//  4. Paint. Rows are written in parallel: zeros, then each run's label (or value, or flag).
// Parallelism: steps 1, 2 and 4 run on slabs of rows (whole planes for 3D volumes, rows for 2D
// images), each thread linking only inside its slab; the rows at each slab's start are then
// linked to the previous slab serially, which touches a plane of runs per slab boundary.
// The steps are short and memory-bound, so threads are plain std::threads that take slabs from a
// shared counter and are joined (blocking) at the end: OpenMP's spinning barriers cost more than
// the work itself on a machine whose cores are shared with other processes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace py = pybind11;

namespace {

// f(i) for i in [0, n) on `threads` threads (the caller is one of them), dynamic order.
template <typename F>
void parallel_for(int64_t n, int threads, F&& f) {
  threads = static_cast<int>(std::min<int64_t>(std::max(1, threads), n));
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) f(i);
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
}

// Below this many voxels one thread is faster than starting others.
constexpr int64_t kMinVoxelsPerThread = 1 << 18;

inline int threads_for(int64_t voxels, int threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, voxels / kMinVoxelsPerThread)));
}

struct Run {
  int32_t x0, x1;  // [x0, x1)
};

struct Shape {
  int64_t Z, Y, X;
  int64_t rows() const { return Z * Y; }
};

// The earlier neighbour rows of a row and whether diagonal contact counts in each.
struct NeighbourRow {
  int dz, dy, dilate;
};

std::vector<NeighbourRow> neighbour_rows(int connectivity) {
  switch (connectivity) {
    case 6:
      return {{0, -1, 0}, {-1, 0, 0}};
    case 18:
      return {{0, -1, 1}, {-1, 0, 1}, {-1, -1, 0}, {-1, 1, 0}};
    case 26:
      return {{0, -1, 1}, {-1, 0, 1}, {-1, -1, 1}, {-1, 1, 1}};
    default:
      throw std::invalid_argument("connectivity must be 6, 18 or 26 (4 and 8 in 2D map to 6 and 26)");
  }
}

// ---------------------------------------------------------------------------------------------
// Step 1: runs of one row.

inline uint64_t load8(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}
constexpr uint64_t kOnes = 0x0101010101010101ULL;
constexpr uint64_t kHighs = 0x8080808080808080ULL;
inline int first_set_byte(uint64_t w) { return __builtin_ctzll(w) >> 3; }  // w != 0, little-endian
inline uint64_t zero_bytes(uint64_t w) { return (w - kOnes) & ~w & kHighs; }  // lowest flag is exact

// First x' >= x with a nonzero value (X if none); background is skipped 32 bytes at a time.
template <typename T>
inline int64_t skip_background(const T* row, int64_t x, int64_t X) {
  constexpr int64_t per_word = 8 / sizeof(T);
  const uint8_t* b = reinterpret_cast<const uint8_t*>(row);
  while (x + 4 * per_word <= X) {
    const uint8_t* p = b + x * sizeof(T);
    if (load8(p) | load8(p + 8) | load8(p + 16) | load8(p + 24)) break;
    x += 4 * per_word;
  }
  if constexpr (sizeof(T) == 1) {
    for (; x + 8 <= X; x += 8) {
      const uint64_t w = load8(b + x);
      if (w) return x + first_set_byte(w);
    }
  }
  while (x < X && row[x] == T(0)) ++x;
  return x;
}

// End of the run that contains x: first x' > x whose value differs from v (binary: is zero).
template <typename T, bool BINARY>
inline int64_t run_end(const T* row, int64_t x, int64_t X, T v) {
  if constexpr (sizeof(T) == 1) {
    const uint8_t* b = reinterpret_cast<const uint8_t*>(row);
    const uint64_t vv = kOnes * static_cast<uint8_t>(v);
    for (; x + 8 <= X; x += 8) {
      const uint64_t w = load8(b + x);
      const uint64_t stop = BINARY ? zero_bytes(w) : (w ^ vv);
      if (stop) return x + first_set_byte(stop);
    }
  }
  if constexpr (BINARY) {
    while (x < X && row[x] != T(0)) ++x;
  } else {
    while (x < X && row[x] == v) ++x;
  }
  return x;
}

// Bit k set where byte k of the 64 at p is nonzero.
inline uint64_t nonzero_bits64(const uint8_t* p) {
#if defined(__AVX512BW__)
  return _mm512_test_epi8_mask(_mm512_loadu_si512(p), _mm512_loadu_si512(p));
#elif defined(__AVX2__)
  const __m256i zero = _mm256_setzero_si256();
  const uint32_t lo = ~static_cast<uint32_t>(_mm256_movemask_epi8(
      _mm256_cmpeq_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), zero)));
  const uint32_t hi = ~static_cast<uint32_t>(_mm256_movemask_epi8(
      _mm256_cmpeq_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)), zero)));
  return (static_cast<uint64_t>(hi) << 32) | lo;
#else
  uint64_t bits = 0;
  for (int k = 0; k < 64; ++k) bits |= static_cast<uint64_t>(p[k] != 0) << k;
  return bits;
#endif
}

// Runs of nonzero bytes, 64 voxels at a time: the boundaries of the runs are the set bits of
// bits ^ (bits << 1 | carry), which alternate start, end, start, ... so each run costs two
// count-trailing-zeros instead of a branch per voxel (noisy masks have runs of a few voxels).
inline Run* binary_byte_runs(const uint8_t* row, int64_t X, Run* out) {
  uint64_t carry = 0;  // 1 while a run is open across a word boundary
  int64_t start = 0;
  int64_t x = 0;
  for (; x + 64 <= X; x += 64) {
    const uint64_t bits = nonzero_bits64(row + x);
    uint64_t edges = bits ^ ((bits << 1) | carry);
    while (edges) {
      const int64_t pos = x + __builtin_ctzll(edges);
      edges &= edges - 1;
      if (carry == 0) {
        start = pos;
        carry = 1;
      } else {
        *out++ = {static_cast<int32_t>(start), static_cast<int32_t>(pos)};
        carry = 0;
      }
    }
    // carry now says whether the word ended inside a run (an odd number of edges flips it)
  }
  for (; x < X; ++x) {
    const uint64_t v = row[x] != 0;
    if (v != carry) {
      if (v) {
        start = x;
      } else {
        *out++ = {static_cast<int32_t>(start), static_cast<int32_t>(x)};
      }
      carry = v;
    }
  }
  if (carry) *out++ = {static_cast<int32_t>(start), static_cast<int32_t>(X)};
  return out;
}

// Appends the runs of one row; `out` must have room for X more runs ((X + 1) / 2 in binary mode).
template <typename T, bool BINARY>
inline Run* row_runs(const T* row, int64_t X, Run* out) {
  if constexpr (BINARY && sizeof(T) == 1) return binary_byte_runs(reinterpret_cast<const uint8_t*>(row), X, out);
  int64_t x = skip_background(row, 0, X);
  while (x < X) {
    const int64_t x1 = run_end<T, BINARY>(row, x + 1, X, row[x]);
    *out++ = {static_cast<int32_t>(x), static_cast<int32_t>(x1)};
    x = skip_background(row, x1, X);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Step 2: union-find over runs.

inline uint32_t find_root(uint32_t* parent, uint32_t x) {
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];  // path halving
    x = parent[x];
  }
  return x;
}

struct Runs {
  std::vector<Run> run;             // all runs, in scan order
  std::vector<uint32_t> row_start;  // runs of row r: [row_start[r], row_start[r+1])
  std::vector<uint32_t> parent;     // union-find forest, then (after number_components) labels
};

template <typename T, bool BINARY>
class Labeller {
 public:
  Labeller(const T* in, Shape s, int connectivity, int threads)
      : in_(in), s_(s), nb_(neighbour_rows(connectivity)), threads_(threads_for(s.Z * s.Y * s.X, threads)) {
    make_slabs();
  }

  // Steps 1-2: runs and their union-find forest (roots = first run of each component).
  void build(Runs& R) {
    const int ns = static_cast<int>(slab_rows_.size()) - 1;
    std::vector<std::vector<Run>> slab_runs(ns);
    R.row_start.assign(s_.rows() + 1, 0);
    parallel_for(ns, threads_, [&](int64_t s) {
      auto& runs = slab_runs[s];
      // most runs a row can hold: every other voxel (binary), every voxel (multi-label)
      const size_t row_max = BINARY ? static_cast<size_t>(s_.X + 1) / 2 : static_cast<size_t>(s_.X);
      size_t used = 0;
      for (int64_t r = slab_rows_[s]; r < slab_rows_[s + 1]; ++r) {
        if (runs.size() < used + row_max) runs.resize(std::max(2 * runs.size(), used + row_max + 1024));
        R.row_start[r] = static_cast<uint32_t>(used);  // local for now
        used = row_runs<T, BINARY>(in_ + r * s_.X, s_.X, runs.data() + used) - runs.data();
      }
      runs.resize(used);
    });
    std::vector<uint64_t> offset(ns + 1, 0);
    for (int s = 0; s < ns; ++s) offset[s + 1] = offset[s] + slab_runs[s].size();
    if (offset[ns] >= UINT32_MAX) throw std::length_error("too many runs for 32-bit labels");
    R.run.resize(offset[ns]);
    R.parent.resize(offset[ns]);
    R.row_start[s_.rows()] = static_cast<uint32_t>(offset[ns]);
    parallel_for(ns, threads_, [&](int64_t s) {
      std::copy(slab_runs[s].begin(), slab_runs[s].end(), R.run.begin() + offset[s]);
      std::vector<Run>().swap(slab_runs[s]);
      for (int64_t r = slab_rows_[s]; r < slab_rows_[s + 1]; ++r) R.row_start[r] += static_cast<uint32_t>(offset[s]);
      for (uint64_t i = offset[s]; i < offset[s + 1]; ++i) R.parent[i] = static_cast<uint32_t>(i);
    });
    // (A slab's last row ends where the next slab starts, so linking waits for all offsets.)
    parallel_for(ns, threads_, [&](int64_t s) {
      for (int64_t r = slab_rows_[s]; r < slab_rows_[s + 1]; ++r) link_row(R, r, slab_rows_[s], false);
    });
    // Rows at the start of each slab, linked to the slab before (serial: they share the forest).
    for (int s = 1; s < ns; ++s) {
      const int64_t r0 = slab_rows_[s];
      const int64_t r_end = std::min<int64_t>(slab_rows_[s + 1], r0 + s_.Y + 1);
      for (int64_t r = r0; r < r_end; ++r) link_row(R, r, r0, true);
    }
  }

 private:
  // Link row r to its earlier neighbour rows: those at or after `first_row` (inside the slab),
  // or, with `across`, only those before it.
  void link_row(Runs& R, int64_t r, int64_t first_row, bool across) {
    const uint32_t a_begin = R.row_start[r], a_end = R.row_start[r + 1];
    if (a_begin == a_end) return;
    const int64_t z = r / s_.Y, y = r % s_.Y;
    // the neighbour rows that take part, each with a cursor into its runs
    struct Cursor {
      uint32_t j, end;
      int32_t dilate;
      const T* row;
    };
    Cursor cur[4];
    int nc = 0;
    for (const NeighbourRow& n : nb_) {
      const int64_t nz = z + n.dz, ny = y + n.dy;
      if (nz < 0 || ny < 0 || ny >= s_.Y) continue;
      const int64_t nr = nz * s_.Y + ny;
      if (across ? nr >= first_row : nr < first_row) continue;
      if (R.row_start[nr] == R.row_start[nr + 1]) continue;
      cur[nc++] = {R.row_start[nr], R.row_start[nr + 1], n.dilate, in_ + nr * s_.X};
    }
    if (nc == 0) return;
    const T* arow = in_ + r * s_.X;
    const Run* run = R.run.data();
    uint32_t* parent = R.parent.data();
    for (uint32_t i = a_begin; i < a_end; ++i) {
      const Run a = run[i];
      uint32_t ra = find_root(parent, i);  // one lookup per run, kept current across all unions
      for (int c = 0; c < nc; ++c) {
        Cursor& n = cur[c];
        const int32_t k = n.dilate;
        while (n.j < n.end && run[n.j].x1 + k <= a.x0) ++n.j;
        for (uint32_t t = n.j; t < n.end && run[t].x0 < a.x1 + k; ++t) {
          if (!BINARY && arow[a.x0] != n.row[run[t].x0]) continue;
          const uint32_t rt = find_root(parent, t);
          if (rt < ra) {
            parent[ra] = rt;
            ra = rt;
          } else if (ra < rt) {
            parent[rt] = ra;
          }
        }
      }
    }
  }

  void make_slabs() {
    // Whole planes per slab for volumes, rows for single images; a few slabs per thread so that
    // one busy core does not hold the others up.
    slab_rows_.clear();
    const int64_t want = threads_ == 1 ? 1 : 4 * threads_;
    if (s_.Z >= 2 * want || (s_.Z > 1 && threads_ > 1 && s_.Z >= threads_)) {
      const int64_t n = std::min<int64_t>(want, s_.Z);
      for (int64_t i = 0; i <= n; ++i) slab_rows_.push_back((s_.Z * i / n) * s_.Y);
    } else if (s_.Z == 1 && s_.Y >= 64 * want) {
      for (int64_t i = 0; i <= want; ++i) slab_rows_.push_back(s_.Y * i / want);
    } else {
      slab_rows_ = {0, s_.rows()};
    }
  }

  const T* in_;
  Shape s_;
  std::vector<NeighbourRow> nb_;
  int threads_;
  std::vector<int64_t> slab_rows_;
};

// Step 3: parent[] -> labels 1..n in scan order of the roots. Returns n.
uint32_t number_components(Runs& R) {
  uint32_t n = 0;
  uint32_t* p = R.parent.data();
  const size_t m = R.parent.size();
  // Labels overwrite parents in place, in index order: a root (p[i] == i) gets ++n, any other
  // run the label of its parent, which has a smaller index and so already holds its label.
  for (size_t i = 0; i < m; ++i) p[i] = (p[i] == i) ? ++n : p[p[i]];
  return n;
}

template <typename Paint>
void paint_rows(const Runs& R, Shape s, int threads, Paint paint) {
  const int64_t rows = s.rows();
  const int64_t block = 64;
  parallel_for((rows + block - 1) / block, threads_for(rows * s.X, threads), [&](int64_t b) {
    for (int64_t r = b * block; r < std::min(rows, (b + 1) * block); ++r) paint(r, R.row_start[r], R.row_start[r + 1]);
  });
}

// ---------------------------------------------------------------------------------------------
// Python entry points

Shape shape_of(const py::array& a) {
  if (a.ndim() != 3) throw std::invalid_argument("array must be 3D (z, y, x); reshape 2D images to (1, y, x)");
  if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("array must be C-contiguous");
  if (a.dtype().byteorder() == '>') throw std::invalid_argument("array must have native byte order");
  Shape s{a.shape(0), a.shape(1), a.shape(2)};
  if (s.Z * s.Y * s.X >= static_cast<int64_t>(UINT32_MAX))
    throw std::length_error("arrays of 2^32 voxels or more are not supported");
  if (s.X >= INT32_MAX) throw std::length_error("rows longer than 2^31 voxels are not supported");
  return s;
}

template <typename F>
auto dispatch(const py::array& a, bool binary, F&& f) {
  const char kind = a.dtype().kind();
  const auto size = a.dtype().itemsize();
  const void* p = a.data();
#define AL_CASE(K, S, TYPE)                                                             \
  if (kind == K && size == S) {                                                         \
    if (binary) return f(static_cast<const TYPE*>(p), std::true_type{});               \
    return f(static_cast<const TYPE*>(p), std::false_type{});                          \
  }
  AL_CASE('b', 1, uint8_t)
  AL_CASE('u', 1, uint8_t)
  AL_CASE('i', 1, int8_t)
  AL_CASE('u', 2, uint16_t)
  AL_CASE('i', 2, int16_t)
  AL_CASE('u', 4, uint32_t)
  AL_CASE('i', 4, int32_t)
  AL_CASE('u', 8, uint64_t)
  AL_CASE('i', 8, int64_t)
#undef AL_CASE
  throw std::invalid_argument("unsupported dtype: use bool or an integer type");
}

template <typename T, typename B>
void build_runs(const T* in, Shape s, int connectivity, int threads, Runs& R, B) {
  Labeller<T, B::value> L(in, s, connectivity, threads);
  L.build(R);
}

py::tuple label(const py::array& a, int connectivity, bool binary, int threads) {
  const Shape s = shape_of(a);
  py::array_t<uint32_t> out({s.Z, s.Y, s.X});
  uint32_t* o = out.mutable_data();
  uint32_t n = 0;
  Runs R;
  dispatch(a, binary, [&](auto in, auto bin) {
    py::gil_scoped_release release;
    build_runs(in, s, connectivity, threads, R, bin);
    n = number_components(R);
    paint_rows(R, s, threads, [&](int64_t r, uint32_t b, uint32_t e) {
      uint32_t* row = o + r * s.X;
      std::fill(row, row + s.X, 0u);
      for (uint32_t i = b; i < e; ++i) std::fill(row + R.run[i].x0, row + R.run[i].x1, R.parent[i]);
    });
    return 0;
  });
  return py::make_tuple(out, n);
}

// Component sizes (voxels), index = label.
std::vector<uint64_t> component_sizes(const Runs& R, uint32_t n) {
  std::vector<uint64_t> size(static_cast<size_t>(n) + 1, 0);
  for (size_t i = 0; i < R.run.size(); ++i) size[R.parent[i]] += R.run[i].x1 - R.run[i].x0;
  return size;
}

// Keep the largest component (mode 0; ties go to the first in scan order) or the components of
// at least `min_voxels` voxels (mode 1). The result has the input's dtype and values (binary
// mode: a bool mask).
py::array keep_components(const py::array& a, int connectivity, bool binary, int mode, uint64_t min_voxels,
                          int threads) {
  const Shape s = shape_of(a);
  py::array out = binary ? py::array(py::dtype("bool"), std::vector<py::ssize_t>{s.Z, s.Y, s.X})
                         : py::array(a.dtype(), std::vector<py::ssize_t>{s.Z, s.Y, s.X});
  void* o = out.mutable_data();
  Runs R;
  dispatch(a, binary, [&](auto in, auto bin) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(in)>>;
    py::gil_scoped_release release;
    build_runs(in, s, connectivity, threads, R, bin);
    const uint32_t n = number_components(R);
    const std::vector<uint64_t> size = component_sizes(R, n);
    std::vector<uint8_t> keep(static_cast<size_t>(n) + 1, 0);
    if (mode == 0) {
      if (n > 0) keep[std::max_element(size.begin() + 1, size.end()) - size.begin()] = 1;
    } else {
      for (uint32_t l = 1; l <= n; ++l) keep[l] = size[l] >= min_voxels;
    }
    if (decltype(bin)::value) {
      uint8_t* ob = static_cast<uint8_t*>(o);
      paint_rows(R, s, threads, [&](int64_t r, uint32_t b, uint32_t e) {
        uint8_t* row = ob + r * s.X;
        std::memset(row, 0, s.X);
        for (uint32_t i = b; i < e; ++i)
          if (keep[R.parent[i]]) std::memset(row + R.run[i].x0, 1, R.run[i].x1 - R.run[i].x0);
      });
    } else {
      T* ot = static_cast<T*>(o);
      paint_rows(R, s, threads, [&](int64_t r, uint32_t b, uint32_t e) {
        T* row = ot + r * s.X;
        const T* src = in + r * s.X;
        std::fill(row, row + s.X, T(0));
        for (uint32_t i = b; i < e; ++i)
          if (keep[R.parent[i]]) std::fill(row + R.run[i].x0, row + R.run[i].x1, src[R.run[i].x0]);
      });
    }
    return 0;
  });
  return out;
}

// Per-label statistics of a label image (labels 1..n; values above n are ignored), in one pass
// over runs of equal labels: voxel count, bounding box [min, max] per axis, coordinate sums.
struct Stat {
  int64_t count = 0;
  int64_t lo[3] = {INT64_MAX, INT64_MAX, INT64_MAX};
  int64_t hi[3] = {-1, -1, -1};
  int64_t sum[3] = {0, 0, 0};
};

template <typename T>
void accumulate_stats(const T* lab, Shape s, int64_t r0, int64_t r1, uint64_t n, Stat* st) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t z = r / s.Y, y = r % s.Y;
    const T* row = lab + r * s.X;
    int64_t x = skip_background(row, 0, s.X);
    while (x < s.X) {
      const T v = row[x];
      const int64_t x0 = x;
      while (x < s.X && row[x] == v) ++x;
      const int64_t x1 = x;
      x = skip_background(row, x, s.X);
      if (static_cast<uint64_t>(v) > n) continue;
      Stat& t = st[static_cast<uint64_t>(v) - 1];
      const int64_t len = x1 - x0;
      t.count += len;
      t.lo[0] = std::min(t.lo[0], z);
      t.hi[0] = std::max(t.hi[0], z);
      t.lo[1] = std::min(t.lo[1], y);
      t.hi[1] = std::max(t.hi[1], y);
      t.lo[2] = std::min(t.lo[2], x0);
      t.hi[2] = std::max(t.hi[2], x1 - 1);
      t.sum[0] += len * z;
      t.sum[1] += len * y;
      t.sum[2] += len * (x0 + x1 - 1) / 2;  // sum of x0..x1-1; the product is always even
    }
  }
}

py::tuple component_stats(const py::array& labels, uint64_t n, int threads) {
  const Shape s = shape_of(labels);
  std::vector<Stat> total(n);
  dispatch(labels, false, [&](auto lab, auto) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(lab)>>;
    py::gil_scoped_release release;
    // One table per thread when that stays small; otherwise one thread.
    int t = threads_for(s.rows() * s.X, threads);
    if (static_cast<double>(n) * t * sizeof(Stat) > 512.0 * 1024 * 1024 || s.rows() < 4 * t) t = 1;
    std::vector<std::vector<Stat>> local(t);
    parallel_for(t, t, [&](int64_t id) {
      std::vector<Stat>& st = (t == 1) ? total : local[id];
      if (t > 1) st.assign(n, Stat());
      const int64_t r0 = s.rows() * id / t, r1 = s.rows() * (id + 1) / t;
      accumulate_stats<T>(lab, s, r0, r1, n, st.data());
    });
    if (t > 1) {
      for (int id = 0; id < t; ++id)
        for (uint64_t l = 0; l < n; ++l) {
          const Stat& a = local[id][l];
          Stat& b = total[l];
          if (a.count == 0) continue;
          b.count += a.count;
          for (int k = 0; k < 3; ++k) {
            b.lo[k] = std::min(b.lo[k], a.lo[k]);
            b.hi[k] = std::max(b.hi[k], a.hi[k]);
            b.sum[k] += a.sum[k];
          }
        }
    }
    return 0;
  });
  py::array_t<int64_t> count(static_cast<py::ssize_t>(n));
  py::array_t<int64_t> bbox({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(6)});
  py::array_t<int64_t> sums({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(3)});
  auto c = count.mutable_unchecked<1>();
  auto b = bbox.mutable_unchecked<2>();
  auto m = sums.mutable_unchecked<2>();
  for (uint64_t l = 0; l < n; ++l) {
    const Stat& t = total[l];
    c(l) = t.count;
    for (int k = 0; k < 3; ++k) {
      b(l, k) = t.count ? t.lo[k] : 0;
      b(l, 3 + k) = t.count ? t.hi[k] + 1 : 0;  // stop, exclusive
      m(l, k) = t.sum[k];
    }
  }
  return py::make_tuple(count, bbox, sums);
}

}  // namespace

PYBIND11_MODULE(components, m) {
  m.doc() = "Connected components (run-based union-find, threads over slabs): label, filters, statistics";
  m.def("label", &label, py::arg("array"), py::arg("connectivity"), py::arg("binary"), py::arg("threads") = 1,
        "Label a C-contiguous (z, y, x) array; returns (uint32 labels, n).");
  m.def("keep_components", &keep_components, py::arg("array"), py::arg("connectivity"), py::arg("binary"),
        py::arg("mode"), py::arg("min_voxels") = 0, py::arg("threads") = 1,
        "mode 0: keep the largest component; mode 1: keep components of at least min_voxels voxels.");
  m.def("component_stats", &component_stats, py::arg("labels"), py::arg("n"), py::arg("threads") = 1,
        "Per-label (count, bbox [z0,y0,x0,z1,y1,x1), coordinate sums) for labels 1..n.");
}
