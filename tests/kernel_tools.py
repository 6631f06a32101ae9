"""Helpers of the kernel tests (no tests here): what a real GPU launch would compile.

A launch plan (``fastrobust.kernels.*_launches``) lists each kernel with its arguments. Given
one, these helpers run Triton's own JIT binder — the code ``JITFunction.run`` uses to
specialise a launch (argument types, ``== 1`` and divisibility-by-16 of integers, 16-byte
alignment of pointers, constexprs, ``do_not_specialize``) — for a CUDA target, without a GPU:

* ``variant_key``: the kernel-cache key a launch would use (equal keys = one compiled kernel);
* ``compile_launch``: compile exactly that specialisation to PTX and a cubin (ptxas ships with
  triton), i.e. the code a real launch runs, with its vector loads;
* ``ptxas_usage``: registers, stack frame and spill bytes from ``ptxas -v``. A stack frame
  with no spill stores is local memory that the code asked for (e.g. libdevice's slow paths
  for huge sin/cos arguments keep an array there), not a register spill.

Works in both Triton 3.6 and 3.9 (same binder API). Kernels decorated for the interpreter
are re-wrapped as JITFunctions (same Python function, same ``do_not_specialize``).
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile


def jit_function(kernel):
    from triton.runtime.jit import JITFunction

    if isinstance(kernel, JITFunction):
        return kernel
    return JITFunction(kernel.fn, **kernel.kwargs)  # an InterpretedFunction: same fn and options


@functools.cache
def _binder(kernel, arch: int):
    """(JITFunction, backend, binder) as ``JITFunction.create_binder`` builds them for a device."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    jf = jit_function(kernel)
    backend = make_backend(GPUTarget("cuda", arch, 32))
    return jf, backend, create_function_from_signature(jf.signature, jf.params, backend)


def _bind(launch, arch: int):
    jf, backend, binder = _binder(launch.kernel, arch)
    kwargs = dict(launch.constexprs, num_warps=launch.num_warps)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    return jf, backend, kwargs, bound_args, specialization, options


def variant_key(launch, arch: int = 90) -> str:
    """The kernel name and the cache key a real launch computes (one key, one compilation)."""
    jf, _, _, _, specialization, options = _bind(launch, arch)
    return f"{jf.fn.__name__}:{specialization}{options}"


def compile_launch(launch, arch: int = 90):
    """Compile the launch's exact specialisation for sm_<arch>: Triton's CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jf, backend, kwargs, bound_args, specialization, options = _bind(launch, arch)
    options, signature, constexprs, attrs = jf._pack_args(
        backend, kwargs, bound_args, specialization, options
    )
    src = ASTSource(jf, signature, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options.__dict__)


def ptxas_usage(ptx: str, arch: int = 90) -> dict[str, int]:
    """{'registers', 'stack', 'spill_stores', 'spill_loads'} from ``ptxas -v`` on the PTX."""
    from triton.backends.nvidia.compiler import get_ptxas

    suffix = "a" if arch >= 90 else ""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as src:
        src.write(ptx)
        src.flush()
        log = subprocess.run(
            [get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}{suffix}", src.name, "-o", "/dev/null"],
            capture_output=True,
            text=True,
            check=True,
        ).stderr

    def number(pattern: str) -> int:
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return {
        "registers": number(r"Used (\d+) registers"),
        "stack": number(r"(\d+) bytes stack frame"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
    }
