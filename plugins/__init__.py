"""maskrt's TensorRT plugins: one CUDA library (libmaskrt_plugins.so) holding every custom op, plus a CPU build of
the same kernel cores (libmaskrt_host.so). Both are built by plugins/CMakeLists.txt when maskrt is installed. Ops live
in submodules (``maskrt.plugins.roi_align``, ``maskrt.plugins.nms``), each with its spec (``SPECS`` maps the ONNX
op_type to it).
"""

from maskrt.plugins._library import (
    build_info,
    host_library_path,
    host_threads,
    library_path,
    load_into,
    triton_library_path,
)
from maskrt.plugins.nms.spec import NMSSpec
from maskrt.plugins.roi_align.spec import RoIAlignSpec

#: ONNX op_type (= plugin name) -> the spec class of every maskrt op.
SPECS: dict[str, type[RoIAlignSpec] | type[NMSSpec]] = {spec.IDENTITY.name: spec for spec in (RoIAlignSpec, NMSSpec)}

__all__ = ["SPECS", "NMSSpec", "RoIAlignSpec", "build_info", "host_library_path", "host_threads", "library_path",
           "load_into", "triton_library_path"]
