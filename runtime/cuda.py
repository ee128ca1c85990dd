"""Compile CUDA C from `codegen.cuda` with nvcc (through pycuda) and launch kernels on a stream.

A `CudaLibrary` is self-describing (the codegen's JSON metadata travels with the cubin), so an
artifact can be loaded without its IR. Grids and temporary sizes are expressions of the dims,
evaluated at launch time. Without pycuda or a GPU every entry point raises one clear MlcError;
`cuda_unavailable()` says why, for tests to skip on.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from ..ir import arith
from ..ir.diagnostics import MlcError
from ..ir.dtype import to_numpy
from ..ir.expr import Expr, Var
from ..ir.tir import PrimFunc
from .abi import expr_from_json
from .cuda import CudaSource, lower_to_cuda

INDEX_LIMIT = 2**31


@cache
def cuda_unavailable() -> str | None:
    """None when pycuda and a GPU are usable, else the reason."""
    try:
        import pycuda.driver as drv
    except ImportError as e:
        return f"pycuda is not installed ({e})"
    try:
        drv.init()
        if drv.Device.count() == 0:
            return "no CUDA device"
    except Exception as e:  # noqa: BLE001 - the driver raises its own error types
        return f"CUDA driver unusable: {e}"
    return None


@cache
def cuda_context() -> Any:
    """The primary context of device 0, made current once for this process."""
    reason = cuda_unavailable()
    if reason is not None:
        raise MlcError(f"target cuda needs pycuda and an NVIDIA GPU: {reason}")
    import pycuda.driver as drv

    ctx = drv.Device(0).retain_primary_context()
    ctx.push()
    import atexit

    atexit.register(ctx.pop)
    return ctx


def device_arch() -> str:
    import pycuda.driver as drv

    cuda_context()
    major, minor = drv.Device(0).compute_capability()
    # Hopper's wgmma/setmaxnreg exist only in the arch-specific target sm_90a
    return "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"


def compile_source(src: CudaSource) -> bytes:
    """nvcc: CUDA C -> cubin for `src.arch`."""
    cuda_context()
    from pycuda.compiler import compile as nvcc_compile

    try:
        # an arch-specific target (sm_90a) is built as -arch compute_90a -code sm_90a
        arch, code = (f"compute_{src.arch[3:]}", src.arch) if src.arch.endswith("a") else (src.arch, None)
        return bytes(nvcc_compile(src.source, no_extern_c=True, arch=arch, code=code, options=["-O3", "-std=c++17", "-diag-suppress=177,550"]))
    except Exception as e:  # noqa: BLE001 - pycuda reports nvcc failures as CompileError
        raise MlcError(f"codegen cuda: nvcc failed: {str(e)[:4000]}") from None


def _int_fn(e: Expr) -> Callable[[dict[str, int]], int]:
    from ..runtime.executor import compile_int

    return compile_int(arith.simplify(e))


@dataclass
class _Launch:
    fn: Any
    grid: list[Callable[[dict[str, int]], int]]
    block: tuple[int, int, int]
    shared: int


@dataclass
class CudaKernel:
    """One PrimFunc on the GPU: `launch` takes device pointers, `__call__` numpy arrays (copied)."""

    name: str
    params: list[tuple[str, str, tuple[Expr, ...]]]
    dims: list[str]
    num_outputs: int
    temps: list[tuple[str, str, Callable[[dict[str, int]], int]]]  # name, dtype, element count
    launches: list[_Launch]
    _fmt: str = field(init=False)

    def __post_init__(self) -> None:
        self._fmt = "P" * (len(self.params) + len(self.temps)) + "q" * len(self.dims)

    def temp_bytes(self, env: dict[str, int]) -> list[int]:
        return [max(1, f(env)) * to_numpy(dt).itemsize for _, dt, f in self.temps]

    def launch(self, ptrs: Sequence[int], env: dict[str, int], stream: Any, workspace: Callable[[list[int]], list[int]],
               tape: list[tuple[Any, ...]] | None = None) -> None:
        """Launch every stage kernel; `workspace(sizes)` returns device pointers for the temporaries.
        With `tape`, each launch is also recorded as (function, grid, block, shared bytes, arg format,
        number of pointer args, args) so that a runtime can replay it."""
        temps = workspace(self.temp_bytes(env)) if self.temps else []
        args = (*ptrs, *temps, *[env[d] for d in self.dims])
        for ln in self.launches:
            grid = tuple(g(env) for g in ln.grid)
            if grid[0] <= 0 or grid[1] <= 0 or grid[2] <= 0:
                continue  # an empty dim: nothing to compute
            if grid[0] >= INDEX_LIMIT or grid[1] > 65535 or grid[2] > 65535:
                raise MlcError(f"kernel {self.name}: grid {grid} exceeds the device limits")
            ln.fn._launch_kernel(grid, ln.block, struct.pack(self._fmt, *args), ln.shared, stream)
            if tape is not None:
                tape.append((ln.fn, grid, ln.block, ln.shared, self._fmt, len(ptrs) + len(temps), args))

    def dim_sources(self) -> list[tuple[int, int] | None]:
        """Per dim: (buffer index, axis) whose extent is that dim, None when only a scalar gives it."""
        out: list[tuple[int, int] | None] = []
        for d in self.dims:
            src = None
            for i, (_, _, shape) in enumerate(self.params):
                ax = next((a for a, x in enumerate(shape) if isinstance(x, Var) and x.name == d), None)
                if ax is not None:
                    src = (i, ax)
                    break
            out.append(src)
        return out

    def bind_dims(self, shapes: Sequence[tuple[int, ...]], given: Mapping[str, int] | None = None) -> dict[str, int]:
        env = {k: int(v) for k, v in (given or {}).items()}
        later = []
        for (pname, _, shape), got in zip(self.params, shapes, strict=True):
            if len(got) != len(shape):
                raise MlcError(f"kernel {self.name}: {pname} must have {len(shape)} dims, got shape {tuple(got)}")
            for d, g in zip(shape, got):
                if isinstance(d, Var):
                    if env.setdefault(d.name, g) != g:
                        raise MlcError(f"kernel {self.name}: {pname} has {d.name} = {g}, expected {env[d.name]}")
                else:
                    later.append((pname, d, g))
        for pname, d, g in later:
            if arith.evaluate(d, env) != g:
                raise MlcError(f"kernel {self.name}: {pname} has a dim {g}, expected {arith.evaluate(d, env)}")
        missing = [d for d in self.dims if d not in env]
        if missing:
            raise MlcError(f"kernel {self.name}: value of {', '.join(missing)} not given and not a buffer dim")
        return env

    def __call__(self, arrays: Sequence[np.ndarray], dims: Mapping[str, int] | None = None) -> None:
        """Run on host arrays (copied to the device and the outputs back): for tests and tools."""
        import pycuda.driver as drv

        if len(arrays) != len(self.params):
            raise MlcError(f"kernel {self.name} takes {len(self.params)} buffers, got {len(arrays)}")
        for (pname, dt, _), a in zip(self.params, arrays):
            if not isinstance(a, np.ndarray) or a.dtype != to_numpy(dt):
                raise MlcError(f"kernel {self.name}: {pname} must be a {to_numpy(dt)} array")
            if a.size >= INDEX_LIMIT:
                raise MlcError(f"kernel {self.name}: {pname} has 2^31 elements or more (32-bit indices)")
        env = self.bind_dims([a.shape for a in arrays], dims)
        bufs = [drv.to_device(np.ascontiguousarray(a)) if a.nbytes else drv.mem_alloc(1) for a in arrays]
        held: list[Any] = []

        def workspace(sizes: list[int]) -> list[int]:
            held.extend(drv.mem_alloc(s) for s in sizes)
            return [int(h) for h in held]

        self.launch([int(b) for b in bufs], env, None, workspace)
        drv.Context.synchronize()
        first_out = len(arrays) - self.num_outputs
        for a, b in zip(arrays[first_out:], bufs[first_out:]):
            if a.nbytes:
                out = np.empty_like(a)
                drv.memcpy_dtoh(out, b)
                a[...] = out


class CudaLibrary:
    """Kernels loaded from a cubin plus the codegen's metadata."""

    def __init__(self, cubin: bytes, metadata: str, source: str = ""):
        cuda_context()
        import pycuda.driver as drv

        self.cubin, self.metadata, self.source = cubin, metadata, source
        try:
            meta = json.loads(metadata)
            self._meta = {k["name"]: k for k in meta["kernels"]}
        except (ValueError, KeyError, TypeError) as e:
            raise MlcError(f"corrupt CUDA kernel metadata: {e}") from None
        try:
            self._module = drv.module_from_buffer(cubin)
        except drv.Error as e:
            raise MlcError(f"cannot load CUDA module: {e}") from None
        self._cache: dict[str, CudaKernel] = {}

    @property
    def names(self) -> list[str]:
        return list(self._meta)

    def kernel(self, name: str) -> CudaKernel:
        k = self._cache.get(name)
        if k is not None:
            return k
        import pycuda.driver as drv

        m = self._meta.get(name)
        if m is None:
            raise MlcError(f"no kernel named {name!r} (have: {', '.join(self._meta) or 'none'})")
        launches = []
        for ln in m["launches"]:
            fn = self._module.get_function(ln["symbol"])
            shared = int(ln["shared_bytes"])
            if shared > 48 * 1024:
                fn.set_attribute(drv.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, shared)
            launches.append(_Launch(fn, [_int_fn(expr_from_json(g)) for g in ln["grid"]], tuple(ln["block"]), shared))
        temps = []
        for t in m["temps"]:
            size: Expr = expr_from_json(1)
            for d in t["shape"]:
                size = size * expr_from_json(d)
            temps.append((t["name"], t["dtype"], _int_fn(size)))
        params = [(p["name"], p["dtype"], tuple(expr_from_json(d) for d in p["shape"])) for p in m["params"]]
        k = CudaKernel(name, params, list(m["dims"]), int(m["num_outputs"]), temps, launches)
        self._cache[name] = k
        return k


def build_cuda(funcs: Sequence[PrimFunc], arch: str | None = None, schedule: bool = True,
               gemm_config: tuple[int, ...] | None = None) -> tuple[CudaSource, bytes]:
    """Default GPU schedules for unscheduled PrimFuncs, CUDA C, and its cubin."""
    from ..passes.schedule.gpu_rules import default_gpu_schedule

    cuda_context()
    prims = [default_gpu_schedule(f) for f in funcs] if schedule else list(funcs)
    src = lower_to_cuda(prims, arch or device_arch(), gemm_config)
    return src, compile_source(src)


def compile_cuda(funcs: Sequence[PrimFunc], arch: str | None = None, schedule: bool = True,
                 gemm_config: tuple[int, ...] | None = None) -> CudaLibrary:
    """Compile PrimFuncs for the GPU and load them."""
    src, cubin = build_cuda(funcs, arch, schedule, gemm_config)
    return CudaLibrary(cubin, src.metadata(), src.source)
