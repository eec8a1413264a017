// CUDA kernels of BatchedNMS. Four launches, no host round trip, per image b of the batch:
//  1. compact: the counts are zeroed, then one thread per score writes the sort keys (nms_core.h sortKey) of the
//     candidates (score > threshold) to a dense list, in no particular order (warp ballots, one atomic add per warp);
//     count C_b.
//  2. rank: a counting sort of the C_b keys (all keys are distinct, so the rank of a key is its position in the
//     stable descending order): kRankLanes threads per candidate each compare its key with a slice of the others
//     (shared-memory tiles), and a warp reduction adds the partial ranks; O(C_b^2) comparisons spread over C_b x 16
//     threads. Candidates of rank < kMaxCandidates are gathered in sorted order (index, box, area, group). Blocks past
//     C_b exit at once, so N = 90,000 with a few hundred candidates costs little more than reading the scores.
//  3. mask: the upper triangle of the M_b x M_b suppression bitmask (M_b = min(C_b, kMaxCandidates)), one block per
//     64 x 64 tile, like torchvision's CUDA nms, but 4 threads per row (16 columns each) for 4x the parallelism;
//     boxes of different groups never set a bit.
//  4. greedy: one block of 8 warps per image walks the sorted candidates 64 at a time (one mask word). The block
//     loads the tile's 64 rows (8 per warp, the words spread over the lanes) while the previous tile is resolved;
//     one thread resolves the tile from its diagonal words in shared memory (64 dependent steps on registers, no
//     memory round trip per box); then every lane ORs the kept rows of its words into the shared removal set. It
//     stops at max_output_boxes, pads keep with -1 and writes count.
#include <cuda_fp16.h>

#include <string>

#include "common/c_api.h"
#include "common/macros.h"
#include "nms/nms_kernel.h"
#include "nms/nms_params.h"

namespace maskrt
{
namespace nms
{
namespace
{

constexpr int kCompactThreads = 256;
constexpr int kRankThreads = 256;
constexpr int kRankLanes = 16;                             // threads per candidate in rankKernel
constexpr int kRankPerBlock = kRankThreads / kRankLanes;   // candidates per rank block
constexpr int kRankTile = 1024;                            // keys staged in shared memory at a time
constexpr int kTile = 64;                                  // bitmask tile side = bits per word
constexpr int kMaskSplit = 4;                              // threads per mask row
constexpr int kGreedyThreads = 256;                        // 8 warps
constexpr int kRowsPerWarp = kTile / (kGreedyThreads / 32); // rows of a tile per warp
constexpr int kMaxWords = (kMaxCandidates + kTile - 1) / kTile;
constexpr int kFarLoads = (kMaxWords - 1) / 32; // further 32-word loads per greedy tile (words 32..127 ahead)
constexpr size_t kAlign = 256;

size_t alignUp(size_t bytes)
{
    return (bytes + kAlign - 1) / kAlign * kAlign;
}

/// Byte offsets of the workspace buffers.
struct Layout
{
    size_t keys, counts, order, boxes, areas, groups, mask, total;
};

Layout layout(int64_t batch, int64_t numBoxes)
{
    int64_t const m = numBoxes < kMaxCandidates ? numBoxes : kMaxCandidates;
    int64_t const words = (m + kTile - 1) / kTile;
    Layout l{};
    size_t offset = 0;
    auto take = [&offset](size_t bytes) {
        size_t const at = offset;
        offset += alignUp(bytes);
        return at;
    };
    l.keys = take(sizeof(uint64_t) * batch * numBoxes);
    l.counts = take(sizeof(int32_t) * batch);
    l.order = take(sizeof(int32_t) * batch * m);
    l.boxes = take(sizeof(float) * 4 * batch * m);
    l.areas = take(sizeof(float) * batch * m);
    l.groups = take(sizeof(int32_t) * batch * m);
    l.mask = take(sizeof(uint64_t) * batch * m * words);
    l.total = offset;
    return l;
}

__device__ __forceinline__ float toFloat(float v)
{
    return v;
}

__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}

/// Grid (chunks of kCompactThreads scores, images); counts[b] zeroed before. Each warp reserves room for its
/// candidates with one atomic add, so the dense list is in no particular order: the rank kernel orders it by key.
template <typename T>
__global__ void __launch_bounds__(kCompactThreads) compactKernel(
    T const* __restrict__ scores, int64_t numBoxes, float threshold, uint64_t* __restrict__ keys, int32_t* counts)
{
    int64_t const b = blockIdx.y;
    int const lane = threadIdx.x & 31;
    int64_t const i = static_cast<int64_t>(blockIdx.x) * kCompactThreads + threadIdx.x;
    float const score = i < numBoxes ? toFloat(scores[b * numBoxes + i]) : 0.f;
    bool const pass = i < numBoxes && isCandidate(score, threshold);
    unsigned const ballot = __ballot_sync(0xffffffffu, pass);
    if (ballot == 0)
    {
        return;
    }
    int base = 0;
    if (lane == 0)
    {
        base = atomicAdd(counts + b, __popc(ballot));
    }
    base = __shfl_sync(0xffffffffu, base, 0);
    if (pass)
    {
        keys[b * numBoxes + base + __popc(ballot & ((1u << lane) - 1u))] = sortKey(score, static_cast<uint32_t>(i));
    }
}

__global__ void __launch_bounds__(kRankThreads) rankKernel(float const* __restrict__ boxes,
    int32_t const* __restrict__ groups, int64_t numBoxes, uint64_t const* __restrict__ keys,
    int32_t const* __restrict__ counts, int32_t* order, float* sortedBoxes, float* areas, int32_t* sortedGroups)
{
    __shared__ uint64_t tile[kRankTile];
    int64_t const b = blockIdx.y;
    int64_t const c = counts[b];
    int64_t const first = static_cast<int64_t>(blockIdx.x) * kRankPerBlock;
    if (first >= c)
    {
        return;
    }
    int64_t const m = numBoxes < kMaxCandidates ? numBoxes : kMaxCandidates;
    int const sub = threadIdx.x % kRankLanes; // this thread compares keys sub, sub + kRankLanes, ...
    int64_t const i = first + threadIdx.x / kRankLanes;
    uint64_t const* k = keys + b * numBoxes;
    uint64_t const key = i < c ? k[i] : ~0ull;
    int64_t rank = 0;
    for (int64_t t = 0; t < c; t += kRankTile)
    {
        __syncthreads();
        for (int j = threadIdx.x; j < kRankTile; j += kRankThreads)
        {
            tile[j] = t + j < c ? k[t + j] : ~0ull;
        }
        __syncthreads();
        int const n = c - t < kRankTile ? static_cast<int>(c - t) : kRankTile;
        for (int j = sub; j < n; j += kRankLanes)
        {
            rank += tile[j] < key ? 1 : 0;
        }
    }
#pragma unroll
    for (int offset = kRankLanes / 2; offset > 0; offset /= 2)
    {
        rank += __shfl_xor_sync(0xffffffffu, rank, offset, kRankLanes);
    }
    if (sub == 0 && i < c && rank < m)
    {
        int64_t const index = keyIndex(key);
        int64_t const at = b * m + rank;
        float const* box = boxes + (b * numBoxes + index) * 4;
        order[at] = static_cast<int32_t>(index);
        for (int d = 0; d < 4; ++d)
        {
            sortedBoxes[at * 4 + d] = box[d];
        }
        areas[at] = boxArea(box);
        sortedGroups[at] = groups[b * numBoxes + index];
    }
}

/// Block (kTile, kMaskSplit): thread (x, y) computes row x of the tile against columns y, y + kMaskSplit, ...
__global__ void __launch_bounds__(kTile* kMaskSplit) maskKernel(float const* __restrict__ boxes,
    float const* __restrict__ areas, int32_t const* __restrict__ groups, int32_t const* __restrict__ counts, int64_t m,
    float iouThreshold, uint64_t* __restrict__ mask)
{
    __shared__ float colBoxes[kTile * 4];
    __shared__ float colAreas[kTile];
    __shared__ int32_t colGroups[kTile];
    __shared__ uint64_t partial[kMaskSplit][kTile];
    int64_t const b = blockIdx.z;
    int const rowTile = blockIdx.y;
    int const colTile = blockIdx.x;
    int64_t const mb = counts[b] < m ? counts[b] : m;
    if (colTile < rowTile || static_cast<int64_t>(colTile) * kTile >= mb)
    {
        return;
    }
    int64_t const words = (m + kTile - 1) / kTile;
    int const x = threadIdx.x;
    int const y = threadIdx.y;
    int64_t const col = static_cast<int64_t>(colTile) * kTile + x;
    if (col < mb)
    {
        for (int d = y; d < 4; d += kMaskSplit)
        {
            colBoxes[x * 4 + d] = boxes[(b * m + col) * 4 + d];
        }
        if (y == 0)
        {
            colAreas[x] = areas[b * m + col];
            colGroups[x] = groups[b * m + col];
        }
    }
    __syncthreads();
    int64_t const row = static_cast<int64_t>(rowTile) * kTile + x;
    uint64_t bits = 0;
    if (row < mb)
    {
        float box[4];
        for (int d = 0; d < 4; ++d)
        {
            box[d] = boxes[(b * m + row) * 4 + d];
        }
        float const area = areas[b * m + row];
        int32_t const group = groups[b * m + row];
        int const n = mb - static_cast<int64_t>(colTile) * kTile < kTile
            ? static_cast<int>(mb - static_cast<int64_t>(colTile) * kTile)
            : kTile;
        int const startCol = colTile == rowTile ? x + 1 : 0;
        for (int j = y; j < n; j += kMaskSplit)
        {
            if (j >= startCol && colGroups[j] == group
                && suppresses(box, area, colBoxes + j * 4, colAreas[j], iouThreshold))
            {
                bits |= 1ull << j;
            }
        }
    }
    partial[y][x] = bits;
    __syncthreads();
    if (y == 0 && row < mb)
    {
        for (int s = 1; s < kMaskSplit; ++s)
        {
            bits |= partial[s][x];
        }
        mask[(b * m + row) * words + colTile] = bits;
    }
}

/// Loads row `first + r` (r = warp * kRowsPerWarp + k) of the mask at word `word` for k < kRowsPerWarp; 0 outside.
__device__ __forceinline__ void loadRows(uint64_t const* rows, int64_t words, int64_t first, int n, int64_t word,
    int64_t usedWords, int warp, uint64_t (&v)[kRowsPerWarp])
{
#pragma unroll
    for (int k = 0; k < kRowsPerWarp; ++k)
    {
        int const r = warp * kRowsPerWarp + k;
        v[k] = r < n && word < usedWords ? rows[(first + r) * words + word] : 0ull;
    }
}

__global__ void __launch_bounds__(kGreedyThreads) greedyKernel(int32_t const* __restrict__ order,
    uint64_t const* __restrict__ mask, int32_t const* __restrict__ counts, int64_t m, int maxOutputBoxes,
    int32_t* __restrict__ keep, int32_t* __restrict__ count)
{
    __shared__ uint64_t removed[kMaxWords];
    __shared__ uint64_t diag[kTile];
    __shared__ uint64_t keptShared;
    __shared__ int keptTotal;
    int64_t const b = blockIdx.x;
    int const lane = threadIdx.x & 31;
    int const warp = threadIdx.x >> 5;
    int64_t const mb = counts[b] < m ? counts[b] : m;
    int64_t const words = (m + kTile - 1) / kTile;
    int64_t const usedWords = (mb + kTile - 1) / kTile;
    uint64_t const* rows = mask + b * m * words;
    for (int64_t w = threadIdx.x; w < usedWords; w += kGreedyThreads)
    {
        removed[w] = 0;
    }
    if (threadIdx.x == 0)
    {
        keptTotal = 0;
    }
    int32_t* out = keep + b * maxOutputBoxes;
    // Registers: this thread's rows of the current tile at word (tile + lane), and the next tile's (prefetched).
    uint64_t v[kRowsPerWarp];
    uint64_t next[kRowsPerWarp];
    int n = mb < kTile ? static_cast<int>(mb) : kTile;
    loadRows(rows, words, 0, n, lane, usedWords, warp, v);
    __syncthreads();
    int kept = 0;
    for (int64_t w = 0; w < usedWords && kept < maxOutputBoxes; ++w)
    {
        int64_t const first = w * kTile;
        n = mb - first < kTile ? static_cast<int>(mb - first) : kTile;
        if (lane == 0)
        {
#pragma unroll
            for (int k = 0; k < kRowsPerWarp; ++k)
            {
                diag[warp * kRowsPerWarp + k] = v[k];
            }
        }
        __syncthreads();
        int64_t const nextFirst = first + kTile;
        int const nextN = mb - nextFirst < kTile ? static_cast<int>(mb - nextFirst) : kTile;
        loadRows(rows, words, nextFirst, nextN, w + 1 + lane, usedWords, warp, next);
        // The kept rows' words beyond the registers' 32 (N > 2048 only): loaded now, used after the resolve.
        uint64_t far[kFarLoads][kRowsPerWarp];
#pragma unroll
        for (int f = 0; f < kFarLoads; ++f)
        {
            loadRows(rows, words, first, n, w + 32 * (f + 1) + lane, usedWords, warp, far[f]);
        }
        if (threadIdx.x == 0)
        {
            // Rows past the candidates count as removed. Resolve without the output limit, then keep the first ones.
            // The diagonal words are read 16 at a time into registers, so that the dependent chain is pure ALU.
            uint64_t current = removed[w] | (n < kTile ? ~0ull << n : 0ull);
            uint64_t keptBits = 0;
#pragma unroll
            for (int j0 = 0; j0 < kTile; j0 += 16)
            {
                uint64_t d[16];
#pragma unroll
                for (int j = 0; j < 16; ++j)
                {
                    d[j] = diag[j0 + j];
                }
#pragma unroll
                for (int j = 0; j < 16; ++j)
                {
                    uint64_t const bit = 1ull << (j0 + j);
                    if (!(current & bit))
                    {
                        keptBits |= bit;
                        current |= d[j];
                    }
                }
            }
            int const room = maxOutputBoxes - kept;
            while (__popcll(keptBits) > room)
            {
                keptBits &= ~(1ull << (63 - __clzll(static_cast<long long>(keptBits))));
            }
            keptShared = keptBits;
            keptTotal = kept + __popcll(keptBits);
        }
        __syncthreads();
        uint64_t const keptBits = keptShared;
        if (threadIdx.x < kTile && ((keptBits >> threadIdx.x) & 1ull))
        {
            out[kept + __popcll(keptBits & ((1ull << threadIdx.x) - 1ull))] = order[b * m + first + threadIdx.x];
        }
        // OR the kept rows into the later words: word w + lane from registers, further words (> 32 ahead) loaded.
        uint64_t acc = 0;
#pragma unroll
        for (int k = 0; k < kRowsPerWarp; ++k)
        {
            acc |= ((keptBits >> (warp * kRowsPerWarp + k)) & 1ull) ? v[k] : 0ull;
        }
        if (lane > 0 && acc != 0)
        {
            atomicOr(reinterpret_cast<unsigned long long*>(removed + w + lane), static_cast<unsigned long long>(acc));
        }
#pragma unroll
        for (int f = 0; f < kFarLoads; ++f)
        {
            acc = 0;
#pragma unroll
            for (int k = 0; k < kRowsPerWarp; ++k)
            {
                acc |= ((keptBits >> (warp * kRowsPerWarp + k)) & 1ull) ? far[f][k] : 0ull;
            }
            if (acc != 0)
            {
                atomicOr(reinterpret_cast<unsigned long long*>(removed + w + 32 * (f + 1) + lane),
                    static_cast<unsigned long long>(acc));
            }
        }
#pragma unroll
        for (int k = 0; k < kRowsPerWarp; ++k)
        {
            v[k] = next[k];
        }
        kept = keptTotal;
        __syncthreads();
    }
    for (int k = kept + threadIdx.x; k < maxOutputBoxes; k += kGreedyThreads)
    {
        out[k] = -1;
    }
    if (threadIdx.x == 0)
    {
        count[b] = kept;
    }
}

} // namespace

size_t workspaceSize(int64_t batch, int64_t numBoxes)
{
    return batch > 0 && numBoxes >= 0 ? layout(batch, numBoxes).total : 0;
}

cudaError_t launch(float const* boxes, void const* scores, ScoreType scoreType, int32_t const* groups, int64_t batch,
    int64_t numBoxes, Params const& p, int32_t* keep, int32_t* count, void* workspace, cudaStream_t stream)
{
    if (batch <= 0)
    {
        return cudaSuccess;
    }
    if (batch > 65535 || numBoxes < 0 || numBoxes > 0x7fffffffLL)
    {
        return cudaErrorInvalidConfiguration;
    }
    Layout const l = layout(batch, numBoxes);
    char* ws = static_cast<char*>(workspace);
    auto* keys = reinterpret_cast<uint64_t*>(ws + l.keys);
    auto* counts = reinterpret_cast<int32_t*>(ws + l.counts);
    auto* order = reinterpret_cast<int32_t*>(ws + l.order);
    auto* sortedBoxes = reinterpret_cast<float*>(ws + l.boxes);
    auto* areas = reinterpret_cast<float*>(ws + l.areas);
    auto* sortedGroups = reinterpret_cast<int32_t*>(ws + l.groups);
    auto* mask = reinterpret_cast<uint64_t*>(ws + l.mask);
    int64_t const m = numBoxes < kMaxCandidates ? numBoxes : kMaxCandidates;
    unsigned const grid = static_cast<unsigned>(batch);

    cudaError_t const zeroed = cudaMemsetAsync(counts, 0, sizeof(int32_t) * batch, stream);
    if (zeroed != cudaSuccess)
    {
        return zeroed;
    }
    if (numBoxes > 0)
    {
        dim3 const compactGrid(static_cast<unsigned>((numBoxes + kCompactThreads - 1) / kCompactThreads), grid);
        if (scoreType == ScoreType::kFLOAT)
        {
            compactKernel<float><<<compactGrid, kCompactThreads, 0, stream>>>(
                static_cast<float const*>(scores), numBoxes, p.scoreThreshold, keys, counts);
        }
        else
        {
            compactKernel<__half><<<compactGrid, kCompactThreads, 0, stream>>>(
                static_cast<__half const*>(scores), numBoxes, p.scoreThreshold, keys, counts);
        }
    }
    if (numBoxes > 0)
    {
        dim3 const rankGrid(static_cast<unsigned>((numBoxes + kRankPerBlock - 1) / kRankPerBlock), grid);
        rankKernel<<<rankGrid, kRankThreads, 0, stream>>>(
            boxes, groups, numBoxes, keys, counts, order, sortedBoxes, areas, sortedGroups);
        unsigned const tiles = static_cast<unsigned>((m + kTile - 1) / kTile);
        dim3 const maskGrid(tiles, tiles, grid);
        maskKernel<<<maskGrid, dim3(kTile, kMaskSplit), 0, stream>>>(sortedBoxes, areas, sortedGroups, counts, m, p.iouThreshold, mask);
    }
    greedyKernel<<<grid, kGreedyThreads, 0, stream>>>(order, mask, counts, m, p.maxOutputBoxes, keep, count);
    return cudaGetLastError();
}

} // namespace nms
} // namespace maskrt

/// Workspace bytes of maskrt_nms_cuda for `batch` images of `numBoxes` boxes.
MASKRT_EXPORT int64_t maskrt_nms_workspace_size(int64_t batch, int64_t numBoxes)
{
    return static_cast<int64_t>(maskrt::nms::workspaceSize(batch, numBoxes));
}

/// BatchedNMS on the GPU, for callers without TensorRT (tests, benchmarks). Same arguments as maskrt_nms_host in
/// host_api.cpp, all tensor pointers device pointers, plus a device workspace of maskrt_nms_workspace_size bytes;
/// enqueued on `stream` (a cudaStream_t, may be null). Returns 0, -1 for invalid arguments (message in err), or a
/// positive cudaError_t.
MASKRT_EXPORT int maskrt_nms_cuda(float const* boxes, void const* scores, int scoreType, int32_t const* groups,
    int64_t batch, int64_t numBoxes, float iouThreshold, float scoreThreshold, int maxOutputBoxes, int32_t* keep,
    int32_t* count, void* workspace, int64_t workspaceBytes, void* stream, char* err, int errLen)
{
    namespace nm = maskrt::nms;
    nm::Params const p{iouThreshold, scoreThreshold, maxOutputBoxes};
    std::string reason = nm::checkLaunch(p, batch, numBoxes, scoreType);
    if (reason.empty() && workspaceBytes < static_cast<int64_t>(nm::workspaceSize(batch, numBoxes)))
    {
        reason = "workspace too small: " + std::to_string(workspaceBytes) + " bytes, needs "
            + std::to_string(nm::workspaceSize(batch, numBoxes));
    }
    if (!reason.empty())
    {
        return maskrt::failWith(err, errLen, reason);
    }
    cudaError_t const status = nm::launch(boxes, scores, scoreType == 0 ? nm::ScoreType::kFLOAT : nm::ScoreType::kHALF,
        groups, batch, numBoxes, p, keep, count, workspace, static_cast<cudaStream_t>(stream));
    return status == cudaSuccess ? 0 : static_cast<int>(status);
}
