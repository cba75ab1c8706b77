"""Ordered work in worker processes: `ordered_map` runs a function over a stream of items in
`workers` spawned processes, a few items ahead, and yields the results in the stream's order.

The data stages use it for the per-row work that needs no other row (conversion, personal-data scan,
token counting), while the process that reads the landing keeps what must stay in order (duplicate
detection against every earlier row, writing). Items are sent to the workers pickled, so they are
plain values (lists of dicts); each worker is set up once by `initializer(*initargs)`.
"""

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

# Items in flight per worker: enough to keep every worker busy while the caller handles a result,
# few enough that memory stays flat (one batch of rows is ~10k rows).
AHEAD_PER_WORKER = 2


def ordered_map(
    fn: Callable[[Any], Any], items: Iterable, workers: int, initializer: Callable | None = None, initargs: tuple = ()
) -> Iterator[tuple[Any, Any]]:
    """(item, fn(item)) for each item, in order, `fn` run in `workers` spawned processes (fork is
    unsafe under Dagster's and the tokenizer's threads). A worker's exception is raised here."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= workers * AHEAD_PER_WORKER:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
