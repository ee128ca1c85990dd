"""The ABI between compiled kernels and the thread pool that runs their `parallel` loops.

A compiled kernel outlines each parallel loop body into a native chunk function
`void chunk(i8* closure, i64 begin, i64 end)` and calls the launcher whose address sits in the
module's global `LAUNCH_SYMBOL`: `void launch(chunk_fn, closure, extent)`. The loader
(runtime/cpu.py) stores the address of the runtime's pool (runtime/parallel.py) there.
"""

from __future__ import annotations

LAUNCH_SYMBOL = "__mlc_parallel_launch"
