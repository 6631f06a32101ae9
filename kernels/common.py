"""Facts shared by the kernel modules: interpreter mode and block-size helpers."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _probe_kernel(x_ptr):
    tl.store(x_ptr, 0)


# @triton.jit reads TRITON_INTERPRET when it decorates a function, so this module's kernels
# (and those of every module imported after it in the same process) run in the interpreter
# exactly when the probe was wrapped as an interpreted function.
INTERPRETED: bool = type(_probe_kernel).__name__ == "InterpretedFunction"
