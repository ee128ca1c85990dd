"""`Schedule`: TensorIR-style primitives over one PrimFunc, recorded into a replayable `Trace`.

The IR is immutable: each primitive checks its preconditions (raising `MlcError`), builds a new
PrimFunc and only then replaces `self.func`, so a failed primitive leaves the schedule unchanged.
Handles are names re-resolved against the current function on every use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Var
from mlc.ir.names import fresh_name
from mlc.ir.tir import BlockStmt, For, PrimFunc
from mlc.ir.tir_visit import block_reads, block_writes, subst, walk

from . import blockize as blockize_
from . import cache, inline, layout, loops, reduction, scope
from . import compute_at as compute_at_
from . import tensorize as tensorize_
from .trace import BlockRV, Instruction, IntRV, LoopRV, Trace, encode
from .tree import ancestors, blocks, find_block, find_loop, get, put

F = TypeVar("F", bound=Callable[..., Any])


def instruction(fn: F) -> F:
    """Record a top-level call of the primitive (not the ones it makes internally) in the trace."""

    @functools.wraps(fn)
    def wrapper(self: Schedule, *args: Any, **kwargs: Any) -> Any:
        if self._depth:
            return fn(self, *args, **kwargs)
        self._depth += 1
        try:
            out = fn(self, *args, **kwargs)
        finally:
            self._depth -= 1
        decision = kwargs.pop("decision", None)
        if fn.__name__ in ("sample_perfect_tile", "sample_categorical"):
            decision = self._last_decision
        outs = out if isinstance(out, list | tuple) else ([] if out is None else [out])
        self.trace = self.trace.append(
            Instruction(fn.__name__, tuple(encode(list(args))), {k: encode(v) for k, v in kwargs.items()},
                        tuple(encode(list(outs))), decision))
        return out

    wrapper._is_instruction = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def attempt(fn: Callable[..., object], *args: object, **kw: object) -> object | None:
    """Apply a primitive if its preconditions hold, else None (a failed primitive changes nothing):
    how the rules try a step that may not apply to a given program."""
    try:
        return fn(*args, **kw)
    except MlcError:
        return None


def normalize(func: PrimFunc) -> PrimFunc:
    """Give the function a root block and unique loop-variable names (handles are names)."""
    body = func.body
    if not (isinstance(body, BlockStmt) and not body.iters and body.name == "root"):
        body = BlockStmt("root", (), body)
    names = [b.name for _, b in blocks(body)]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise MlcError(f"schedule: block names must be unique; repeated: {', '.join(sorted(dup))}")
    func = replace(func, body=body)
    seen: set[str] = set()
    used = {b.name for b in func.params} | {v.name for v in func.scalar_params} | set(names)
    used |= {s.var.name for _, s in walk(body) if isinstance(s, For)}
    for path, s in list(walk(func.body)):
        if isinstance(s, For):
            if s.var.name in seen:
                cur = get(func.body, path)
                nv = Var(fresh_name(s.var.name, used), s.var.dtype)
                new = replace(cur, var=nv, body=subst(cur.body, {cur.var: nv}))  # type: ignore[arg-type]
                func = replace(func, body=put(func.body, path, new))
            seen.add(s.var.name)
    return func


class Schedule:
    """A schedule of one tensor program. `seed` seeds the sampling instructions."""

    def __init__(self, func: PrimFunc, seed: int = 0):
        self.func = normalize(func)
        self.trace = Trace()
        self.rng = np.random.default_rng(seed)
        self._depth = 0
        self._rv = 0
        self._last_decision: Any = None

    def copy(self) -> Schedule:
        """An independent schedule in the same state (search forks candidates from one prefix)."""
        out = Schedule.__new__(Schedule)
        out.func, out.trace, out._depth, out._rv, out._last_decision = self.func, self.trace, 0, self._rv, None
        out.rng = np.random.default_rng()
        out.rng.bit_generator.state = self.rng.bit_generator.state
        return out

    # ---- lookups ----------------------------------------------------------------------------
    @instruction
    def get_blocks(self) -> list[BlockRV]:
        """Every block except the root, in program order."""
        return [BlockRV(b.name) for p, b in blocks(self.func.body) if p]

    @instruction
    def get_block(self, name: str) -> BlockRV:
        find_block(self.func.body, name)
        return BlockRV(name)

    @instruction
    def get_loops(self, block: BlockRV) -> list[LoopRV]:
        path = find_block(self.func.body, block.name)
        out: list[LoopRV] = []
        for _, s in ancestors(self.func.body, path):
            if isinstance(s, BlockStmt):
                out = []
            elif isinstance(s, For):
                out.append(LoopRV(s.var.name))
        return out

    @instruction
    def get_producers(self, block: BlockRV) -> list[BlockRV]:
        """Blocks writing a buffer that `block` reads (outer blocks of blockize summarise, so leaves only)."""
        _, b = scope.named_block(self.func, _block(block))
        names = {x.name for x in block_reads(b)}
        return _unique([BlockRV(w.name) for n in names for _, w in scope.writers(self.func, n) if w.name != b.name])

    @instruction
    def get_consumers(self, block: BlockRV) -> list[BlockRV]:
        """Blocks reading a buffer that `block` writes."""
        _, b = scope.named_block(self.func, _block(block))
        names = {x.name for x in block_writes(b)}
        return _unique([BlockRV(r.name) for n in names for _, r in scope.readers(self.func, n) if r.name != b.name])

    def __str__(self) -> str:
        from mlc.ir.module import Module
        from mlc.ir.printer import print_module

        return print_module(Module((self.func,)))

    def get(self, rv: LoopRV | BlockRV) -> For | BlockStmt:
        """The current statement a handle refers to."""
        p = find_loop(self.func.body, rv.name) if isinstance(rv, LoopRV) else find_block(self.func.body, rv.name)
        s = get(self.func.body, p)
        assert isinstance(s, For | BlockStmt)
        return s

    # ---- loops ------------------------------------------------------------------------------
    @instruction
    def split(self, loop: LoopRV, factors: Sequence[int | None]) -> list[LoopRV]:
        self.func, names = loops.split(self.func, _loop(loop), list(factors))
        return [LoopRV(n) for n in names]

    @instruction
    def unguard(self, block: BlockRV) -> None:
        """Drop a split's guard around a block that writes only local buffers (see loops.unguard)."""
        self.func = loops.unguard(self.func, _block(block))

    @instruction
    def fuse(self, *loops_: LoopRV) -> LoopRV:
        self.func, name = loops.fuse(self.func, [_loop(x) for x in loops_])
        return LoopRV(name)

    @instruction
    def reorder(self, *loops_: LoopRV) -> None:
        self.func = loops.reorder(self.func, [_loop(x) for x in loops_])

    @instruction
    def parallel(self, loop: LoopRV) -> None:
        self.func = loops.set_kind(self.func, _loop(loop), "parallel")

    @instruction
    def vectorize(self, loop: LoopRV) -> None:
        self.func = loops.set_kind(self.func, _loop(loop), "vectorized")

    @instruction
    def unroll(self, loop: LoopRV) -> None:
        self.func = loops.set_kind(self.func, _loop(loop), "unrolled")

    @instruction
    def bind(self, loop: LoopRV, thread_tag: str) -> None:
        self.func = loops.set_kind(self.func, _loop(loop), "thread", thread_tag)

    # ---- blocks -----------------------------------------------------------------------------
    @instruction
    def cache_read(self, block: BlockRV, buffer_index: int, scope: str) -> BlockRV:
        self.func, name = cache.cache_read(self.func, _block(block), int(buffer_index), scope)
        return BlockRV(name)

    @instruction
    def reindex(self, block: BlockRV, buffer_index: int, order: Sequence[int] = ()) -> BlockRV:
        self.func, name = cache.reindex(self.func, _block(block), int(buffer_index), [int(i) for i in order])
        return BlockRV(name)

    @instruction
    def cache_write(self, block: BlockRV, buffer_index: int, scope: str) -> BlockRV:
        self.func, name = cache.cache_write(self.func, _block(block), int(buffer_index), scope)
        return BlockRV(name)

    @instruction
    def pack(self, block: BlockRV, buffer_index: int, tiles: Sequence[int], order: Sequence[int],
             pad: bool = False) -> BlockRV:
        """Stage read buffer `buffer_index` of `block` in a packed layout: each axis d split by
        tiles[d] (1: kept whole), the resulting axes permuted by `order`; returns the packing block.
        `pad`: a constant axis its tile does not divide is rounded up, zeros past its extent."""
        self.func, name = layout.pack(self.func, _block(block), int(buffer_index), list(tiles), list(order), bool(pad))
        return BlockRV(name)

    @instruction
    def compact(self, block: BlockRV, buffer_index: int, order: Sequence[int] = ()) -> BlockRV:
        """Allocate write buffer `buffer_index` of `block` only as the tile touched under the innermost
        loop enclosing all its uses (a register tile after cache_write + reverse_compute_at), its axes
        permuted by `order` (default: kept)."""
        self.func, name = layout.compact(self.func, _block(block), int(buffer_index), [int(o) for o in order])
        return BlockRV(name)

    @instruction
    def compute_at(self, block: BlockRV, loop: LoopRV) -> None:
        self.func = compute_at_.compute_at(self.func, _block(block), _loop(loop))

    @instruction
    def reverse_compute_at(self, block: BlockRV, loop: LoopRV) -> None:
        self.func = compute_at_.reverse_compute_at(self.func, _block(block), _loop(loop))

    @instruction
    def compute_inline(self, block: BlockRV) -> None:
        self.func = inline.compute_inline(self.func, _block(block))

    @instruction
    def reverse_compute_inline(self, block: BlockRV) -> None:
        self.func = inline.reverse_compute_inline(self.func, _block(block))

    @instruction
    def decompose_reduction(self, block: BlockRV, loop: LoopRV) -> BlockRV:
        self.func, name = reduction.decompose_reduction(self.func, _block(block), _loop(loop))
        return BlockRV(name)

    @instruction
    def rfactor(self, loop: LoopRV, factor_axis: int = 0, block: BlockRV | None = None) -> BlockRV:
        """Factor the reduction of the (single) block under `loop` over that loop; returns the rf block."""
        lp = self.get(LoopRV(_loop(loop)))
        if block is None:
            inner = [b.name for _, b in blocks(lp)]
            if len(inner) != 1:
                raise MlcError(f"rfactor: loop {_loop(loop)} must contain exactly one block, found {inner}")
            name = inner[0]
        else:
            name = _block(block)
        self.func, rf = reduction.rfactor(self.func, name, _loop(loop), int(factor_axis))
        return BlockRV(rf)

    @instruction
    def blockize(self, loop: LoopRV) -> BlockRV:
        self.func, name = blockize_.blockize(self.func, _loop(loop))
        return BlockRV(name)

    @instruction
    def tensorize(self, target: LoopRV | BlockRV, intrin: str) -> BlockRV:
        """Mark a tile as the tensor intrinsic `intrin` (a loop is blockized first); returns the outer block."""
        block = self.blockize(target) if isinstance(target, LoopRV) else target
        self.func = tensorize_.tensorize(self.func, _block(block), intrin)
        return block

    @instruction
    def storage_align(self, block: BlockRV, buffer_index: int, axis: int, factor: int, offset: int) -> None:
        self.func = cache.storage_align(self.func, _block(block), int(buffer_index), int(axis), int(factor), int(offset))

    # ---- sampling ---------------------------------------------------------------------------
    def _new_rv(self, value: int) -> IntRV:
        self._rv += 1
        return IntRV(int(value), f"v{self._rv}")

    @instruction
    def sample_perfect_tile(self, loop: LoopRV, n: int, max_innermost_factor: int = 16,
                            decision: Sequence[int] | None = None) -> list[IntRV]:
        """n factors whose product is the loop's (constant) extent, innermost <= max_innermost_factor."""
        lp = self.get(LoopRV(_loop(loop)))
        assert isinstance(lp, For)
        ext = arith.as_int(lp.extent)
        if ext is None:
            raise MlcError(f"sample_perfect_tile: loop {lp.var.name} has a symbolic extent")
        if n < 1 or max_innermost_factor < 1:
            raise MlcError("sample_perfect_tile: need n >= 1 and max_innermost_factor >= 1")
        if decision is not None:
            if not isinstance(decision, list | tuple) or not all(isinstance(x, int | np.integer) for x in decision):
                raise MlcError(f"sample_perfect_tile: decision {decision!r} is not a list of integers")
            d = [int(x) for x in decision]
            prod = int(np.prod(d)) if d else 1
            if len(d) != n or prod != ext or d[-1] > max_innermost_factor:
                raise MlcError(f"sample_perfect_tile: decision {d} is not a perfect {n}-tiling of {ext} "
                               f"with innermost <= {max_innermost_factor}")
        else:
            d = _sample_tile(self.rng, ext, n, max_innermost_factor)
        self._last_decision = d
        return [self._new_rv(x) for x in d]

    @instruction
    def sample_categorical(self, candidates: Sequence[int], probs: Sequence[float],
                           decision: int | None = None) -> IntRV:
        if len(candidates) == 0 or len(candidates) != len(probs):
            raise MlcError("sample_categorical: need as many probabilities as candidates (at least one)")
        p = np.asarray(probs, dtype=float)
        if np.any(p < 0) or p.sum() <= 0:
            raise MlcError("sample_categorical: probabilities must be non-negative and not all zero")
        if decision is None:
            decision = int(self.rng.choice(len(candidates), p=p / p.sum()))
        elif not isinstance(decision, int | np.integer) or not 0 <= int(decision) < len(candidates):
            raise MlcError(f"sample_categorical: decision {decision} out of range")
        self._last_decision = int(decision)
        return self._new_rv(int(candidates[int(decision)]))


def _loop(x: LoopRV | str) -> str:
    if isinstance(x, LoopRV):
        return x.name
    if isinstance(x, str):
        return x
    raise MlcError(f"schedule: expected a loop handle, got {type(x).__name__}")


def _block(x: BlockRV | str) -> str:
    if isinstance(x, BlockRV):
        return x.name
    if isinstance(x, str):
        return x
    raise MlcError(f"schedule: expected a block handle, got {type(x).__name__}")


def _unique(rvs: list[BlockRV]) -> list[BlockRV]:
    """Deduplicated and sorted by name, so traces stay deterministic."""
    return sorted(set(rvs), key=lambda r: r.name)


def _sample_tile(rng: np.random.Generator, ext: int, n: int, max_inner: int) -> list[int]:
    """Distribute the prime factors of `ext` over n positions at random, rejecting big innermost tiles."""
    primes = arith.prime_factors(ext)
    for _ in range(64):
        d = [1] * n
        for p in primes:
            d[int(rng.integers(n))] *= p
        if d[-1] <= max_inner:
            return d
    d = [1] * n  # fall back: move the innermost factors outwards until they fit
    d[0] = ext
    return d
