"""The process-pool engine: a stage's work in worker processes, with crash and time-limit
isolation. Any stage runs here; cleaning (untrusted image decoders) is the one that does by
default.

Design:

- one worker process per ``work.resources.processes``; each runs ``work.setup(*work.args)`` once
  (models load there) and owns a duplex pipe and a small shared array where it publishes what it
  is doing: ``[task, row, item, deadline, limit]``. Rows go through the stage one at a time, so a
  failure always has one row to blame; before each row the worker sets ``deadline = now +
  time_limit_s`` (a stage that reports each row it starts, ``Resources.reports_rows``, is handed
  runs of rows and the limit restarts at each); a stage may mark sub-items of a row (cleaning:
  each image decode) with :func:`watch`, each under ``item_time_limit_s``;
- the parent gives each worker the batch it runs plus one queued behind it (sent by a sender
  thread per worker, so the parent never blocks on a busy pipe and sending overlaps with work),
  reads results, and every ~0.2 s checks deadlines;
- a worker past its deadline is killed (SIGKILL: code stuck in C cannot be interrupted any other
  way); a worker that dies (segfault, OOM kill) is noticed through its process sentinel. Either
  way the row being processed is rejected with the reason ``work.blame`` gives (default
  ``worker_timeout`` / ``worker_crashed``), a fresh worker is started (forked from a preloaded
  forkserver), and the batch resumes after the last rows the parent received. A worker that dies
  between rows (while loading its models, say) blames nothing: the batch is retried, and fails
  the run after :data:`MAX_BLAMELESS_CRASHES` such deaths in a row; an exception raised by the
  stage fails the run too (a bug is not a bad row);
- workers stream their results in chunks of :data:`FLUSH_ROWS` rows, so a crash costs at most
  that much repeated work; results are yielded in input order, kept and rejected rows in row
  order, exactly as the in-process engine gives them;
- memory stays bounded: at most ``3 x processes`` batches are taken from the input before the
  oldest one has been yielded.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from fineharbor.core.distributed.engine import BatchWork, Failure, StreamFn
from fineharbor.core.schema import reject_row, rejects_table

FLUSH_ROWS = 16
POLL_S = 0.2
MAX_BLAMELESS_CRASHES = 3
_TASK, _ROW, _ITEM, _DEADLINE, _LIMIT = range(5)
_STOP_SENDER = object()

# Reasons of the default blame; stable codes like every reject reason.
WORKER_CRASHED = "worker_crashed"
WORKER_TIMEOUT = "worker_timeout"


def default_blame(failure: Failure, row: dict) -> tuple[str, str]:
    """(reason, detail) of a row that killed its worker or overran its time limit."""
    if failure.kind == "timeout":
        return WORKER_TIMEOUT, f"no result within {failure.limit_s:g} s (worker killed)"
    return WORKER_CRASHED, f"worker died ({failure.how}) on this sample"


# --------------------------------------------------------------------------- worker side


class Watch:
    """Marks the sub-item of the current row a stage works on (an image being decoded), so that
    it runs under the item time limit and a crash names it. Outside a pool worker it does
    nothing, so stage code calls it unconditionally."""

    def __init__(self, progress: Any = None, row_limit: float = 0.0, item_limit: float = 0.0):
        self.progress, self.row_limit, self.item_limit = progress, row_limit, item_limit
        self.first_row = 0  # the task's row that is row 0 of the batch the stage was handed

    def row_start(self, index: int) -> None:
        """The stage starts row ``index`` of the batch it was handed: it runs under the row
        time limit and a crash from now on blames it (``Resources.reports_rows``)."""
        if self.progress is not None:
            self.progress[_ROW] = self.first_row + index
            _set_deadline(self.progress, self.row_limit)

    def item_start(self, index: int) -> None:
        if self.progress is not None:
            self.progress[_ITEM] = index
            _set_deadline(self.progress, self.item_limit)

    def item_end(self) -> None:
        if self.progress is not None:
            self.progress[_ITEM] = -1
            _set_deadline(self.progress, self.row_limit)  # the row's limit restarts


_WATCH = Watch()


def watch() -> Watch:
    """This process's watch: a pool worker's, else one that does nothing."""
    return _WATCH


def in_worker() -> bool:
    """Whether this process is a pool worker (stages set process-wide limits only there)."""
    return _WATCH.progress is not None


def _set_deadline(progress: Any, limit: float) -> None:
    progress[_LIMIT] = limit
    progress[_DEADLINE] = time.monotonic() + limit if limit > 0 else 0.0


def _worker_main(conn: Any, progress: Any, work: BatchWork) -> None:
    global _WATCH
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    limits = work.resources
    _WATCH = Watch(progress, limits.time_limit_s or 0.0, limits.item_time_limit_s or 0.0)
    run = work.setup(*work.args)  # before any deadline: models load once here
    rows_per_call = FLUSH_ROWS if limits.reports_rows else 1
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, batch, start, skip = message
        progress[_TASK] = task_id
        try:
            _run_task(conn, progress, run, task_id, batch, start, skip, rows_per_call)
        except (BrokenPipeError, EOFError):
            return
        except Exception:
            try:
                conn.send(("error", task_id, traceback.format_exc()))
            except OSError:
                return


def _skipped(batch: pa.RecordBatch | pa.Table, index: int, reject: tuple[str, str]) -> pa.Table:
    row = batch.slice(index, 1).select(
        [n for n in ("sample_id", "source", "origin_key") if n in batch.schema.names]
    )
    fields = row.to_pylist()[0]
    out = reject_row(str(fields.get("source") or ""), str(fields.get("origin_key") or ""), *reject)
    if fields.get("sample_id"):
        out["sample_id"] = fields["sample_id"]
    return rejects_table([out])


def _run_task(conn, progress, run: StreamFn, task_id, batch, start, skip, rows_per_call) -> None:
    kept: list[pa.Table] = []
    rejected: list[pa.Table] = []
    schema: pa.Schema | None = None
    flushed = start

    def flush(end: int) -> None:
        nonlocal kept, rejected, flushed
        # one chunk per column: a pickled table costs per chunk, so 16 one-row chunks cost
        # ~10x the rows they hold to send and to receive
        table = pa.concat_tables(kept).combine_chunks() if kept else None
        rejects = pa.concat_tables(rejected).combine_chunks() if rejected else None
        conn.send(("rows", task_id, end, table, rejects))
        kept, rejected, flushed = [], [], end

    index = start
    while index < batch.num_rows:
        if index in skip:
            rejected.append(_skipped(batch, index, skip[index]))
            end = index + 1
        else:
            # one row, or (a stage that reports its rows) the rows up to the next skipped row
            # or flush: a table per call, not per row
            end, limit = index + 1, min(batch.num_rows, flushed + FLUSH_ROWS, index + rows_per_call)
            while end < limit and end not in skip:
                end += 1
            progress[_ROW] = _WATCH.first_row = index
            _set_deadline(progress, _WATCH.row_limit)
            for kept_rows, rejected_rows in run([batch.slice(index, end - index)]):
                kept.append(kept_rows)
                rejected.append(rejected_rows)
                schema = kept_rows.schema
            progress[_DEADLINE] = 0.0
            progress[_ROW] = -1  # these rows are done; a crash from here on blames no row
        index = end
        if index - flushed >= FLUSH_ROWS:
            flush(index)
    if kept or rejected:
        flush(batch.num_rows)
    if schema is None:  # every row was skipped (or none was left): the kept rows' schema
        schema = next(iter(run([batch.slice(0, 0)])))[0].schema
    conn.send(("done", task_id, schema.empty_table()))


# --------------------------------------------------------------------------- parent side


@dataclass
class _Task:
    task_id: int
    batch: pa.RecordBatch | pa.Table
    received: int = 0  # rows whose outcome the parent holds
    kept: list[pa.Table] = field(default_factory=list)
    rejected: list[pa.Table] = field(default_factory=list)
    skip: dict[int, tuple[str, str]] = field(default_factory=dict)
    empty: pa.Table | None = None
    done: bool = False
    blameless_crashes: int = 0

    def result(self) -> tuple[pa.Table, pa.Table]:
        kept = pa.concat_tables(self.kept) if self.kept else self.empty
        rejected = pa.concat_tables(self.rejected) if self.rejected else rejects_table([])
        return kept, rejected


class _Worker:
    """One worker process, its pipe, its progress array and the tasks assigned to it (the one
    it runs and at most one queued behind it, so that sending overlaps with work)."""

    def __init__(self, ctx: Any, index: int, work: BatchWork) -> None:
        self.progress = ctx.RawArray("d", [-1.0, -1.0, -1.0, 0.0, 0.0])
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main,
            args=(child, self.progress, work),
            name=f"fineharbor-{work.stage}-{index}",
            # a pool nobody closed must not hold its owner's exit (multiprocessing joins
            # non-daemonic children at exit, and these wait for work forever)
            daemon=True,
        )
        self.process.start()
        child.close()
        self.tasks: deque[_Task] = deque()
        self.timed_out: Failure | None = None  # with the row and item, when killed
        # Sends happen on a thread: a send to a busy worker blocks until it reads, and the
        # parent must keep reading results and watching deadlines meanwhile.
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(
            target=self._send_loop, name=f"{self.process.name}-send", daemon=True
        )
        self._sender.start()

    def _send_loop(self) -> None:
        while True:
            message = self._outbox.get()
            if message is _STOP_SENDER:
                return
            try:
                self.conn.send(message)
            except Exception:
                return  # the worker died or was killed; its sentinel reports it

    @property
    def idle(self) -> bool:
        return not self.tasks

    @property
    def running(self) -> _Task | None:
        return self.tasks[0] if self.tasks else None

    def submit(self, task: _Task) -> None:
        self.tasks.append(task)
        self._outbox.put((task.task_id, task.batch, task.received, dict(task.skip)))

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)

    def close(self, graceful: bool) -> None:
        if graceful and self.process.is_alive() and not self.tasks:
            self._outbox.put(None)  # the worker's own stop message
            self._outbox.put(_STOP_SENDER)
            self._sender.join(timeout=5)
            self.process.join(timeout=5)
        self._outbox.put(_STOP_SENDER)
        self.kill()
        self.conn.close()
        self._sender.join(timeout=1)


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "unknown exit"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class ProcessPool:
    """Worker processes running one :class:`BatchWork`.

    Use as a context manager; :meth:`map` yields ``(kept, rejected)`` per input batch in input
    order. The pool can map several streams one after the other (the workers stay warm).
    """

    def __init__(self, work: BatchWork, processes: int | None = None) -> None:
        self.work = work.without_models()  # workers load their own
        self.size = processes or work.resources.processes or max(1, os.cpu_count() or 1)
        self.max_in_flight = 3 * self.size
        self._blame = work.blame or default_blame
        self._ctx = multiprocessing.get_context(work.resources.start_method)
        if work.resources.start_method == "forkserver":
            # a replacement worker forks with the stage's modules imported (milliseconds); a
            # wrapped setup (core/stored.py's referencing) carries the stage's own as an arg
            stage = {f.__module__ for f in (work.setup, *work.args) if callable(f)}
            self._ctx.set_forkserver_preload([__name__, *sorted(stage)])
        self._workers: list[_Worker] = []
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ProcessPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        while len(self._workers) < self.size:
            self._workers.append(self._spawn(len(self._workers)))

    def _spawn(self, index: int) -> _Worker:
        return _Worker(self._ctx, index, self.work)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            worker.close(graceful=True)
        self._workers = []

    # ------------------------------------------------------------------ mapping

    def map(
        self, batches: Iterable[pa.RecordBatch | pa.Table]
    ) -> Iterator[tuple[pa.Table, pa.Table]]:
        if self._closed:
            raise RuntimeError(f"the {self.work.stage} process pool is closed")
        self.start()
        source = iter(batches)
        tasks: dict[int, _Task] = {}
        next_id = next_yield = 0
        exhausted = False
        try:
            while True:
                # hand batches out, emptiest worker first, within the in-flight window
                while not exhausted and next_id - next_yield < self.max_in_flight:
                    worker = min(self._workers, key=lambda w: len(w.tasks))
                    if len(worker.tasks) >= 2:
                        break
                    try:
                        batch = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    task = _Task(next_id, batch)
                    tasks[next_id] = task
                    next_id += 1
                    worker.submit(task)
                while next_yield in tasks and tasks[next_yield].done:
                    finished = tasks.pop(next_yield)
                    next_yield += 1
                    yield finished.result()
                if exhausted and not tasks:
                    return
                self._poll()
        except BaseException:
            # a consumer that stops early, Ctrl-C or a worker error: stop everything now
            # (busy workers are dropped; the next map() starts fresh ones)
            for worker in [w for w in self._workers if not w.idle]:
                worker.tasks.clear()
                worker.close(graceful=False)
                self._workers.remove(worker)
            raise

    def _poll(self) -> None:
        busy = [w for w in self._workers if not w.idle]
        if not busy:
            return
        now = time.monotonic()
        deadlines = [w.progress[_DEADLINE] for w in busy if w.progress[_DEADLINE] > 0]
        timeout = POLL_S
        if deadlines:
            timeout = max(0.0, min(timeout, min(deadlines) - now + 0.01))
        handles: list[Any] = []
        for worker in busy:
            handles += [worker.conn, worker.process.sentinel]
        ready = multiprocessing.connection.wait(handles, timeout=timeout)
        for worker in busy:
            if worker.conn in ready:
                self._drain(worker)
        now = time.monotonic()
        for index, worker in enumerate(self._workers):
            if worker.idle:
                continue
            deadline = worker.progress[_DEADLINE]
            if deadline > 0 and now > deadline:
                worker.timed_out = Failure(
                    "timeout",
                    int(worker.progress[_ROW]),
                    int(worker.progress[_ITEM]),
                    worker.progress[_LIMIT],
                    "killed",
                )
                worker.kill()
                self._replace(index, worker)
            elif worker.process.sentinel in ready or not worker.process.is_alive():
                worker.process.join(timeout=10)
                self._replace(index, worker)

    def _drain(self, worker: _Worker) -> None:
        """Read every complete message the worker has sent."""
        try:
            while worker.conn.poll():
                self._handle(worker, worker.conn.recv())
        except (EOFError, OSError):
            return
        except RuntimeError:
            raise
        except Exception:  # a message cut off by a crash
            return

    def _handle(self, worker: _Worker, message: tuple) -> None:
        kind = message[0]
        task = worker.running
        if task is None or message[1] != task.task_id:
            return
        if kind == "rows":
            _, _, end, kept, rejected = message
            if kept is not None and kept.num_rows:
                task.kept.append(kept)
            if rejected is not None and rejected.num_rows:
                task.rejected.append(rejected)
            task.received = end
            task.blameless_crashes = 0
        elif kind == "done":
            task.empty = message[2]
            task.done = True
            worker.tasks.popleft()
        elif kind == "error":
            raise RuntimeError(
                f"{self.work.stage} worker failed on batch {task.task_id}:\n{message[2]}"
            )

    def _replace(self, index: int, worker: _Worker) -> None:
        """Replace a dead or killed worker; reject the row it was on; resume its batches."""
        failure = worker.timed_out or Failure(
            "crash", int(worker.progress[_ROW]), int(worker.progress[_ITEM]), 0.0, ""
        )
        running_id = int(worker.progress[_TASK])
        self._drain(worker)  # rows it flushed before dying are kept
        pending = list(worker.tasks)
        exitcode = worker.process.exitcode
        worker.tasks.clear()
        worker.close(graceful=False)
        task = pending[0] if pending else None
        if task is not None:
            row = failure.row
            if task.task_id == running_id and row >= task.received and row not in task.skip:
                if failure.kind == "crash":
                    failure = Failure("crash", row, failure.item, 0.0, _signal_name(exitcode))
                task.skip[row] = self._blame(failure, task.batch.slice(row, 1).to_pylist()[0])
                task.blameless_crashes = 0
            else:
                task.blameless_crashes += 1
                if task.blameless_crashes > MAX_BLAMELESS_CRASHES:
                    raise RuntimeError(
                        f"{self.work.stage} worker died {task.blameless_crashes} times on batch "
                        f"{task.task_id} outside any row ({_signal_name(exitcode)})"
                    )
        fresh = self._spawn(index)
        self._workers[index] = fresh
        for pending_task in pending:
            fresh.submit(pending_task)


class WorkerPools:
    """Warm process pools, one per distinct work, reused by the partitions mapped while it is
    open (workers load their models once). Whoever owns it closes it: a Dagster resource at the
    end of a run (``defs/resources.py``), or a ``with`` block."""

    def __init__(self) -> None:
        self._pools: dict[bytes, ProcessPool] = {}

    def __enter__(self) -> WorkerPools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pool(self, work: BatchWork) -> ProcessPool:
        key = pickle.dumps(work.without_models())
        pool = self._pools.get(key)
        if pool is None or pool.closed:
            pool = self._pools[key] = ProcessPool(work)
        return pool

    def map(self, work: BatchWork, batches: Iterable[pa.RecordBatch]) -> Iterator:
        pool = self.pool(work)
        try:
            yield from pool.map(batches)
        except BaseException:
            # an abandoned or failed map may leave work in flight: never hand that pool out again
            pool.close()
            raise

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def map_in_pool(
    work: BatchWork, batches: Iterable[pa.RecordBatch], pools: WorkerPools | None = None
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """``work`` over ``batches`` in ``pools``' warm pool, or in a pool of its own that closes
    when the stream ends."""
    if pools is not None:
        yield from pools.map(work, batches)
        return
    with ProcessPool(work) as pool:
        yield from pool.map(batches)
