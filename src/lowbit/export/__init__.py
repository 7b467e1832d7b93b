"""Shipping trained models: bit-packed model files, ONNX export with integer weights, and the checks that the
exported model computes what the trained one does."""

from .bitpack import pack_bits, packed_nbytes, unpack_bits
from .errors import ExportError, PackedFileError
from .from_checkpoint import ExportResult, export_checkpoint, verify_export
from .frozen import FrozenCodes
from .onnx_export import OnnxExport, export_onnx
from .packed import PackedInfo, load_packed, packed_info, read_packed_header, save_packed
from .verify import OnnxParity, onnx_parity, runtime_kernels

__all__ = [
    "save_packed",
    "load_packed",
    "read_packed_header",
    "packed_info",
    "PackedInfo",
    "FrozenCodes",
    "export_onnx",
    "OnnxExport",
    "onnx_parity",
    "OnnxParity",
    "runtime_kernels",
    "export_checkpoint",
    "verify_export",
    "ExportResult",
    "ExportError",
    "PackedFileError",
    "pack_bits",
    "unpack_bits",
    "packed_nbytes",
]
