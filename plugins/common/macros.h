// Shared compiler glue: lets one header compile with nvcc (host + device) and with a plain C++ compiler.
#pragma once

#if defined(__CUDACC__)
#define MASKRT_HD __host__ __device__ __forceinline__
#else
#define MASKRT_HD inline
#endif

// Symbols that the shared libraries export (everything else is hidden by -fvisibility=hidden).
#define MASKRT_EXPORT extern "C" __attribute__((visibility("default")))
