"""How nn.RNN and nn.RNNCell decide things we must decide the same way: the dtype names in
their error messages, when float32 may use TF32, and what autocast casts."""
import torch

_SCALAR_NAME = {torch.float64: "Double", torch.float32: "Float", torch.float16: "Half",
                torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int",
                torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
                torch.bool: "Bool", torch.complex64: "ComplexFloat",
                torch.complex128: "ComplexDouble"}


def scalar_name(dtype: torch.dtype) -> str:
    """The C++ ScalarType name PyTorch's own error messages use ("Float", "Double", ...)."""
    return _SCALAR_NAME.get(dtype, str(dtype).replace("torch.", "").capitalize())


def tf32_allowed() -> bool:
    """TF32 for float32 the way nn.RNN decides it: cuDNN's flag while cuDNN is enabled, else
    the matmul flag its native implementation's GEMMs follow."""
    if torch.backends.cudnn.enabled:
        return torch.backends.cudnn.allow_tf32
    return torch.backends.cuda.matmul.allow_tf32


def autocast_dtype(device_type: str):
    """The autocast dtype if autocast is on for this device type, else None."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def autocast_cast(t, dtype):
    """Autocast's rule: floating-point tensors other than float64 go to the autocast dtype."""
    if isinstance(t, list):
        return [autocast_cast(w, dtype) for w in t]
    if t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)
