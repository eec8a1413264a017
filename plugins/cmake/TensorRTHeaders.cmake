# maskrt_find_tensorrt_headers(<var>): the folder holding NvInfer.h, in this order:
#   1. TensorRT_ROOT (CMake variable or environment; also TENSORRT_ROOT): <root>/include or <root>
#   2. the system include path (Debian/Ubuntu/JetPack packages: /usr/include/<arch>-linux-gnu, /usr/include)
#   3. with MASKRT_FETCH_TENSORRT_HEADERS, NVIDIA's Apache-2.0 TensorRT 10 headers from the pinned wheel below, fetched
#      with `pip download --no-deps --require-hashes` (never installed) into MASKRT_TENSORRT_HEADERS_DIR (default
#      <build>/_deps/tensorrt-headers).
# Every header folder's NvInferVersion.h is read: 1 and 2 must be TensorRT 10 or 11 (an older major stops, a newer one
# warns); 3 must be exactly MASKRT_TENSORRT_HEADERS_VERSION, from a wheel whose sha256 is MASKRT_TENSORRT_HEADERS_SHA256.
# The plugin library only needs the headers: it does not link libnvinfer.
# The functions run in a project and in script mode (cmake -P; tests/test_header_fetch.py).

# The pinned header source, its one definition: kernel-lens 2.0.1 (PyPI; not an NVIDIA package) carries NVIDIA's
# Apache-2.0 TensorRT 10.14.1 headers in kernel_lens/include/tensorrt. The sha256 is that of the wheel file
# kernel_lens-2.0.1-py3-none-any.whl. -D overrides all three (a different wheel needs its own hash and version).
if(NOT DEFINED MASKRT_TENSORRT_HEADERS_WHEEL)
  set(MASKRT_TENSORRT_HEADERS_WHEEL "kernel-lens==2.0.1")
endif()
if(NOT DEFINED MASKRT_TENSORRT_HEADERS_SHA256)
  set(MASKRT_TENSORRT_HEADERS_SHA256 "07cc714e8b5e7f34b672f7c7fad93febe7c747be5837ba276b1527370134ffe0")
endif()
if(NOT DEFINED MASKRT_TENSORRT_HEADERS_VERSION)
  set(MASKRT_TENSORRT_HEADERS_VERSION "10.14.1")
endif()
# The TensorRT majors whose IPluginV3 API the plugins are written and compiled against: 10 (10.14.1, the fetched
# headers) and 11 (11.1, NVIDIA's open-source repository's include/; docs/plugins.md says what differs).
set(MASKRT_TENSORRT_MAJOR 10)
set(MASKRT_TENSORRT_NEWEST_MAJOR 11)

# maskrt_check_sha256(<file> <expected>): stops, naming both hashes, unless <file>'s sha256 is <expected>.
function(maskrt_check_sha256 file expected)
  file(SHA256 "${file}" _actual)
  string(TOLOWER "${expected}" _expected)
  if(NOT _actual STREQUAL _expected)
    message(FATAL_ERROR "maskrt: sha256 mismatch for ${file}\n"
                        "  expected ${_expected} (MASKRT_TENSORRT_HEADERS_SHA256)\n"
                        "  actual   ${_actual}\n"
                        "The file is not the pinned ${MASKRT_TENSORRT_HEADERS_WHEEL} wheel: it is not used. "
                        "Set TensorRT_ROOT to a TensorRT 10 installation instead")
  endif()
endfunction()

# maskrt_tensorrt_headers_version(<include_dir> <var>): "MAJOR.MINOR.PATCH" from <include_dir>/NvInferVersion.h,
# whose NV_TENSORRT_MAJOR/MINOR/PATCH are numbers or name one macro holding the number (10.x: TRT_MAJOR_ENTERPRISE,
# TensorRT-RTX: TRT_MAJOR_RTX). Stops when the file is missing or unreadable.
function(maskrt_tensorrt_headers_version include_dir out_var)
  set(_file "${include_dir}/NvInferVersion.h")
  if(NOT EXISTS "${_file}")
    message(FATAL_ERROR "maskrt: ${include_dir} holds NvInfer.h but no NvInferVersion.h: not TensorRT's headers")
  endif()
  file(READ "${_file}" _text)
  set(_version "")
  foreach(_part IN ITEMS MAJOR MINOR PATCH)
    if(NOT _text MATCHES "#[ \t]*define[ \t]+NV_TENSORRT_${_part}[ \t]+([A-Za-z0-9_]+)")
      message(FATAL_ERROR "maskrt: ${_file} defines no NV_TENSORRT_${_part}")
    endif()
    set(_value "${CMAKE_MATCH_1}")
    if(NOT _value MATCHES "^[0-9]+$")
      if(NOT _text MATCHES "#[ \t]*define[ \t]+${_value}[ \t]+([0-9]+)")
        message(FATAL_ERROR "maskrt: ${_file}: NV_TENSORRT_${_part} is ${_value}, which it does not define as a number")
      endif()
      set(_value "${CMAKE_MATCH_1}")
    endif()
    list(APPEND _version "${_value}")
  endforeach()
  list(JOIN _version "." _version)
  set(${out_var} "${_version}" PARENT_SCOPE)
endfunction()

# maskrt_check_tensorrt_major(<include_dir> <var>): headers found in TensorRT_ROOT or on the system path must be
# TensorRT 10 or 11: older stops (no IPluginV3), newer warns (not compiled against). <var>: the version.
function(maskrt_check_tensorrt_major include_dir out_var)
  maskrt_tensorrt_headers_version("${include_dir}" _version)
  string(REGEX MATCH "^[0-9]+" _major "${_version}")
  file(READ "${include_dir}/NvInferVersion.h" _text)
  set(_what "TensorRT ${_version}")
  if(_text MATCHES "define[ \t]+NV_TENSORRT_MAJOR[ \t]+TRT_MAJOR_RTX")
    set(_what "TensorRT-RTX ${_version} (not TensorRT)")
  endif()
  if(_major LESS MASKRT_TENSORRT_MAJOR OR _what MATCHES "RTX")
    message(FATAL_ERROR "maskrt: the TensorRT headers in ${include_dir} are ${_what}; the plugins need TensorRT "
                        "${MASKRT_TENSORRT_MAJOR} headers (IPluginV3). Set TensorRT_ROOT to a TensorRT "
                        "${MASKRT_TENSORRT_MAJOR}.x installation (the library also loads into TensorRT-RTX)")
  elseif(_major GREATER MASKRT_TENSORRT_NEWEST_MAJOR)
    message(WARNING "maskrt: the TensorRT headers in ${include_dir} are ${_what}; maskrt is compiled against "
                    "TensorRT ${MASKRT_TENSORRT_MAJOR} and ${MASKRT_TENSORRT_NEWEST_MAJOR}: building anyway")
  endif()
  message(STATUS "maskrt: ${_what} headers in ${include_dir}")
  set(${out_var} "${_version}" PARENT_SCOPE)
endfunction()

# maskrt_fetch_tensorrt_headers(<deps_dir> <var>): the include folder of the pinned wheel's headers, extracted into
# <deps_dir>. The wheel's sha256 is checked by pip (--require-hashes) and again here, and the extracted
# NvInferVersion.h must declare MASKRT_TENSORRT_HEADERS_VERSION. Each configure re-checks what an earlier one left:
# the kept wheel's sha256 (fetched again on a mismatch), the stamp <deps_dir>/verified.txt naming the pin the headers
# were extracted for (extracted again from the verified wheel otherwise) and the headers' version.
function(maskrt_fetch_tensorrt_headers deps_dir out_var)
  set(_include "${deps_dir}/kernel_lens/include/tensorrt")
  set(_stamp "${deps_dir}/verified.txt")
  string(TOLOWER "${MASKRT_TENSORRT_HEADERS_SHA256}" _sha256)
  set(_pin "${MASKRT_TENSORRT_HEADERS_WHEEL} sha256=${_sha256} version=${MASKRT_TENSORRT_HEADERS_VERSION}")

  string(LENGTH "${_sha256}" _length)
  if(NOT _sha256 MATCHES "^[0-9a-f]+$" OR NOT _length EQUAL 64)
    message(FATAL_ERROR "maskrt: MASKRT_TENSORRT_HEADERS_SHA256 is '${_sha256}', not a sha256")
  endif()

  # What an earlier configure left: the wheel counts only while it (alone) has the pinned hash, the extracted headers
  # only while the stamp names this pin.
  set(_wheel_ok FALSE)
  file(GLOB _wheels "${deps_dir}/wheel/*.whl")
  list(LENGTH _wheels _count)
  if(_count EQUAL 1)
    file(SHA256 "${_wheels}" _actual)
    if(_actual STREQUAL _sha256)
      set(_wheel_ok TRUE)
    endif()
  endif()
  set(_stamped "")
  if(EXISTS "${_stamp}")
    file(READ "${_stamp}" _stamped)
    string(STRIP "${_stamped}" _stamped)
  endif()

  if(_wheel_ok AND _stamped STREQUAL _pin AND EXISTS "${_include}/NvInfer.h")
    set(_fresh FALSE)
  elseif(_wheel_ok)
    message(STATUS "maskrt: headers in ${deps_dir} not verified for ${_pin}: extracting them again from its wheel")
    file(REMOVE_RECURSE "${deps_dir}/kernel_lens" "${_stamp}")
    set(_fresh TRUE)
  else()
    if(EXISTS "${deps_dir}/wheel" OR EXISTS "${deps_dir}/kernel_lens")
      message(STATUS "maskrt: ${deps_dir} does not hold the verified pinned wheel (${_pin}): fetching it again")
    endif()
    file(REMOVE_RECURSE "${deps_dir}/wheel" "${deps_dir}/kernel_lens" "${_stamp}")
    find_package(Python3 COMPONENTS Interpreter REQUIRED)
    message(STATUS "maskrt: no TensorRT install found; fetching TensorRT ${MASKRT_TENSORRT_HEADERS_VERSION} headers "
                   "from ${MASKRT_TENSORRT_HEADERS_WHEEL} (sha256 ${_sha256})")
    # pip checks the hash before it saves the file and never builds an sdist (--only-binary); the file is checked
    # again below, whatever pip did.
    file(WRITE "${deps_dir}/requirements.txt" "${MASKRT_TENSORRT_HEADERS_WHEEL} --hash=sha256:${_sha256}\n")
    execute_process(
      COMMAND ${Python3_EXECUTABLE} -m pip download --no-deps --only-binary :all: --require-hashes
              --disable-pip-version-check --quiet -r "${deps_dir}/requirements.txt" -d "${deps_dir}/wheel"
      RESULT_VARIABLE _rc OUTPUT_VARIABLE _err ERROR_VARIABLE _err)
    string(STRIP "${_err}" _err)
    file(GLOB _wheels "${deps_dir}/wheel/*.whl")
    list(LENGTH _wheels _count)
    if(NOT _rc EQUAL 0 OR NOT _count EQUAL 1)
      message(FATAL_ERROR "maskrt: `pip download ${MASKRT_TENSORRT_HEADERS_WHEEL}` (sha256 ${_sha256}) failed:\n"
                          "${_err}\nSet TensorRT_ROOT to a TensorRT 10 installation instead")
    endif()
    maskrt_check_sha256("${_wheels}" "${_sha256}")
    set(_fresh TRUE)
  endif()
  if(_fresh)
    # The archive's timestamps are kept: headers extracted again do not make the plugins recompile.
    file(ARCHIVE_EXTRACT INPUT "${_wheels}" DESTINATION "${deps_dir}" PATTERNS "kernel_lens/include/tensorrt/*.h")
    if(NOT EXISTS "${_include}/NvInfer.h")
      message(FATAL_ERROR "maskrt: ${_wheels} holds no kernel_lens/include/tensorrt/NvInfer.h")
    endif()
  endif()

  maskrt_tensorrt_headers_version("${_include}" _version)
  if(NOT _version STREQUAL MASKRT_TENSORRT_HEADERS_VERSION)
    file(REMOVE "${_stamp}")
    message(FATAL_ERROR "maskrt: the headers of ${MASKRT_TENSORRT_HEADERS_WHEEL} in ${_include} declare TensorRT "
                        "${_version} (NvInferVersion.h), not the pinned ${MASKRT_TENSORRT_HEADERS_VERSION} "
                        "(MASKRT_TENSORRT_HEADERS_VERSION)")
  endif()
  if(_fresh)
    file(WRITE "${_stamp}" "${_pin}\n")
  endif()
  message(STATUS "maskrt: TensorRT ${_version} headers from ${MASKRT_TENSORRT_HEADERS_WHEEL} "
                 "(sha256 ${_sha256} verified) in ${_include}")
  set(${out_var} "${_include}" PARENT_SCOPE)
endfunction()

function(maskrt_find_tensorrt_headers out_var)
  set(_roots ${TensorRT_ROOT} $ENV{TensorRT_ROOT} $ENV{TENSORRT_ROOT})
  # A folder found for other roots (or none) by an earlier configure is looked for again.
  if(DEFINED MASKRT_TENSORRT_ROOTS_SEARCHED AND NOT "${MASKRT_TENSORRT_ROOTS_SEARCHED}" STREQUAL "${_roots}")
    unset(TensorRT_INCLUDE_DIR CACHE)
  endif()
  set(MASKRT_TENSORRT_ROOTS_SEARCHED "${_roots}" CACHE INTERNAL "TensorRT_ROOT of the last header search")
  if(_roots)
    # Only the roots: a wrong TensorRT_ROOT stops rather than falling back to other headers.
    find_path(TensorRT_INCLUDE_DIR NvInfer.h HINTS ${_roots} PATH_SUFFIXES include NO_DEFAULT_PATH
              DOC "Folder holding TensorRT's NvInfer.h")
  else()
    find_path(TensorRT_INCLUDE_DIR NvInfer.h DOC "Folder holding TensorRT's NvInfer.h")
  endif()
  if(TensorRT_INCLUDE_DIR)
    maskrt_check_tensorrt_major("${TensorRT_INCLUDE_DIR}" _version)
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
  if(NOT MASKRT_TENSORRT_HEADERS_DIR)
    set(MASKRT_TENSORRT_HEADERS_DIR "${CMAKE_BINARY_DIR}/_deps/tensorrt-headers")
  endif()
  maskrt_fetch_tensorrt_headers("${MASKRT_TENSORRT_HEADERS_DIR}" _include)
  set(${out_var} "${_include}" PARENT_SCOPE)
endfunction()
