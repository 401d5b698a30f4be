"""numpy / torch arrays in and out of GGML tensors (host or backend memory).

Shapes: arrays are in numpy order, tensors in ggml order (reversed). Types: an array goes into a
tensor of its exact type; float32 data also goes into F16 / BF16 (converted) and quantized tensors
(quantized by GGML); ``uint8`` raw blocks shaped ``(..., bytes per row)`` go into quantized tensors
as they are. Reading a quantized tensor returns dequantized float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .ggml import describe_tensor, ffi, lib
from .types import (dequantize_blocks, ggml_type_for_dtype, is_quantized, numpy_dtype, quantize, row_size,
                    type_name)

__all__ = ['numpy_shape', 'set_tensor_data', 'get_tensor_data', 'to_numpy_input', 'FRAMEWORKS']

FRAMEWORKS = ('numpy', 'torch')


def numpy_shape(tensor: Any, ndim: int | None = None) -> tuple[int, ...]:
    """numpy-order shape of a tensor: ``ndim`` dimensions (default: ``ggml_n_dims``)."""
    n = ndim if ndim is not None else lib.ggml_n_dims(tensor)
    return tuple(tensor.ne[i] for i in reversed(range(n)))


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    i = 0
    while i < len(shape) - 1 and shape[i] == 1:
        i += 1
    return shape[i:]


def to_numpy_input(array: Any) -> np.ndarray:
    """numpy view of an input array (numpy arrays, CPU torch tensors, anything array-like)."""
    if isinstance(array, np.ndarray):
        return array
    if type(array).__module__.startswith('torch'):
        if array.device.type != 'cpu':
            raise ValueError(f'a torch tensor on {array.device} can only go into a tensor of a GPU '
                             'backend; move it with .cpu() for this backend')
        import torch
        tensor = array.detach()
        if tensor.dtype == torch.bfloat16:
            import ml_dtypes
            return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()
    return np.asarray(array)


def _placement(tensor: Any, shape: tuple[int, ...], label: str, ndim: int | None,
               offset: int | None) -> tuple[tuple[int, ...], int]:
    """The numpy shape an array of ``shape`` must have to go into ``tensor`` (whole, or rows from
    ``offset`` along the outermost dimension), and the byte offset it goes to."""
    full = numpy_shape(tensor, ndim if ndim is not None else 4)
    if offset is None:
        return full, 0
    outer = 3 if ndim is None else ndim - 1
    n_rows = shape[0] if shape else 1
    if offset < 0 or offset + n_rows > tensor.ne[outer]:
        raise ValueError(f'{label}: rows [{offset}, {offset + n_rows}) of the outermost dimension are '
                         f'out of range 0..{tensor.ne[outer]}')
    return (n_rows,) + full[1:], offset * tensor.nb[outer]


def _shape_error(label: str, given: tuple[int, ...], expected: tuple[int, ...]) -> ValueError:
    return ValueError(f'{label}: shape {given} does not match the tensor\'s {expected} '
                      f'(numpy order; ggml order {list(reversed(expected))})')


def _prepare(tensor: Any, array: np.ndarray, label: str, ndim: int | None,
             offset: int | None) -> tuple[np.ndarray, int]:
    """Check and convert ``array`` for ``tensor``; return (contiguous bytes source, byte offset)."""
    t = tensor.type
    expected, byte_offset = _placement(tensor, tuple(array.shape), label, ndim, offset)
    raw_blocks = is_quantized(t) and array.dtype == np.uint8
    if raw_blocks:
        row = row_size(t, expected[-1]) if expected else 0
        expected_raw = expected[:-1] + (row,)
        if _strip_ones(tuple(array.shape)) != _strip_ones(expected_raw):
            raise ValueError(f'{label}: raw {type_name(t)} blocks of shape {tuple(array.shape)}, expected '
                             f'{expected_raw} (numpy order; {row} bytes per row)')
        data = np.ascontiguousarray(array)
    else:
        if _strip_ones(tuple(array.shape)) != _strip_ones(expected):
            raise _shape_error(label, tuple(array.shape), expected)
        data = _convert(array, t, label)
    return data, byte_offset


def _convert(array: np.ndarray, t: int, label: str) -> np.ndarray:
    if is_quantized(t):
        if array.dtype != np.float32:
            raise TypeError(f'{label}: a {type_name(t)} tensor takes float32 data (quantized on the '
                            f'way in) or uint8 raw blocks, got {array.dtype}')
        return quantize(array, t)
    target = numpy_dtype(t)
    if array.dtype == target:
        return np.ascontiguousarray(array)
    if array.dtype == np.float32 and target.itemsize == 2:   # float32 -> F16 / BF16
        return np.ascontiguousarray(array, dtype=target)
    try:
        given = type_name(ggml_type_for_dtype(array.dtype))
    except TypeError:
        given = str(array.dtype)
    raise TypeError(f'{label}: a {type_name(t)} tensor takes {target} data, got {array.dtype} ({given}); '
                    f'convert it first, e.g. array.astype(np.{target})')


def _is_device_torch(array: Any) -> bool:
    return type(array).__module__.startswith('torch') and array.device.type == 'cuda'


def _buffer_is_host(tensor: Any) -> bool:
    buf = _buffer(tensor)
    return buf == ffi.NULL or bool(lib.ggml_backend_buffer_is_host(buf))


def _cudart() -> Any:
    """The CUDA runtime GGML's CUDA backend already loaded (for device-to-device copies)."""
    import ctypes
    import ctypes.util
    for name in ('libcudart.so.13', 'libcudart.so.12', ctypes.util.find_library('cudart') or ''):
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
    raise RuntimeError('the CUDA runtime (libcudart) could not be loaded')


def _device_copy(dst: int, src: int, nbytes: int) -> None:
    import ctypes
    cudart = _cudart()
    cuda_memcpy_device_to_device = 3
    err = cudart.cudaMemcpy(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                            cuda_memcpy_device_to_device)
    if err != 0:
        raise RuntimeError(f'cudaMemcpy device-to-device failed with CUDA error {err}')


_TORCH_TYPES = {'F32': 'float32', 'F16': 'float16', 'BF16': 'bfloat16', 'F64': 'float64',
                'I8': 'int8', 'I16': 'int16', 'I32': 'int32', 'I64': 'int64'}


def _torch_dtype(t: int) -> Any:
    import torch
    from .ggml import GgmlType
    name = _TORCH_TYPES.get(GgmlType(t).name)
    return getattr(torch, name) if name else None


def _set_from_device_torch(tensor: Any, array: Any, label: str, ndim: int | None, offset: int | None) -> bool:
    """Copy a CUDA torch tensor into a GPU-backend tensor without a host round trip, if possible."""
    import torch
    target = _torch_dtype(tensor.type)
    if target is None or _buffer_is_host(tensor):
        return False   # quantized tensors are quantized on the host; host buffers take host data
    src = array.detach()
    if src.dtype != target:
        if not (src.dtype == torch.float32 and target in (torch.float16, torch.bfloat16)):
            raise TypeError(f'{label}: a {type_name(tensor.type)} tensor takes {target} data, '
                            f'got {src.dtype}')
        src = src.to(target)
    src = src.contiguous()
    expected, byte_offset = _placement(tensor, tuple(src.shape), label, ndim, offset)
    if _strip_ones(tuple(src.shape)) != _strip_ones(expected):
        raise _shape_error(label, tuple(src.shape), expected)
    nbytes = src.numel() * src.element_size()
    torch.cuda.synchronize(src.device)
    _device_copy(int(ffi.cast('uintptr_t', tensor.data)) + byte_offset, src.data_ptr(), nbytes)
    return True


def set_tensor_data(tensor: Any, array: Any, label: str = 'tensor', ndim: int | None = None,
                    offset: int | None = None) -> None:
    """Copy ``array`` (numpy order) into ``tensor``, converting as the module docstring says.

    ``offset`` writes rows starting there along the outermost ggml dimension (numpy's first axis);
    ``ndim`` is the tensor's declared number of dimensions (for the meaning of "outermost").
    """
    _check_allocated(tensor, label)
    if _is_device_torch(array):
        if _set_from_device_torch(tensor, array, label, ndim, offset):
            return
        array = array.cpu()
    data, byte_offset = _prepare(tensor, to_numpy_input(array), label, ndim, offset)
    if byte_offset + data.nbytes > lib.ggml_nbytes(tensor):
        raise ValueError(f'{label}: {data.nbytes} bytes at offset {byte_offset} exceed the tensor '
                         f'({describe_tensor(tensor)}, {lib.ggml_nbytes(tensor)} bytes)')
    if data.nbytes == 0:
        return
    if _buffer(tensor) != ffi.NULL:
        lib.ggml_backend_tensor_set(tensor, ffi.from_buffer(data), byte_offset, data.nbytes)
    else:
        ffi.memmove(ffi.cast('char *', tensor.data) + byte_offset, ffi.from_buffer(data), data.nbytes)


def _buffer(tensor: Any) -> Any:
    return tensor.view_src.buffer if tensor.view_src != ffi.NULL else tensor.buffer


def _check_allocated(tensor: Any, label: str) -> None:
    # GGML asserts this inside C++ (ggml-backend.cpp), where no guard can catch it: check first.
    if tensor.data == ffi.NULL:
        raise ValueError(f'{label}: the tensor has no memory yet (its graph or buffer is not allocated)')


def get_tensor_data(tensor: Any, framework: str = 'numpy', ndim: int | None = None,
                    label: str = 'tensor', device: str | None = None) -> Any:
    """Copy ``tensor`` out as a numpy array (or torch tensor) in numpy order; quantized → float32.

    With ``framework='torch'`` and a tensor in GPU memory, the result is a torch tensor on that
    GPU (``device``), copied device to device.
    """
    _check_allocated(tensor, label)
    if framework == 'torch' and device is not None and not _buffer_is_host(tensor) \
            and lib.ggml_is_contiguous(tensor) and _torch_dtype(tensor.type) is not None:
        import torch
        on_device = torch.empty(numpy_shape(tensor, ndim), dtype=_torch_dtype(tensor.type), device=device)
        _device_copy(on_device.data_ptr(), int(ffi.cast('uintptr_t', tensor.data)), lib.ggml_nbytes(tensor))
        return on_device
    t = tensor.type
    shape = numpy_shape(tensor, ndim)
    if lib.ggml_is_contiguous(tensor):
        nbytes = lib.ggml_nbytes(tensor)
        raw = np.empty(nbytes, dtype=np.uint8)
        _read(tensor, raw, nbytes)
        if is_quantized(t):
            row = row_size(t, tensor.ne[0])
            out = dequantize_blocks(raw.reshape(-1, row), t).reshape(shape)
        else:
            out = raw.view(numpy_dtype(t)).reshape(shape)
    else:
        if is_quantized(t):
            raise ValueError(f'cannot read a non-contiguous quantized tensor ({describe_tensor(tensor)}); '
                             'make it contiguous in the graph (ggml_cont)')
        dtype = numpy_dtype(t)
        extent = sum((tensor.ne[i] - 1) * tensor.nb[i] for i in range(4)) + dtype.itemsize
        raw = np.empty(-(-extent // dtype.itemsize) * dtype.itemsize, dtype=np.uint8)
        _read(tensor, raw, extent)
        strides = tuple(tensor.nb[i] for i in reversed(range(4)))
        full = np.lib.stride_tricks.as_strided(raw.view(dtype), shape=numpy_shape(tensor, 4), strides=strides)
        out = np.ascontiguousarray(full).reshape(shape)
    if framework == 'torch':
        import torch
        if out.dtype.name == 'bfloat16':
            result = torch.from_numpy(out.view(np.int16)).view(torch.bfloat16)
            return result.to(device) if device is not None else result
        result = torch.from_numpy(out)
        return result.to(device) if device is not None else result
    return out


def _read(tensor: Any, out: np.ndarray, nbytes: int) -> None:
    if nbytes == 0:
        return
    if _buffer(tensor) != ffi.NULL:
        lib.ggml_backend_tensor_get(tensor, ffi.from_buffer(out), 0, nbytes)
    else:
        ffi.memmove(ffi.from_buffer(out), tensor.data, nbytes)
