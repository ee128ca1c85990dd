"""runtime.bench.block_medians: the call pattern the benchmarks' fairness rests on."""

from __future__ import annotations

import time

from mlc.runtime.bench import block_medians


def test_blocks_alternate_and_warm_up() -> None:
    log: list[str] = []

    def fn(name: str, seconds: float):  # type: ignore[no-untyped-def]
        def run() -> None:
            log.append(name)
            time.sleep(seconds)
        return run

    slow, fast = block_medians([fn("a", 2e-3), fn("b", 0.0)], runs=6, rounds=3, settle=0.0, warm=0.0)
    assert slow > 1.5e-3 and fast < slow
    # three rounds of: a x (1 warm-up + 2 timed), then b x 3
    assert "".join(log) == "aaabbb" * 3
    log.clear()
    block_medians([fn("a", 1e-3)], runs=3, rounds=1, settle=0.0, warm=0.02)
    assert len(log) >= 3 + 5  # warm-up calls fill 20 ms (~1 ms each) before the 3 timed ones
