# maskrt_find_tensorrt_headers(<var>): the folder holding NvInfer.h, in this order:
#   1. TensorRT_ROOT (CMake variable or environment; also TENSORRT_ROOT): <root>/include or <root>
#   2. the system include path (Debian/Ubuntu/JetPack packages: /usr/include/<arch>-linux-gnu, /usr/include)
#   3. with MASKRT_FETCH_TENSORRT_HEADERS, NVIDIA's Apache-2.0 TensorRT 10 headers from the wheel named by
#      MASKRT_TENSORRT_HEADERS_WHEEL, fetched with `pip download --no-deps` (never installed) into the build tree.
# The plugin library only needs the headers: it does not link libnvinfer.
function(maskrt_find_tensorrt_headers out_var)
  set(_roots ${TensorRT_ROOT} $ENV{TensorRT_ROOT} $ENV{TENSORRT_ROOT})
  find_path(TensorRT_INCLUDE_DIR NvInfer.h HINTS ${_roots} PATH_SUFFIXES include
            DOC "Folder holding TensorRT's NvInfer.h")
  if(TensorRT_INCLUDE_DIR)
    set(${out_var} "${TensorRT_INCLUDE_DIR}" PARENT_SCOPE)
    return()
  endif()
  if(_roots)
    message(FATAL_ERROR "maskrt: TensorRT_ROOT=${_roots} holds no include/NvInfer.h")
  endif()
  if(NOT MASKRT_FETCH_TENSORRT_HEADERS)
    message(FATAL_ERROR "maskrt: TensorRT headers (NvInfer.h) not found: set TensorRT_ROOT to a TensorRT 10 "
                        "installation, or configure with -DMASKRT_FETCH_TENSORRT_HEADERS=ON")
  endif()

  set(_deps "${CMAKE_BINARY_DIR}/_deps/tensorrt-headers")
  set(_include "${_deps}/kernel_lens/include/tensorrt")
  if(NOT EXISTS "${_include}/NvInfer.h")
    find_package(Python3 COMPONENTS Interpreter REQUIRED)
    message(STATUS "maskrt: no TensorRT install found; fetching TensorRT headers from ${MASKRT_TENSORRT_HEADERS_WHEEL}")
    execute_process(
      COMMAND ${Python3_EXECUTABLE} -m pip download --no-deps --disable-pip-version-check --quiet
              ${MASKRT_TENSORRT_HEADERS_WHEEL} -d "${_deps}/wheel"
      RESULT_VARIABLE _rc ERROR_VARIABLE _err)
    file(GLOB _wheels "${_deps}/wheel/*.whl")
    if(NOT _rc EQUAL 0 OR NOT _wheels)
      message(FATAL_ERROR "maskrt: `pip download ${MASKRT_TENSORRT_HEADERS_WHEEL}` failed (${_err}); set "
                          "TensorRT_ROOT to a TensorRT 10 installation instead")
    endif()
    list(GET _wheels 0 _wheel)
    file(ARCHIVE_EXTRACT INPUT "${_wheel}" DESTINATION "${_deps}" PATTERNS "kernel_lens/include/tensorrt/*.h")
    if(NOT EXISTS "${_include}/NvInfer.h")
      message(FATAL_ERROR "maskrt: ${_wheel} holds no kernel_lens/include/tensorrt/NvInfer.h")
    endif()
  endif()
  set(${out_var} "${_include}" PARENT_SCOPE)
endfunction()
