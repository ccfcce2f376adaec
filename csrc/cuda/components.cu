// Connected components on the GPU: the same labels as csrc/cpu/components.cpp (voxels connect
// when they are 6/18/26-neighbours with the same nonzero value; labels 1..n in raster-scan order
// of each component's first voxel), for uint8/bool, int8, int16, int32 and int64 volumes.
//
// Algorithm: lock-free union-find on voxels (Playne & Hawick, IEEE TPDS 2018).
//  1. init:     L[i] = i for foreground voxels, -1 for background.
//  2. merge:    every foreground voxel unites itself with each earlier neighbour (the half of the
//               neighbourhood before it in scan order) that has the same value. A union links the
//               larger root to the smaller one with atomicMin and retries if another thread moved
//               the root meanwhile, so every parent index is smaller than its child's and each
//               root is the first voxel of its component in scan order.
//  3. compress: L[i] = root of i (safe concurrently: parents only ever move towards the root).
//  4. number:   flag the roots, exclusive prefix sum of the flags (CUB) gives each root its rank,
//               so labels are consecutive in scan order: out[i] = rank[L[i]] + 1.
// The label buffer doubles as the forest (L lives in the output), so the workspace is two int32
// per voxel plus CUB's scratch. Volumes must have fewer than 2^31 voxels (int32 indices).
//
// Statistics of a labelled volume (autoliver_cc_stats): voxel count, bounding box and the sums of
// the voxel coordinates per label, in one pass over the labels. Background voxels are skipped
// (they would all hit one counter), and the lanes of a warp that hold the same label combine their
// values first (match + warp reductions), so a large organ costs one atomic per warp, not one per
// voxel. Integer sums make the centroids exact and the result independent of the order.
// No torch or Python headers: the launchers take device pointers and a stream.
#include <cuda_runtime.h>
#include <cub/device/device_scan.cuh>

#include <cstddef>
#include <cstdint>

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int find_root(const int* L, int i) {
  int p = __ldcg(L + i);
  while (p != i) {
    i = p;
    p = __ldcg(L + i);
  }
  return i;
}

__device__ __forceinline__ void unite(int* L, int a, int b) {
  while (true) {
    a = find_root(L, a);
    b = find_root(L, b);
    if (a == b) return;
    if (a > b) {
      const int t = a;
      a = b;
      b = t;
    }
    // link root b under a; if b stopped being a root meanwhile, retry from what it points to now
    const int old = atomicMin(L + b, a);
    if (old == b) return;
    b = old;
  }
}

template <typename T>
__global__ void init_kernel(const T* __restrict__ in, int* __restrict__ L, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) L[i] = in[i] != T(0) ? i : -1;
}

template <typename T>
__global__ void merge_kernel(const T* __restrict__ in, int* L, int Z, int Y, int X, int connectivity) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int n = Z * Y * X;  // < 2^31, checked by the launcher
  if (i >= n) return;
  const T v = in[i];
  if (v == T(0)) return;
  const int x = i % X;
  const int y = (i / X) % Y;
  const int z = i / (X * Y);
  // earlier neighbours: (dz, dy, dx) before (0, 0, 0) in scan order
  for (int dz = -1; dz <= 0; ++dz) {
    if (z + dz < 0) continue;
    for (int dy = -1; dy <= 1; ++dy) {
      if (dz == 0 && dy > 0) break;
      if (y + dy < 0 || y + dy >= Y) continue;
      for (int dx = -1; dx <= 1; ++dx) {
        if (dz == 0 && dy == 0 && dx >= 0) break;
        if (x + dx < 0 || x + dx >= X) continue;
        const int order = (dz != 0) + (dy != 0) + (dx != 0);  // 1: face, 2: edge, 3: corner
        if ((connectivity == 6 && order > 1) || (connectivity == 18 && order > 2)) continue;
        const int j = i + (dz * Y + dy) * X + dx;
        if (in[j] == v) unite(L, i, j);
      }
    }
  }
}

__global__ void compress_kernel(int* L, int* __restrict__ flags, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int p = L[i];
  if (p < 0) {
    flags[i] = 0;
    return;
  }
  const int r = find_root(L, i);
  L[i] = r;
  flags[i] = (r == i);
}

__global__ void number_kernel(int* L, const int* __restrict__ rank, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int r = L[i];
  L[i] = r < 0 ? 0 : rank[r] + 1;
}

__global__ void count_kernel(const int* __restrict__ flags, const int* __restrict__ rank, int n, int* count) {
  *count = rank[n - 1] + flags[n - 1];
}

// Combine a coordinate (>= 0) over the lanes of a warp that hold the same label (``peers``);
// without the sm_80 warp reductions every lane stands alone.
enum class Reduce { kMin, kMax, kSum };

template <Reduce op>
__device__ __forceinline__ unsigned over_peers(unsigned peers, unsigned v) {
#if __CUDA_ARCH__ >= 800
  if (op == Reduce::kMin) return __reduce_min_sync(peers, v);
  if (op == Reduce::kMax) return __reduce_max_sync(peers, v);
  return __reduce_add_sync(peers, v);
#else
  return v;
#endif
}

// One thread per voxel; count[l] += 1, box[6l..6l+5] = min z, y, x and max z, y, x, sums[3l..] += z, y, x.
// box and sums may be null (counts only).
__global__ void stats_kernel(const int* __restrict__ labels, int n, int Y, int X, int* __restrict__ count,
                             int* __restrict__ box, unsigned long long* __restrict__ sums) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int l = i < n ? labels[i] : 0;
  const int x = i % X, y = (i / X) % Y, z = i / (X * Y);
#if __CUDA_ARCH__ >= 800
  const unsigned peers = __match_any_sync(0xffffffffu, l);  // every lane, before any leaves
  const bool leader = (threadIdx.x & 31) == __ffs(peers) - 1;
#else
  const unsigned peers = 1u << (threadIdx.x & 31);
  const bool leader = true;
#endif
  if (l <= 0) return;
  if (leader) atomicAdd(count + l, __popc(peers));
  if (!box) return;
  const unsigned at[3] = {unsigned(z), unsigned(y), unsigned(x)};
  unsigned lo[3], hi[3], sum[3];
#pragma unroll
  for (int a = 0; a < 3; ++a) {
    lo[a] = over_peers<Reduce::kMin>(peers, at[a]);
    hi[a] = over_peers<Reduce::kMax>(peers, at[a]);
    sum[a] = over_peers<Reduce::kSum>(peers, at[a]);
  }
  if (!leader) return;
  int* b = box + 6 * static_cast<long long>(l);
  unsigned long long* s = sums + 3 * static_cast<long long>(l);
#pragma unroll
  for (int a = 0; a < 3; ++a) {
    atomicMin(b + a, int(lo[a]));
    atomicMax(b + 3 + a, int(hi[a]));
    atomicAdd(s + a, static_cast<unsigned long long>(sum[a]));
  }
}

size_t align_up(size_t v) { return (v + 255) / 256 * 256; }

size_t scan_bytes(int n) {
  size_t bytes = 0;
  cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<const int*>(nullptr), static_cast<int*>(nullptr), n);
  return bytes;
}

template <typename T>
int label(const T* in, int* labels, int* count, int Z, int Y, int X, int connectivity, void* workspace,
          size_t workspace_bytes, cudaStream_t stream) {
  if (Z <= 0 || Y <= 0 || X <= 0) return 0;
  const long long n_ll = static_cast<long long>(Z) * Y * X;
  if (n_ll >= (1LL << 31)) return static_cast<int>(cudaErrorInvalidValue);
  if (connectivity != 6 && connectivity != 18 && connectivity != 26) return static_cast<int>(cudaErrorInvalidValue);
  const int n = static_cast<int>(n_ll);
  const size_t vox = align_up(sizeof(int) * static_cast<size_t>(n));
  const size_t scratch = scan_bytes(n);
  if (workspace_bytes < 2 * vox + scratch) return static_cast<int>(cudaErrorInvalidValue);
  char* ws = static_cast<char*>(workspace);
  int* flags = reinterpret_cast<int*>(ws);
  int* rank = reinterpret_cast<int*>(ws + vox);
  void* cub_tmp = ws + 2 * vox;
  const int blocks = (n + kThreads - 1) / kThreads;
  init_kernel<T><<<blocks, kThreads, 0, stream>>>(in, labels, n);
  merge_kernel<T><<<blocks, kThreads, 0, stream>>>(in, labels, Z, Y, X, connectivity);
  compress_kernel<<<blocks, kThreads, 0, stream>>>(labels, flags, n);
  size_t tmp_bytes = scratch;
  cudaError_t err = cub::DeviceScan::ExclusiveSum(cub_tmp, tmp_bytes, flags, rank, n, stream);
  if (err != cudaSuccess) return static_cast<int>(err);
  number_kernel<<<blocks, kThreads, 0, stream>>>(labels, rank, n);
  count_kernel<<<1, 1, 0, stream>>>(flags, rank, n, count);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" {

// Bytes of device workspace the label launchers need for n voxels.
size_t autoliver_cc_workspace_bytes(long long n) {
  if (n <= 0 || n >= (1LL << 31)) return 256;
  return 2 * align_up(sizeof(int) * static_cast<size_t>(n)) + scan_bytes(static_cast<int>(n)) + 256;
}

// Label a (Z, Y, X) volume: labels (int32, Z*Y*X) and *count (one int32) are device pointers.
// Returns 0 on success, else a cudaError_t code.
#define AUTOLIVER_CC_LABEL(SUFFIX, TYPE)                                                                    \
  int autoliver_cc_label_##SUFFIX(const TYPE* in, int* labels, int* count, int Z, int Y, int X,           \
                                  int connectivity, void* workspace, size_t workspace_bytes,              \
                                  cudaStream_t stream) {                                                  \
    return label<TYPE>(in, labels, count, Z, Y, X, connectivity, workspace, workspace_bytes, stream);     \
  }
AUTOLIVER_CC_LABEL(u8, uint8_t)
AUTOLIVER_CC_LABEL(i8, int8_t)
AUTOLIVER_CC_LABEL(i16, int16_t)
AUTOLIVER_CC_LABEL(i32, int32_t)
AUTOLIVER_CC_LABEL(i64, int64_t)
#undef AUTOLIVER_CC_LABEL

// Statistics of int32 labels (Z*Y*X voxels, any value <= 0 is background; labels <= max_label).
// count (max_label + 1 int32) zeroed, box (6 per label) set to INT_MAX for the minima and -1 for
// the maxima, sums (3 uint64 per label) zeroed by the caller; box and sums may be null.
int autoliver_cc_stats(const int* labels, int Z, int Y, int X, int* count, int* box, unsigned long long* sums,
                       cudaStream_t stream) {
  if (Z <= 0 || Y <= 0 || X <= 0) return 0;
  const long long n_ll = static_cast<long long>(Z) * Y * X;
  if (n_ll >= (1LL << 31)) return static_cast<int>(cudaErrorInvalidValue);
  const int n = static_cast<int>(n_ll);
  stats_kernel<<<(n + kThreads - 1) / kThreads, kThreads, 0, stream>>>(labels, n, Y, X, count, box, sums);
  return static_cast<int>(cudaGetLastError());
}

}  // extern "C"
