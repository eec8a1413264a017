// CUDA kernels of BatchedNMS. Four launches, no host round trip, per image b of the batch:
//  1. compact: one block walks the N scores and writes the sort keys (nms_core.h sortKey) of the candidates
//     (score > threshold) to a dense list, in index order (warp ballots + a block scan); count C_b.
//  2. rank: a counting sort of the C_b keys (all keys are distinct, so the rank of a key is its position in the
//     stable descending order): one thread per candidate compares its key with every other through shared-memory
//     tiles, O(C_b^2) comparisons in parallel. Candidates of rank < kMaxCandidates are gathered in sorted order
//     (index, box, area, group). Blocks past C_b exit at once, so N = 90,000 with a few hundred candidates costs
//     little more than reading the scores.
//  3. mask: the upper triangle of the M_b x M_b suppression bitmask (M_b = min(C_b, kMaxCandidates)), one block of
//     64 threads per 64 x 64 tile, like torchvision's CUDA nms; boxes of different groups never set a bit.
//  4. greedy: one warp per image walks the sorted candidates 64 at a time: the tile's keep decisions come from the
//     diagonal mask words held in registers (warp shuffles), then the kept rows are ORed into a shared-memory
//     removal set; stops at max_output_boxes, pads keep with -1 and writes count.
// Workspace (from workspaceSize): keys [B, N] u64, counts [B], order [B, M] i32, boxes [B, M, 4], areas [B, M],
// groups [B, M], mask [B, M, ceil(M / 64)] u64, with M = min(N, kMaxCandidates): 8 MiB per image at most for the
// mask, plus 8 bytes per input box.
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

constexpr int kCompactThreads = 1024;
constexpr int kRankThreads = 256;
constexpr int kTile = 64; // bitmask tile side = bits per word
constexpr int kMaxWords = (kMaxCandidates + kTile - 1) / kTile;
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

template <typename T>
__global__ void __launch_bounds__(kCompactThreads) compactKernel(
    T const* __restrict__ scores, int64_t numBoxes, float threshold, uint64_t* __restrict__ keys, int32_t* counts)
{
    __shared__ int warpTotals[kCompactThreads / 32];
    __shared__ int base;
    int64_t const b = blockIdx.x;
    int const lane = threadIdx.x & 31;
    int const warp = threadIdx.x >> 5;
    if (threadIdx.x == 0)
    {
        base = 0;
    }
    for (int64_t start = 0; start < numBoxes; start += kCompactThreads)
    {
        int64_t const i = start + threadIdx.x;
        float const score = i < numBoxes ? toFloat(scores[b * numBoxes + i]) : 0.f;
        bool const pass = i < numBoxes && isCandidate(score, threshold);
        unsigned const ballot = __ballot_sync(0xffffffffu, pass);
        if (lane == 0)
        {
            warpTotals[warp] = __popc(ballot);
        }
        __syncthreads();
        int before = 0; // candidates of earlier warps in this chunk
        int chunkTotal = 0;
        for (int w = 0; w < kCompactThreads / 32; ++w)
        {
            before += w < warp ? warpTotals[w] : 0;
            chunkTotal += warpTotals[w];
        }
        if (pass)
        {
            int const pos = base + before + __popc(ballot & ((1u << lane) - 1u));
            keys[b * numBoxes + pos] = sortKey(score, static_cast<uint32_t>(i));
        }
        __syncthreads();
        if (threadIdx.x == 0)
        {
            base += chunkTotal;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        counts[b] = base;
    }
}

__global__ void __launch_bounds__(kRankThreads) rankKernel(float const* __restrict__ boxes,
    int32_t const* __restrict__ groups, int64_t numBoxes, uint64_t const* __restrict__ keys,
    int32_t const* __restrict__ counts, int32_t* order, float* sortedBoxes, float* areas, int32_t* sortedGroups)
{
    __shared__ uint64_t tile[kRankThreads];
    int64_t const b = blockIdx.y;
    int64_t const c = counts[b];
    int64_t const first = static_cast<int64_t>(blockIdx.x) * kRankThreads;
    if (first >= c)
    {
        return;
    }
    int64_t const m = numBoxes < kMaxCandidates ? numBoxes : kMaxCandidates;
    int64_t const i = first + threadIdx.x;
    uint64_t const* k = keys + b * numBoxes;
    uint64_t const key = i < c ? k[i] : ~0ull;
    int64_t rank = 0;
    for (int64_t t = 0; t < c; t += kRankThreads)
    {
        __syncthreads();
        tile[threadIdx.x] = t + threadIdx.x < c ? k[t + threadIdx.x] : ~0ull;
        __syncthreads();
        int const n = c - t < kRankThreads ? static_cast<int>(c - t) : kRankThreads;
        for (int j = 0; j < n; ++j)
        {
            rank += tile[j] < key ? 1 : 0;
        }
    }
    if (i < c && rank < m)
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

__global__ void __launch_bounds__(kTile) maskKernel(float const* __restrict__ boxes, float const* __restrict__ areas,
    int32_t const* __restrict__ groups, int32_t const* __restrict__ counts, int64_t m, float iouThreshold,
    uint64_t* __restrict__ mask)
{
    __shared__ float colBoxes[kTile * 4];
    __shared__ float colAreas[kTile];
    __shared__ int32_t colGroups[kTile];
    int64_t const b = blockIdx.z;
    int const rowTile = blockIdx.y;
    int const colTile = blockIdx.x;
    int64_t const mb = counts[b] < m ? counts[b] : m;
    if (colTile < rowTile || static_cast<int64_t>(colTile) * kTile >= mb)
    {
        return;
    }
    int64_t const words = (m + kTile - 1) / kTile;
    int64_t const col = static_cast<int64_t>(colTile) * kTile + threadIdx.x;
    if (col < mb)
    {
        for (int d = 0; d < 4; ++d)
        {
            colBoxes[threadIdx.x * 4 + d] = boxes[(b * m + col) * 4 + d];
        }
        colAreas[threadIdx.x] = areas[b * m + col];
        colGroups[threadIdx.x] = groups[b * m + col];
    }
    __syncthreads();
    int64_t const row = static_cast<int64_t>(rowTile) * kTile + threadIdx.x;
    if (row >= mb)
    {
        return;
    }
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
    int const startCol = colTile == rowTile ? threadIdx.x + 1 : 0;
    uint64_t bits = 0;
    for (int j = startCol; j < n; ++j)
    {
        if (colGroups[j] == group && suppresses(box, area, colBoxes + j * 4, colAreas[j], iouThreshold))
        {
            bits |= 1ull << j;
        }
    }
    mask[(b * m + row) * words + colTile] = bits;
}

/// Removes the lowest set bit of `bits` and returns its position; returns `fallback` when `bits` is 0.
__device__ __forceinline__ int popLowestBit(uint64_t& bits, int fallback)
{
    if (bits == 0)
    {
        return fallback;
    }
    int const j = __ffsll(static_cast<long long>(bits)) - 1;
    bits &= bits - 1;
    return j;
}

__global__ void __launch_bounds__(32) greedyKernel(int32_t const* __restrict__ order,
    uint64_t const* __restrict__ mask, int32_t const* __restrict__ counts, int64_t m, int maxOutputBoxes,
    int32_t* __restrict__ keep, int32_t* __restrict__ count)
{
    __shared__ uint64_t removed[kMaxWords];
    int64_t const b = blockIdx.x;
    int const lane = threadIdx.x;
    int64_t const mb = counts[b] < m ? counts[b] : m;
    int64_t const words = (m + kTile - 1) / kTile;
    int64_t const usedWords = (mb + kTile - 1) / kTile;
    uint64_t const* rows = mask + b * m * words;
    for (int64_t w = lane; w < usedWords; w += 32)
    {
        removed[w] = 0;
    }
    __syncwarp();
    int32_t* out = keep + b * maxOutputBoxes;
    int kept = 0;
    // Tile by tile (64 candidates = one word): resolve the tile in registers from the rows' diagonal words, then
    // OR the kept rows into the later words. The loads of a tile are independent of each other (no per-box round
    // trip to memory), which keeps the single warp latency-tolerant.
    for (int64_t w = 0; w < usedWords && kept < maxOutputBoxes; ++w)
    {
        int64_t const first = w * kTile;
        int const n = mb - first < kTile ? static_cast<int>(mb - first) : kTile;
        uint64_t const diag0 = lane < n ? rows[(first + lane) * words + w] : 0;
        uint64_t const diag1 = lane + 32 < n ? rows[(first + 32 + lane) * words + w] : 0;
        uint64_t current = removed[w];
        uint64_t keptBits = 0;
        int const keptBefore = kept;
        for (int j = 0; j < n && kept < maxOutputBoxes; ++j)
        {
            uint64_t const row = __shfl_sync(0xffffffffu, j < 32 ? diag0 : diag1, j & 31);
            if (!((current >> j) & 1ull))
            {
                keptBits |= 1ull << j;
                current |= row;
                ++kept;
            }
        }
        for (int j = lane; j < kTile; j += 32)
        {
            if ((keptBits >> j) & 1ull)
            {
                out[keptBefore + __popcll(keptBits & ((1ull << j) - 1ull))] = order[b * m + first + j];
            }
        }
        for (int64_t word = w + 1 + lane; word < usedWords; word += 32)
        {
            uint64_t acc = 0;
            uint64_t bits = keptBits;
            while (bits != 0) // four rows per round, so that four loads are in flight
            {
                int const j0 = popLowestBit(bits, 0);
                int const j1 = popLowestBit(bits, j0);
                int const j2 = popLowestBit(bits, j0);
                int const j3 = popLowestBit(bits, j0);
                acc |= rows[(first + j0) * words + word] | rows[(first + j1) * words + word]
                    | rows[(first + j2) * words + word] | rows[(first + j3) * words + word];
            }
            removed[word] |= acc;
        }
        __syncwarp();
    }
    for (int k = kept + lane; k < maxOutputBoxes; k += 32)
    {
        out[k] = -1;
    }
    if (lane == 0)
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

    if (scoreType == ScoreType::kFLOAT)
    {
        compactKernel<float><<<grid, kCompactThreads, 0, stream>>>(
            static_cast<float const*>(scores), numBoxes, p.scoreThreshold, keys, counts);
    }
    else
    {
        compactKernel<__half><<<grid, kCompactThreads, 0, stream>>>(
            static_cast<__half const*>(scores), numBoxes, p.scoreThreshold, keys, counts);
    }
    if (numBoxes > 0)
    {
        dim3 const rankGrid(static_cast<unsigned>((numBoxes + kRankThreads - 1) / kRankThreads), grid);
        rankKernel<<<rankGrid, kRankThreads, 0, stream>>>(
            boxes, groups, numBoxes, keys, counts, order, sortedBoxes, areas, sortedGroups);
        unsigned const tiles = static_cast<unsigned>((m + kTile - 1) / kTile);
        dim3 const maskGrid(tiles, tiles, grid);
        maskKernel<<<maskGrid, kTile, 0, stream>>>(sortedBoxes, areas, sortedGroups, counts, m, p.iouThreshold, mask);
    }
    greedyKernel<<<grid, 32, 0, stream>>>(order, mask, counts, m, p.maxOutputBoxes, keep, count);
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
