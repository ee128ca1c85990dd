"""The cuda device: cubins loaded with pycuda, kernels launched on a stream, device memory.

A `CudaLibrary` is self-describing (the codegen's JSON metadata travels with the cubin), so an
artifact can be loaded without its IR. Grids and temporary sizes are expressions of the dims,
evaluated at launch time. Building needs only nvcc (codegen/cuda_jit.py); loading and running need
pycuda and a GPU, and without them every entry point raises one clear MlcError
(`cuda_unavailable()` says why, for tests to skip on).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
from mlc.codegen.abi import expr_from_json
from mlc.codegen.cuda_jit import build_cuda
from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.dtype import to_numpy
from mlc.ir.expr import Expr, Var
from mlc.ir.module import Module
from mlc.ir.target import Target
from mlc.ir.tir import PrimFunc

from .device import Compiled, Library
from .executor import compile_int

if TYPE_CHECKING:
    from .artifact import Artifact

CUDA_SECTIONS = ("cuda_source", "cubin", "cuda_meta")
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
    """GPU 0's arch, as the codegen names it (what a cubin loaded here must be built for)."""
    cuda_context()
    import pycuda.driver as drv

    major, minor = drv.Device(0).compute_capability()
    # Hopper's wgmma/setmaxnreg exist only in the arch-specific target sm_90a
    return "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"


def index_error_message(word: np.ndarray, names: Sequence[str]) -> str | None:
    """The CPU's message for a failed check_range from the device error word (codegen/cuda_expr.py's
    PRELUDE: failed, kernel position, value, lo, hi as 64-bit words), None when nothing failed."""
    if not int(word[0]):
        return None
    kid = int(word[1])
    v, lo, hi = (int(x) for x in np.asarray(word[2:5], np.uint64).view(np.int64))
    name = names[kid] if 0 <= kid < len(names) else "?"
    return f"kernel {name}: index {v} out of range [{lo}, {hi})"


def int_fn(e: Expr) -> Callable[[dict[str, int]], int]:
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
    check: Callable[[], None] | None = None  # raises a failed index check (read after the stream is synchronized)
    _fmt: str = field(init=False)

    def __post_init__(self) -> None:
        self._fmt = "P" * (len(self.params) + len(self.temps)) + "q" * len(self.dims)

    @property
    def param_shapes(self) -> list[tuple[Expr, ...]]:
        return [shape for _, _, shape in self.params]

    def temp_bytes(self, env: dict[str, int]) -> list[int]:
        return [max(1, f(env)) * to_numpy(dt).itemsize for _, dt, f in self.temps]

    def launch(self, ptrs: Sequence[int], env: dict[str, int], stream: Any, workspace: Callable[[list[int]], list[int]],
               tape: list[tuple[Any, ...]] | None = None) -> None:
        """Launch every stage kernel; `workspace(sizes)` returns device pointers for the temporaries.
        With `tape`, each launch is also recorded as (function, grid, block, shared bytes, arg format,
        number of pointer args, args) so that a runtime can replay it."""
        self.check_sizes(env)
        temps = workspace(self.temp_bytes(env)) if self.temps else []
        args = (*ptrs, *temps, *[env[d] for d in self.dims])
        for ln in self.launches:
            grid = tuple(g(env) for g in ln.grid)
            if grid[0] <= 0 or grid[1] <= 0 or grid[2] <= 0:
                continue  # an empty dim: nothing to compute
            if grid[0] >= INDEX_LIMIT or grid[1] > 65535 or grid[2] > 65535:
                raise MlcError(f"kernel {self.name}: grid {grid} exceeds the device limits")
            if grid[0] * ln.block[0] >= INDEX_LIMIT:
                raise MlcError(f"kernel {self.name}: {grid[0]} x {ln.block[0]} threads: the linear thread index "
                               "needs more than 32 bits")
            ln.fn._launch_kernel(grid, ln.block, struct.pack(self._fmt, *args), ln.shared, stream)
            if tape is not None:
                tape.append((ln.fn, grid, ln.block, ln.shared, self._fmt, len(ptrs) + len(temps), args))

    def check_sizes(self, env: dict[str, int]) -> None:
        """Kernels index in 32-bit ints (the fused element index of a buffer included): a parameter or
        temporary of 2^31 elements or more would wrap silently, so it is refused with the dims."""
        sizes = [(p, math.prod(arith.evaluate(d, env) for d in shape)) for p, _, shape in self.params]
        sizes += [(t, f(env)) for t, _, f in self.temps]
        for name, n in sizes:
            if n >= INDEX_LIMIT:
                raise MlcError(f"kernel {self.name}: {name} would have {n} elements at "
                               f"{', '.join(f'{k}={v}' for k, v in sorted(env.items()))}: 2^31 or more "
                               "(the kernel indexes in 32 bits)")

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
        env = self.bind_dims([a.shape for a in arrays], dims)
        self.check_sizes(env)
        bufs = [drv.to_device(np.ascontiguousarray(a)) if a.nbytes else drv.mem_alloc(1) for a in arrays]
        held: list[Any] = []

        def workspace(sizes: list[int]) -> list[int]:
            held.extend(drv.mem_alloc(s) for s in sizes)
            return [int(h) for h in held]

        self.launch([int(b) for b in bufs], env, None, workspace)
        drv.Context.synchronize()
        if self.check is not None:
            self.check()
        first_out = len(arrays) - self.num_outputs
        for a, b in zip(arrays[first_out:], bufs[first_out:]):
            if a.nbytes:
                out = np.empty_like(a)
                drv.memcpy_dtoh(out, b)
                a[...] = out


class CudaLibrary(Library):
    """Kernels loaded from a cubin plus the codegen's metadata."""

    def __init__(self, cubin: bytes, metadata: str, source: str = ""):
        cuda_context()
        import pycuda.driver as drv

        super().__init__(metadata, "the CUDA metadata")
        self.cubin, self.source = cubin, source
        try:
            self._module = drv.module_from_buffer(cubin)
        except drv.Error as e:
            raise MlcError(f"cannot load CUDA module: {e}") from None
        self._error: Any = None  # the device error word, when some kernel checks indices
        if any(m.get("checks") for m in self.metadata.values()):
            self._error = self._module.get_global("mlc_index_error")[0]

    def raise_failed_check(self) -> None:
        """Raise the first index check that failed since the last read (and clear the word): one
        40-byte copy, made once per run after the stream is synchronized, not per kernel."""
        import pycuda.driver as drv

        word = np.zeros(5, np.uint64)
        drv.memcpy_dtoh(word, self._error)
        msg = index_error_message(word, self.names)
        if msg is not None:
            drv.memset_d8(self._error, 0, word.nbytes)
            raise MlcError(msg)

    def make_kernel(self, name: str, meta: dict[str, Any]) -> CudaKernel:
        import pycuda.driver as drv

        launches = []
        for ln in meta["launches"]:
            fn = self._module.get_function(ln["symbol"])
            shared = int(ln["shared_bytes"])
            if shared > 48 * 1024:
                fn.set_attribute(drv.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, shared)
            launches.append(_Launch(fn, [int_fn(expr_from_json(g)) for g in ln["grid"]], tuple(ln["block"]), shared))
        temps = []
        for t in meta["temps"]:
            size: Expr = expr_from_json(1)
            for d in t["shape"]:
                size = size * expr_from_json(d)
            temps.append((t["name"], t["dtype"], int_fn(size)))
        params = [(p["name"], p["dtype"], tuple(expr_from_json(d) for d in p["shape"])) for p in meta["params"]]
        check = self.raise_failed_check if meta.get("checks") and self._error is not None else None
        return CudaKernel(name, params, list(meta["dims"]), int(meta["num_outputs"]), temps, launches, check)


def compile_cuda(funcs: Sequence[PrimFunc], arch: str | None = None,
                 gemm_config: tuple[int, ...] | None = None) -> CudaLibrary:
    """Compile scheduled PrimFuncs for the GPU (GPU 0's arch by default) and load them."""
    src, cubin = build_cuda(funcs, arch or device_arch(), gemm_config)
    return CudaLibrary(cubin, src.metadata(), src.source)


@dataclass(frozen=True)
class CudaDevice:
    """NVIDIA GPUs: code is CUDA C + cubin + launch metadata; memory is pycuda's (one stream per VM)."""

    kind: str = "cuda"

    def compile(self, prims: Sequence[PrimFunc], target: Target, emit: tuple[str, ...] = (),
                opt_level: int = 3) -> Compiled:
        src, cubin = build_cuda(prims, target.nvcc_arch) if prims else (None, b"")
        out = Compiled({"cuda_source": src.source.encode() if src else b"", "cubin": cubin,
                        "cuda_meta": src.metadata().encode() if src else b'{"version": 1, "kernels": []}'},
                       {"arch": src.arch if src else ""})
        if src is not None and ("llvm" in emit or "asm" in emit or "cuda" in emit):
            out.asm = src.source  # the CUDA C is this target's "assembly" listing
        return out

    def load(self, art: Artifact, name: str) -> CudaLibrary | None:
        if "cubin" not in art.sections:
            raise MlcError(f"{name}: not a cuda artifact (no cubin section); rebuild with --target cuda")
        try:
            meta = art.sections["cuda_meta"].decode()
            source = art.sections.get("cuda_source", b"").decode()
        except (KeyError, UnicodeDecodeError):
            raise MlcError(f"{name}: artifact has no readable cuda_meta section") from None
        cubin = art.sections["cubin"]
        if not cubin:
            return None
        built, here = str(art.meta.get("arch", "")), device_arch()
        if built and built.rstrip("a") != here.rstrip("a"):
            raise MlcError(f"{name}: built for {built}, this GPU is {here} (rebuild with --target cuda:{here.rstrip('a')})")
        return CudaLibrary(cubin, meta, source)

    def vm(self, module: Module, params: Mapping[str, np.ndarray], library: Library | None,
           guard: str | None = None) -> Any:
        from .cuda_vm import CudaVM

        return CudaVM(module, params, library)

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        import pycuda.driver as drv

        from .cuda_vm import DeviceTensor

        mem = drv.mem_alloc(max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize))
        return DeviceTensor(int(mem), shape, dtype, mem)

    def copy_in(self, a: np.ndarray) -> Any:
        from .cuda_vm import to_device

        return to_device(a)

    def copy_out(self, t: Any) -> np.ndarray:
        return t.get()

    def sync(self) -> None:
        import pycuda.driver as drv

        drv.Context.synchronize()


CUDA = CudaDevice()
