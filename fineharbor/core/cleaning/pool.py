"""Worker processes for the cleaning stage, with a per-image time limit and crash isolation.

Design:

- one worker process per ``params.processes``; each owns a duplex pipe and a small shared array
  where it publishes what it is doing: ``[task, row, image, deadline, beat]``. Before an
  image is decoded the worker sets ``deadline = now + decode_timeout_s``; afterwards it
  clears it;
- the parent gives each worker the batch it runs plus one queued behind it (sent by a sender
  thread per worker, so the parent never blocks on a busy pipe and sending overlaps with work),
  reads results, and every ~0.2 s checks deadlines;
- a worker past its deadline is killed (SIGKILL: a decoder stuck in C cannot be interrupted any
  other way), and so is one that makes no progress for ``STALL_S`` outside image decoding; a
  worker that dies (segfault, OOM kill) is noticed through its process sentinel.
  Either way the sample being processed is rejected (``image_decode_timeout`` /
  ``image_corrupt`` / ``worker_crashed``), a fresh worker is started (forked from a preloaded
  forkserver, so this costs milliseconds plus the language-model load), and the batch resumes
  after the last rows the parent received;
- workers stream their results in chunks of ``FLUSH_ROWS`` rows, so a crash costs at most that
  much repeated work; results are yielded in input order;
- memory stays bounded: at most ``3 x processes`` batches are taken from the input before the
  oldest one has been yielded.

Nothing here imports dagster; the stage can equally run in a Dagster op, a script or a
distributed engine's worker.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import queue
import signal
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fineharbor.core.cleaning import text
from fineharbor.core.cleaning.images import capture_c_stderr
from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.reasons import (
    IMAGE_CORRUPT,
    IMAGE_DECODE_TIMEOUT,
    WORKER_CRASHED,
    Reject,
)
from fineharbor.core.cleaning.stage import Decoder, cleaned_schema, iter_outcomes, kept_table
from fineharbor.core.schema import rejects_table

FLUSH_ROWS = 16
POLL_S = 0.2
MAX_BLAMELESS_CRASHES = 3
_TASK, _ROW, _IMAGE, _DEADLINE, _BEAT = range(5)
# A sample with no image being decoded must still make progress: text rules take milliseconds,
# so a worker silent for this long outside image decoding is stuck and is killed.
STALL_S = 120.0
_STOP_SENDER = object()


# --------------------------------------------------------------------------- worker side


class _ProgressHooks:
    def __init__(self, progress: Any, timeout_s: float) -> None:
        self.progress = progress
        self.timeout_s = timeout_s

    def image_start(self, index: int) -> None:
        self.progress[_IMAGE] = index
        self.progress[_DEADLINE] = time.monotonic() + self.timeout_s

    def image_end(self) -> None:
        self.progress[_DEADLINE] = 0.0
        self.progress[_IMAGE] = -1
        self.progress[_BEAT] = time.monotonic()


def setup_worker_process(params: CleanParams) -> None:
    """Process-wide settings for decoding untrusted images (called in each worker)."""
    from PIL import Image, ImageFile

    Image.MAX_IMAGE_PIXELS = max(1, params.decompression_bomb_pixels // 2)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    warnings.simplefilter("ignore")
    capture_c_stderr()  # libtiff's warnings are counted per image, not printed
    if params.worker_memory_limit_mb:
        import resource

        limit = params.worker_memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _worker_main(conn: Any, progress: Any, params: CleanParams, decoder: Decoder | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    setup_worker_process(params)
    hooks = _ProgressHooks(progress, params.decode_timeout_s)
    if params.check_language:
        text.language_detector(params)  # load the language models once, before any deadline
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
            _run_task(conn, progress, params, decoder, hooks, task_id, batch, start, skip)
        except (BrokenPipeError, EOFError):
            return
        except Exception:
            try:
                conn.send(("error", task_id, traceback.format_exc()))
            except OSError:
                return


def _run_task(conn, progress, params, decoder, hooks, task_id, batch, start, skip) -> None:
    schema = cleaned_schema(batch.schema)
    kept: list[dict] = []
    rejected: list[dict] = []
    flushed = start

    def on_row(index: int) -> None:
        progress[_ROW] = index
        progress[_BEAT] = time.monotonic()

    end = start
    for index, keep, reject in iter_outcomes(
        batch, params, start=start, skip=skip, decoder=decoder, hooks=hooks, on_row=on_row
    ):
        progress[_ROW] = -1  # this row is done; a crash from here on blames no sample
        progress[_BEAT] = 0.0
        end = index + 1
        if keep is not None:
            kept.append(keep)
        else:
            rejected.append(reject)
        if end - flushed >= FLUSH_ROWS:
            conn.send(("rows", task_id, end, kept_table(kept, schema), rejected))
            kept, rejected, flushed = [], [], end
    conn.send(("rows", task_id, max(end, batch.num_rows), kept_table(kept, schema), rejected))
    conn.send(("done", task_id))


# --------------------------------------------------------------------------- parent side


@dataclass
class _Task:
    task_id: int
    batch: pa.RecordBatch | pa.Table
    received: int = 0  # rows whose outcome the parent holds
    parts: list[pa.Table] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    skip: dict[int, Reject] = field(default_factory=dict)
    done: bool = False
    blameless_crashes: int = 0

    def image_count(self, row: int) -> int:
        try:
            return int(pc.list_value_length(self.batch.column("images"))[row].as_py() or 0)
        except Exception:
            return 0

    def result(self) -> tuple[pa.Table, pa.Table]:
        schema = cleaned_schema(self.batch.schema)
        kept = pa.concat_tables(self.parts) if self.parts else schema.empty_table()
        return kept, rejects_table(self.rejects)


class _Worker:
    """One worker process, its pipe, its progress array and the tasks assigned to it (the one
    it runs and at most one queued behind it, so that sending overlaps with work)."""

    def __init__(self, ctx: Any, index: int, params: CleanParams, decoder: Decoder | None) -> None:
        self.index = index
        self.progress = ctx.RawArray("d", [-1.0, -1.0, -1.0, 0.0, 0.0])
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main,
            args=(child, self.progress, params, decoder),
            name=f"fineharbor-clean-{index}",
        )
        self.process.start()
        child.close()
        self.tasks: deque[_Task] = deque()
        self.timed_out: tuple[int, int, float] | None = None  # (row, image, limit) when killed
        self.stalled: int | None = None  # the row, when killed for making no progress
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


class CleaningPool:
    """Worker processes running :func:`fineharbor.core.cleaning.stage.iter_outcomes`.

    Use as a context manager; :meth:`map` yields ``(kept, rejected)`` per input batch in input
    order. The pool can map several streams one after the other (the workers stay warm).
    """

    def __init__(
        self,
        params: CleanParams,
        *,
        processes: int | None = None,
        decoder: Decoder | None = None,
    ) -> None:
        self.params = params
        self.decoder = decoder
        self.size = processes or params.worker_count
        self.max_in_flight = 3 * self.size
        self._ctx = multiprocessing.get_context(params.start_method)
        if params.start_method == "forkserver":
            self._ctx.set_forkserver_preload([__name__])
        self._workers: list[_Worker] = []
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> CleaningPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        while len(self._workers) < self.size:
            self._workers.append(self._spawn(len(self._workers)))

    def _spawn(self, index: int) -> _Worker:
        return _Worker(self._ctx, index, self.params, self.decoder)

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
            raise RuntimeError("the cleaning pool is closed")
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
                    if batch.num_rows == 0:
                        task.done = True
                    else:
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
            beat = worker.progress[_BEAT]
            if deadline > 0 and now > deadline:
                worker.timed_out = (
                    int(worker.progress[_ROW]),
                    int(worker.progress[_IMAGE]),
                    self.params.decode_timeout_s,
                )
                worker.kill()
                self._replace(index, worker)
            elif deadline <= 0 and beat > 0 and now - beat > STALL_S:
                worker.stalled = int(worker.progress[_ROW])
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
            _, _, end, table, rejects = message
            if table.num_rows:
                task.parts.append(table)
            task.rejects.extend(rejects)
            task.received = end
            task.blameless_crashes = 0
        elif kind == "done":
            task.done = True
            worker.tasks.popleft()
        elif kind == "error":
            raise RuntimeError(f"cleaning worker failed on batch {task.task_id}:\n{message[2]}")

    def _replace(self, index: int, worker: _Worker) -> None:
        """Replace a dead or killed worker; reject the sample it was on; resume its batches."""
        row = int(worker.progress[_ROW])
        image = int(worker.progress[_IMAGE])
        running_id = int(worker.progress[_TASK])
        timed_out = worker.timed_out
        if timed_out is not None:
            row, image = timed_out[0], timed_out[1]
        self._drain(worker)  # rows it flushed before dying are kept
        pending = list(worker.tasks)
        exitcode = worker.process.exitcode
        worker.tasks.clear()
        worker.close(graceful=False)
        task = pending[0] if pending else None
        if task is not None:
            if task.task_id == running_id and row >= task.received and row not in task.skip:
                prefix = f"image {image}: " if image >= 0 and task.image_count(row) > 1 else ""
                if timed_out is not None:
                    reject = Reject(
                        IMAGE_DECODE_TIMEOUT, f"{prefix}decode > {timed_out[2]} s (worker killed)"
                    )
                elif worker.stalled is not None:
                    reject = Reject(
                        WORKER_CRASHED, f"no progress for {STALL_S:.0f} s outside image decoding"
                    )
                elif image >= 0:
                    reject = Reject(
                        IMAGE_CORRUPT, f"{prefix}decoder crashed ({_signal_name(exitcode)})"
                    )
                else:
                    reject = Reject(
                        WORKER_CRASHED, f"worker died ({_signal_name(exitcode)}) on this sample"
                    )
                task.skip[row] = reject
                task.blameless_crashes = 0
            else:
                task.blameless_crashes += 1
                if task.blameless_crashes > MAX_BLAMELESS_CRASHES:
                    raise RuntimeError(
                        f"cleaning worker died {task.blameless_crashes} times on batch "
                        f"{task.task_id} outside any sample ({_signal_name(exitcode)})"
                    )
        fresh = self._spawn(index)
        self._workers[index] = fresh
        for pending_task in pending:
            fresh.submit(pending_task)
