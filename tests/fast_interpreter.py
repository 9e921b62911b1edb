"""A shortcut in Triton's interpreter for the tests: jit functions called from a kernel skip
re-patching triton.language when the launch has patched it already.

Triton's interpreter (3.6 and 3.9) calls `_patch_lang(fn)` at every call of a jit function
from a kernel (InterpretedFunction.__call__): it scans every member of triton.language with
inspect.getmembers to wrap builtins that the kernel's launch (GridExecutor.__call__) wrapped
already. In our kernels that scan was ~28% of the interpreter's time. Here a device call whose
module sees triton.language only as `triton.language` (not triton.language.core), made while
the launch's patch is in place (tl.load no longer a builtin), runs without it; any other call
runs Triton's own __call__. What the function computes is unchanged. install() checks the
private pieces it relies on and does nothing if they are not as expected.
"""
import triton.language as tl
import triton.runtime.interpreter as interp

_plain = {}  # id(function) -> whether its globals see triton.language as tl only


def _sees_tl_only(fn) -> bool:
    key = id(fn)
    if key not in _plain:
        _plain[key] = not any(value is tl.core for value in fn.__globals__.values())
    return _plain[key]


def install() -> bool:
    cls = interp.InterpretedFunction
    if not all(hasattr(interp, n) for n in ("_patch_lang", "InterpreterError")) or \
            not hasattr(cls, "rewrite") or getattr(cls.__call__, "_fast", False):
        return False
    original = cls.__call__

    def __call__(self, *args, **kwargs):
        if tl.core.is_builtin(tl.load) or not _sees_tl_only(self.fn):
            return original(self, *args, **kwargs)  # not inside a patched launch
        fn = self.rewrite()
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise interp.InterpreterError(repr(e)) from e

    __call__._fast = True
    cls.__call__ = __call__
    return True
