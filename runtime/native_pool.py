"""A native thread pool for parallel loops, written in LLVM IR: no Python on the launch path.

The Python pool of `parallel.py` costs tens of microseconds per launch (a ctypes callback, futures),
more than most kernels of a small model take. This pool is a few dozen lines of LLVM IR compiled
once per process with the JIT: persistent pthread workers spin on a generation counter for a while
after each launch (so back-to-back kernels start them in well under a microsecond) and then sleep
on a futex (so an idle process burns no CPU). `mlc_pool_launch(chunk, closure, extent)` has the
launcher signature kernels call: it splits [0, extent) into a few contiguous chunks per thread
that the caller and the workers claim with atomics (a worker not yet awake, or descheduled by other
load, leaves its share to the others), and returns when every chunk is done. A launch that finds the pool busy (a parallel loop
inside a chunk, or kernels called from two Python threads at once) runs serially instead.
Linux on x86-64 and AArch64 only (futex syscall numbers); `load_pool` returns None elsewhere.
MLC_POOL_SPIN=<iterations> overrides how long workers spin before sleeping (default: ~100 us, calibrated).
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.binding as llvm
from mlc.codegen.cpu import host_target, init_llvm

_FUTEX_SYSCALL = {"x86_64": 202, "aarch64": 98}
_FUTEX_WAIT, _FUTEX_WAKE = 128, 129  # the *_PRIVATE variants
# chunks per thread: threads claim them dynamically, so a core slowed by other load does less
CHUNKS_PER_THREAD = 2
# spinning threads yield the core every this many pause iterations (a power of two): on a machine
# with more runnable threads than cores, a spinner sharing a core with the thread it waits for
# would otherwise hold it for a whole scheduler slice
YIELD_EVERY = 64
# how long a worker spins after its last chunk before sleeping on the futex: covers the gaps
# between the kernels of a model run and a Python caller's argument handling (10-30 us; waking a
# sleeping worker then costs more than the gap: a 31 us kernel took 64 us after a 20 us pause with
# a 15 us spin), and is short enough not to slow other thread pools (OpenBLAS, onnxruntime) that
# run in between. A pause instruction takes 10-140 cycles by CPU generation, so the iteration count
# is calibrated at load time (`calibrated_spin`); SPIN_ITERATIONS is only the IR's initial value.
SPIN_SECONDS = 100e-6
SPIN_ITERATIONS = 1000

_IR = r"""
@mlc_pool_num_threads = global i64 1
@mlc_pool_spin = global i64 SPIN_DEFAULT
@mlc_pool_started = global i64 0
@mlc_pool_busy = global i32 0
@task_fn = internal global ptr null
@task_closure = internal global ptr null
@task_extent = internal global i64 0
@task_step = internal global i64 0
@task_chunks = internal global i64 0
@state = internal global i64 0, align 64
@done = internal global i64 0, align 64
@gen = internal global i32 0, align 64
@sleepers = internal global i32 0, align 64

declare i32 @pthread_create(ptr, ptr, ptr, ptr)
declare i32 @pthread_detach(i64)
declare i64 @syscall(i64, ...)
declare i32 @sched_yield()
declare i64 @llvm.smin.i64(i64, i64)
PAUSE_DECL

define internal void @pause() alwaysinline {
  PAUSE_CALL
  ret void
}

; One step of waiting, the `i`th: a pause instruction, or every YIELD_EVERY steps the core.
define internal void @backoff(i64 %i) alwaysinline {
entry:
  %im = and i64 %i, YIELD_MASK
  %iy = icmp eq i64 %im, 0
  br i1 %iy, label %yield, label %pause
yield:
  %r = call i32 @sched_yield()
  ret void
pause:
  call void @pause()
  ret void
}

; Claim and run chunks of the launch in flight. @state is (generation << 32 | next chunk): a claim is
; a compare-exchange on it, so a thread that read the task of an older launch can never claim (and
; run) a chunk of a newer one with it.
define internal void @drain() {
entry:
  %s0 = load atomic i64, ptr @state acquire, align 8
  %gen0 = lshr i64 %s0, 32
  %fn = load ptr, ptr @task_fn
  %cl = load ptr, ptr @task_closure
  %ext = load i64, ptr @task_extent
  %step = load i64, ptr @task_step
  %n = load i64, ptr @task_chunks
  br label %loop
loop:
  %s = phi i64 [ %s0, %entry ], [ %seen, %retry ], [ %s1, %ran ]
  %c = and i64 %s, 4294967295
  %left = icmp slt i64 %c, %n
  br i1 %left, label %claim, label %exit
claim:
  %s1 = add i64 %s, 1
  %cx = cmpxchg ptr @state, i64 %s, i64 %s1 acq_rel acquire
  %ok = extractvalue { i64, i1 } %cx, 1
  %seen = extractvalue { i64, i1 } %cx, 0
  br i1 %ok, label %run, label %retry
retry:
  %gen1 = lshr i64 %seen, 32
  %same = icmp eq i64 %gen1, %gen0
  br i1 %same, label %loop, label %exit
run:
  %b = mul i64 %c, %step
  %e0 = add i64 %b, %step
  %e = call i64 @llvm.smin.i64(i64 %e0, i64 %ext)
  call void %fn(ptr %cl, i64 %b, i64 %e)
  %d = atomicrmw add ptr @done, i64 1 release
  br label %ran
ran:
  br label %loop
exit:
  ret void
}

define internal ptr @worker(ptr %arg) {
entry:
  %g0 = load atomic i32, ptr @gen acquire, align 4
  br label %wait
wait:
  %seen = phi i32 [ %g0, %entry ], [ %g, %work ], [ %seen, %woke ]
  br label %spin
spin:
  %i = phi i64 [ 0, %wait ], [ %i1, %spin_more ]
  %g = load atomic i32, ptr @gen acquire, align 4
  %new = icmp ne i32 %g, %seen
  br i1 %new, label %work, label %spin_check
spin_check:
  %lim = load i64, ptr @mlc_pool_spin
  %more = icmp slt i64 %i, %lim
  br i1 %more, label %spin_more, label %sleep
spin_more:
  %i1 = add i64 %i, 1
  call void @backoff(i64 %i1)
  br label %spin
sleep:
  %s0 = atomicrmw add ptr @sleepers, i32 1 seq_cst
  %g2 = load atomic i32, ptr @gen seq_cst, align 4
  %same = icmp eq i32 %g2, %seen
  br i1 %same, label %dosleep, label %woke
dosleep:
  %seen64 = zext i32 %seen to i64
  %r = call i64 (i64, ...) @syscall(i64 FUTEX_NR, ptr @gen, i64 FUTEX_WAIT, i64 %seen64, ptr null)
  br label %woke
woke:
  %s1 = atomicrmw sub ptr @sleepers, i32 1 seq_cst
  br label %wait
work:
  call void @drain()
  br label %wait
}

; The worker's spin loop without the work test's exit: `n` iterations, for calibrating the count.
define void @mlc_pool_spin_probe(i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i1, %step ]
  %g = load atomic i32, ptr @gen acquire, align 4
  %more = icmp slt i64 %i, %n
  br i1 %more, label %step, label %exit
step:
  %i1 = add i64 %i, 1
  call void @backoff(i64 %i1)
  br label %loop
exit:
  ret void
}

define void @mlc_pool_launch(ptr %fn, ptr %cl, i64 %ext) {
entry:
  %pos = icmp sgt i64 %ext, 0
  br i1 %pos, label %check, label %ret
check:
  %nt = load i64, ptr @mlc_pool_num_threads
  %want = icmp sgt i64 %nt, 1
  %many = icmp sgt i64 %ext, 1
  %try = and i1 %want, %many
  br i1 %try, label %lock, label %serial
lock:
  %cx = cmpxchg ptr @mlc_pool_busy, i32 0, i32 1 acquire monotonic
  %got = extractvalue { i32, i1 } %cx, 1
  br i1 %got, label %grow, label %serial
grow:
  %tid = alloca i64
  %need = sub i64 %nt, 1
  br label %grow_loop
grow_loop:
  %st = load i64, ptr @mlc_pool_started
  %short = icmp slt i64 %st, %need
  br i1 %short, label %create, label %go
create:
  %rc = call i32 @pthread_create(ptr %tid, ptr null, ptr @worker, ptr null)
  %ok = icmp eq i32 %rc, 0
  br i1 %ok, label %created, label %go
created:
  %t = load i64, ptr %tid
  %dr = call i32 @pthread_detach(i64 %t)
  %st1 = add i64 %st, 1
  store i64 %st1, ptr @mlc_pool_started
  br label %grow_loop
go:
  %w = load i64, ptr @mlc_pool_started
  %tw = add i64 %w, 1
  %threads = call i64 @llvm.smin.i64(i64 %nt, i64 %tw)
  %par = icmp sgt i64 %threads, 1
  br i1 %par, label %dispatch, label %unlock_serial
unlock_serial:
  store atomic i32 0, ptr @mlc_pool_busy release, align 4
  br label %serial
dispatch:
  %c4 = mul i64 %threads, CHUNKS_PER_THREAD
  %n0 = call i64 @llvm.smin.i64(i64 %c4, i64 %ext)
  %nm1 = sub i64 %n0, 1
  %sum = add i64 %ext, %nm1
  %step = sdiv i64 %sum, %n0
  %sm1 = sub i64 %step, 1
  %sum2 = add i64 %ext, %sm1
  %n = sdiv i64 %sum2, %step
  store ptr %fn, ptr @task_fn
  store ptr %cl, ptr @task_closure
  store i64 %ext, ptr @task_extent
  store i64 %step, ptr @task_step
  store i64 %n, ptr @task_chunks
  store atomic i64 0, ptr @done monotonic, align 8
  %old = load i64, ptr @state
  %oldg = lshr i64 %old, 32
  %newg = add i64 %oldg, 1
  %news = shl i64 %newg, 32
  store atomic i64 %news, ptr @state release, align 8
  %og = atomicrmw add ptr @gen, i32 1 seq_cst
  %sl = load atomic i32, ptr @sleepers seq_cst, align 4
  %asleep = icmp sgt i32 %sl, 0
  br i1 %asleep, label %wake, label %mine
wake:
  %wr = call i64 (i64, ...) @syscall(i64 FUTEX_NR, ptr @gen, i64 FUTEX_WAKE, i64 2147483647)
  br label %mine
mine:
  call void @drain()
  br label %join
join:
  %j = phi i64 [ 0, %mine ], [ %j1, %join_more ]
  %fin = load atomic i64, ptr @done acquire, align 8
  %all = icmp sge i64 %fin, %n
  br i1 %all, label %unlock, label %join_more
join_more:
  %j1 = add i64 %j, 1
  call void @backoff(i64 %j1)
  br label %join
unlock:
  store atomic i32 0, ptr @mlc_pool_busy release, align 4
  br label %ret
serial:
  call void %fn(ptr %cl, i64 0, i64 %ext)
  br label %ret
ret:
  ret void
}
"""


@dataclass
class NativePool:
    """The JIT-compiled pool: its launcher address and its settings, kept alive with the engine."""

    engine: llvm.ExecutionEngine
    launch_address: int
    _num_threads: ctypes.c_int64
    _spin: ctypes.c_int64
    _started: ctypes.c_int64
    _busy: ctypes.c_int32

    def set_num_threads(self, n: int) -> None:
        self._num_threads.value = max(1, int(n))

    def set_spin(self, iterations: int) -> None:
        """Pause-loop iterations a worker spins after a launch before it sleeps on the futex."""
        self._spin.value = max(0, int(iterations))

    def after_fork_in_child(self) -> None:
        """Worker threads do not survive fork: the child starts its own on its first launch."""
        self._started.value = 0
        self._busy.value = 0


def pool_ir(arch: str) -> str:
    """The pool's LLVM IR for `arch` (x86_64 or aarch64)."""
    pause = ("declare void @llvm.x86.sse2.pause()", "call void @llvm.x86.sse2.pause()") if arch == "x86_64" \
        else ("", "")
    return (_IR.replace("PAUSE_DECL", pause[0]).replace("PAUSE_CALL", pause[1])
            .replace("FUTEX_NR", str(_FUTEX_SYSCALL[arch])).replace("CHUNKS_PER_THREAD", str(CHUNKS_PER_THREAD)).replace("YIELD_MASK", str(YIELD_EVERY - 1))
            .replace("SPIN_DEFAULT", str(SPIN_ITERATIONS))
            .replace("FUTEX_WAIT", str(_FUTEX_WAIT)).replace("FUTEX_WAKE", str(_FUTEX_WAKE)))


def calibrated_spin(probe: Callable[[int], None], seconds: float = SPIN_SECONDS) -> int:
    """Spin-loop iterations that take about `seconds` here (the fastest of a few timed probes, so a
    probe the OS interrupted does not shorten the spin)."""
    n = 4096
    best = min(_timed(probe, n) for _ in range(3))
    return max(64, min(10_000_000, int(seconds * n / max(best, 1e-9))))


def _timed(probe: Callable[[int], None], n: int) -> float:
    t0 = time.perf_counter()
    probe(n)
    return time.perf_counter() - t0


def load_pool() -> NativePool | None:
    """Compile and load the pool for the host, or None where it is not supported."""
    target = host_target()
    arch = target.triple.split("-")[0]
    if not sys.platform.startswith("linux") or arch not in _FUTEX_SYSCALL or os.environ.get("MLC_PYTHON_POOL"):
        return None
    init_llvm()
    mod = llvm.parse_assembly(pool_ir(arch))
    mod.triple = target.triple
    mod.verify()
    engine = llvm.create_mcjit_compiler(mod, target.target_machine(2))
    engine.finalize_object()

    def glob(name: str, ctype: type) -> ctypes._SimpleCData:
        return ctype.from_address(engine.get_global_value_address(name))

    pool = NativePool(engine, engine.get_function_address("mlc_pool_launch"),
                      glob("mlc_pool_num_threads", ctypes.c_int64), glob("mlc_pool_spin", ctypes.c_int64),
                      glob("mlc_pool_started", ctypes.c_int64), glob("mlc_pool_busy", ctypes.c_int32))
    spin = os.environ.get("MLC_POOL_SPIN", "")
    probe = ctypes.CFUNCTYPE(None, ctypes.c_int64)(engine.get_function_address("mlc_pool_spin_probe"))
    pool.set_spin(int(spin) if spin.isdigit() else calibrated_spin(probe))
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=pool.after_fork_in_child)
    return pool
