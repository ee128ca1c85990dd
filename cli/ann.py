"""`mlc ann-index build|search|eval`: the ANN index stage (library: mlc.ann) from the shell."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click
import numpy as np
from mlc.ann.executor import Executor, make_executor, require_ray
from mlc.ann.index import MODES, AnnIndex, train_quantizer
from mlc.ann.index_file import index_bytes
from mlc.ann.io import as_float_vectors, read_vectors, write_vectors
from mlc.ann.metrics import k_recall_at_k, recall_at
from mlc.ann.program import search_ir_text
from mlc.ann.progress import training_progress
from mlc.ann.quantizer import Quantizer
from mlc.ann.sharded import ShardedIndex, encode_shards, open_index, remove_stale_shards, write_sharded
from mlc.ir.diagnostics import MlcError
from mlc.ir.files import atomic_write_files

from .main import executor_option, handle_errors


@click.group("ann-index")
def ann_index() -> None:
    """Vector-quantization nearest-neighbour indexes (PQ, RVQ, IRVQ, DA; E-Tree, A-Tree search)."""


@ann_index.command("build")
@click.argument("base", type=click.Path(dir_okay=False))
@click.option("--method", type=click.Choice(["pq", "rvq", "irvq", "da"]), default="irvq", show_default=True)
@click.option("--codebooks", "-M", type=click.IntRange(1, 256), default=8, show_default=True, help="Codebooks (codes per vector).")
@click.option("--codewords", "-K", type=click.IntRange(2, 65536), default=256, show_default=True, help="Codewords per codebook.")
@click.option("--beam", "-L", type=click.IntRange(min=1), default=8, show_default=True, help="Multi-path encoding width (rvq/irvq/da).")
@click.option("--rotate", is_flag=True, help="pq: learn a rotation (OPQ).")
@click.option("--sweeps", type=click.IntRange(0, 1000), default=3, show_default=True, help="da: annealing sweeps.")
@click.option("--train-size", type=click.IntRange(min=1), default=None, help="Train on the first N vectors (default: all).")
@click.option("--keep-base/--no-keep-base", default=True, show_default=True,
              help="Store the raw vectors (exact re-ranking, quantization error in eval).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--progress/--no-progress", default=None, help="Show training progress (default: on a terminal).")
@executor_option("where training and encoding run")
@click.option("--shards", type=click.IntRange(1, 100000), default=None,
              help="Write a sharded index (manifest + shard files) of this many shards "
                   "(default: one file with --executor local, one shard per Ray CPU with ray).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Index file (IDX.ir gets the IR).")
@handle_errors
def build_cmd(base: str, method: str, codebooks: int, codewords: int, beam: int, rotate: bool, sweeps: int,
              train_size: int | None, keep_base: bool, seed: int, progress: bool | None, executor: str,
              shards: int | None, output: str) -> None:
    """Train a quantizer on BASE, encode it and write the index and its search program."""
    parent = Path(output).resolve().parent
    if not parent.is_dir():
        raise MlcError(f"{output}: cannot write the index: directory {parent} does not exist")
    if Path(f"{output}.ir").is_dir():  # found now, not after the index file was written
        raise MlcError(f"{output}.ir: cannot write the search program: it is a directory")
    run_on = _executor(executor)  # before reading: without Ray installed, say so at once
    x = as_float_vectors(read_vectors(base), what="base vectors", path=base)  # errors name the file
    opts: dict[str, object] = {"seed": seed}
    if method == "pq":
        opts["rotate"] = rotate
    if method == "da":
        opts["sweeps"] = sweeps
    if shards is None and not run_on.parallel:  # one index file, as always
        with training_progress(progress) as rep:
            idx = AnnIndex.build(x, method, codebooks, codewords, beam, train_size, keep_base, rep, **opts)
        q, parts = idx.quantizer, ""
        atomic_write_files([(Path(output), index_bytes(idx)), (Path(f"{output}.ir"), _ir_text(q).encode())])
        remove_stale_shards(output)  # of a sharded index this one replaced
    else:
        with training_progress(progress) as rep:
            q = train_quantizer(x, method, codebooks, codewords, beam, train_size, rep, run_on, **opts)
            rep.step("encoding base (shards)", 1)
            files = encode_shards(x, q, keep_base, run_on, shards or run_on.workers)
            rep.advance()
        write_sharded(output, q, files, _ir_text(q))
        parts = f" in {len(files)} shards"
    click.echo(f"{output}: {method} {q.M}x{q.K} over {len(x)} vectors of dim {q.dim}{parts}", err=True)


def _executor(spec: str) -> Executor:
    """The executor; a failure to start or join Ray is our one-line error, not Ray's logged traceback."""
    if spec == "local":
        return make_executor(spec)
    require_ray()  # importing Ray sets up its logger
    ray_log = logging.getLogger("ray")
    level = ray_log.level
    ray_log.setLevel(logging.CRITICAL)
    try:
        return make_executor(spec)
    finally:
        ray_log.setLevel(level)


def _ir_text(q: Quantizer) -> str:
    return search_ir_text(q.method, q.dim, q.M, q.K, "u8" if q.code_dtype == np.uint8 else "u16")


def _queries(path: str, idx: AnnIndex | ShardedIndex) -> np.ndarray:
    """The query file, checked against the index's dimension with the file named in errors."""
    return as_float_vectors(read_vectors(path), idx.dim, "queries", path)


def _search_options(fn):  # noqa: ANN001, ANN202
    fn = click.option("--rerank", type=click.IntRange(min=0), default=0, show_default=True,
                      help="Re-rank this many ADC candidates exactly (needs --keep-base).")(fn)
    fn = click.option("--mode", type=click.Choice(MODES), default=None,
                      help="flat | etree | eforest | atree | ir (compiled program). Default: atree with --beam, else ir.")(fn)
    fn = click.option("--beam", "-B", type=click.IntRange(min=1), default=None, help="A-Tree beam width (nodes kept per level).")(fn)
    return fn


def _run_search(idx: AnnIndex | ShardedIndex, queries: np.ndarray, k: int, mode: str | None, beam: int | None,
                rerank: int) -> tuple[np.ndarray, float]:
    if mode is None:
        mode = "atree" if beam is not None else "ir"
    if mode == "ir":
        idx.search(queries[:1], k, mode)  # compile once, outside the timing
    t0 = time.perf_counter()
    ids, _ = idx.search(queries, k, mode, beam, rerank)
    return ids, time.perf_counter() - t0


@ann_index.command("search")
@click.argument("index", type=click.Path(dir_okay=False))
@click.argument("queries", type=click.Path(dir_okay=False))
@click.option("--k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@_search_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Result (.ivecs or .npy).")
@handle_errors
def search_cmd(index: str, queries: str, k: int, beam: int | None, mode: str | None, rerank: int, output: str) -> None:
    """Write the k nearest base ids of each query, nearest first."""
    if Path(output).suffix.lower() not in (".ivecs", ".npy"):
        raise MlcError(f"result file must end in .ivecs or .npy, got '{output}'")
    idx = open_index(index)
    ids, _ = _run_search(idx, _queries(queries, idx), k, mode, beam, rerank)
    write_vectors(output, ids.astype(np.int32))


@ann_index.command("eval")
@click.argument("index", type=click.Path(dir_okay=False))
@click.argument("queries", type=click.Path(dir_okay=False))
@click.argument("groundtruth", type=click.Path(dir_okay=False))
@_search_options
@handle_errors
def eval_cmd(index: str, queries: str, groundtruth: str, beam: int | None, mode: str | None, rerank: int) -> None:
    """Recall@1/10/100, 10-recall@10, queries per second and quantization error."""
    idx = open_index(index)
    q = _queries(queries, idx)
    gt = read_vectors(groundtruth)
    if gt.dtype.kind not in "iu" or len(gt) != len(q):
        raise MlcError(f"ground truth must be integer ids, one row per query ({len(q)}), got {gt.shape} {gt.dtype}")
    if gt.size and (gt.min() < 0 or gt.max() >= idx.size):
        raise MlcError(f"ground truth ids out of range for an index of {idx.size} vectors")
    ids, secs = _run_search(idx, q, min(100, idx.size), mode, beam, rerank)
    click.echo(f"recall@1      {recall_at(ids, gt, 1):.4f}")
    click.echo(f"recall@10     {recall_at(ids, gt, 10):.4f}")
    click.echo(f"recall@100    {recall_at(ids, gt, 100):.4f}")
    if gt.shape[1] >= 10:
        click.echo(f"10-recall@10  {k_recall_at_k(ids, gt, 10):.4f}")
    click.echo(f"qps           {len(q) / max(secs, 1e-9):.1f}")
    err = idx.quantization_error()
    click.echo(f"quant_error   {'n/a (index built with --no-keep-base)' if err is None else f'{err:.2f}'}")
