"""Independent tasks of a global stage, in this process or as Ray tasks.

The global stages (``duplicate_clusters``, ``decontaminated_samples``' benchmark matching,
``concept_clusters``) cut their heaviest loop into chunks (k-means forest leaves and pixel
verification batches, rows of query vectors) and hand them to :func:`map_tasks`. Locally the
chunks run one after the other in this process; with ``execution.engine: ray`` and the stage
listed in ``execution.stages`` each chunk is a ``ray.remote`` task on the configured cluster.
Both engines run the same function on the same chunks, so the results are identical, in input
order. Large arrays every task reads are ``shared``: put in Ray's object store once and read
zero-copy by the workers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fineharbor.core.distributed.params import ExecutionParams


class TaskError(RuntimeError):
    """A task of a global stage raised; the message names the stage, the task and the cause."""


@dataclass(frozen=True)
class TaskEngine:
    """Where ``stage``'s tasks run: Ray when ``execution`` puts the stage on Ray, else here."""

    stage: str = "tasks"
    execution: ExecutionParams = field(default_factory=ExecutionParams)
    # tasks run so far, for the stage's metadata (see summary)
    counts: dict[str, int] = field(default_factory=dict, compare=False, hash=False)

    @property
    def on_ray(self) -> bool:
        return self.execution.on_ray(self.stage)

    @property
    def task_rows(self) -> int:
        return self.execution.task_rows

    def summary(self) -> dict[str, Any]:
        """Where the stage's tasks ran and how many: ``task_engine`` (local or ray), ``tasks``."""
        return {
            "task_engine": "ray" if self.on_ray else "local",
            "tasks": self.counts.get("tasks", 0),
        }

    def share(self, value: Any) -> Any:
        """``value`` as tasks read it: put in Ray's object store once (on Ray), as is here.
        Pass the result in ``shared`` to several :func:`map_tasks` calls to put it once."""
        if not self.on_ray:
            return value
        import ray

        from fineharbor.core.distributed.ray_engine import connect

        connect(self.execution)
        return ray.put(value)


def row_ranges(rows: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of at most ``size`` rows covering ``rows`` rows, in order."""
    return [(start, min(start + size, rows)) for start in range(0, rows, size)]


def _apply(args: tuple, fn: Callable) -> Any:
    return fn(*args)


def task_mapper(engine: TaskEngine) -> Callable[[Callable, Sequence[tuple]], list[Any]]:
    """``mapper(fn, [args, ...]) -> [fn(*args), ...]`` on ``engine``: the shape of the duplicate
    search's ``BatchMapper`` (pixel verification batches as tasks)."""
    return functools.partial(_map_args, engine=engine)


def _map_args(fn: Callable, arguments: Sequence[tuple], *, engine: TaskEngine) -> list[Any]:
    return map_tasks(_apply, arguments, engine=engine, shared=(fn,))


def _call(fn: Callable, item: Any, *shared: Any) -> Any:
    return fn(item, *shared)


@functools.cache
def _remote_call():
    import ray

    return ray.remote(_call)


def _failure(engine: TaskEngine, fn: Callable, index: int, count: int, cause: BaseException):
    name = getattr(fn, "__qualname__", repr(fn))
    where = "Ray task" if engine.on_ray else "task"
    return TaskError(
        f"{engine.stage}: {where} {index + 1} of {count} ({name}) failed: "
        f"{type(cause).__name__}: {cause}"
    )


def map_tasks(
    fn: Callable[..., Any],
    items: Sequence[Any],
    *,
    engine: TaskEngine | None = None,
    shared: Sequence[Any] = (),
) -> list[Any]:
    """``[fn(item, *shared) for item in items]``, in order, on ``engine`` (default: local).
    On Ray, ``fn`` (a module-level function), the items and the shared
    values must pickle: pass arrays and paths, not open handles. Shared values not yet
    :meth:`TaskEngine.share`-d are put once for the whole call. A task that raises fails the
    call with a :class:`TaskError` naming the stage and the task."""
    engine = engine or TaskEngine()
    engine.counts["tasks"] = engine.counts.get("tasks", 0) + len(items)
    if not engine.on_ray:
        results = []
        for index, item in enumerate(items):
            try:
                results.append(fn(item, *shared))
            except Exception as error:
                raise _failure(engine, fn, index, len(items), error) from error
        return results
    if not items:
        return []
    import ray

    refs = [v if isinstance(v, ray.ObjectRef) else engine.share(v) for v in shared]
    pending = [_remote_call().remote(fn, item, *refs) for item in items]
    results = []
    for index, ref in enumerate(pending):
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayTaskError as error:
            for rest in pending[index + 1 :]:
                ray.cancel(rest)
            cause = error.cause if isinstance(error.cause, BaseException) else error
            raise _failure(engine, fn, index, len(items), cause) from error
    return results
