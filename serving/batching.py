"""Micro-batching for the requests the ranking cache cannot answer.

Requests from users with feedback since training, with category filters, with
``exclude_seen: false``, and sessions all run the model. One at a time, a sequential model spends
most of each call on fixed costs (the item table, the kernel launches); scoring many histories in
one call pays those costs once for all of them. :class:`ScoringBatcher` collects such requests on the
event loop and scores them together in one worker thread.

It batches continuously rather than on a timer: a request that arrives while the worker is idle
is sent at once (after one turn of the event loop, so requests already parsed join it), and the
requests that arrive while a batch is being scored form the next batch. Under light load a request
waits for nothing; under heavy load batches grow up to ``max_batch`` by themselves. Each request
keeps the engine it started with, so a model swap between two requests never mixes models in a
batch. The answers are those the engine gives each request on its own (tested). If a batch fails,
its requests are retried one by one, so one bad request fails only itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.engine import ScoreRequest, ServingEngine

log = logging.getLogger("lmrecsys.serving")


async def score(batcher: ScoringBatcher | None, engine: ServingEngine, request: ScoreRequest):
    """What ``engine.recommend_histories([request])[0]`` returns: micro-batched through ``batcher``, or
    scored at once on the calling thread when there is none (batching off)."""
    if batcher is None:
        return engine.recommend_histories([request])[0]
    return await batcher.recommend(engine, request)


class ScoringBatcher:
    """Scores ``ScoreRequest``\\ s in micro-batches on one worker thread; see the module docstring."""

    def __init__(self, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self._pending: list[tuple[ServingEngine, ScoreRequest, asyncio.Future]] = []
        self._busy = False
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring-batcher")
        self.batches = 0
        """Batches scored so far (for the tests and /metrics)."""
        self.largest_batch = 0

    async def recommend(self, engine: ServingEngine, request: ScoreRequest):
        """What ``engine.recommend_histories([request])[0]`` returns, scored in a micro-batch."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((engine, request, future))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().call_soon(self._dispatch)
        return await future

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _dispatch(self) -> None:
        """Send the oldest ``max_batch`` pending requests to the worker (on the event loop)."""
        if not self._pending:
            self._busy = False
            return
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        done = asyncio.get_running_loop().run_in_executor(self._executor, self._score, batch)
        done.add_done_callback(lambda outcome: self._deliver(batch, outcome))

    def _deliver(self, batch, outcome: asyncio.Future) -> None:
        if outcome.cancelled():
            answers = [asyncio.CancelledError()] * len(batch)
        elif outcome.exception() is not None:
            answers = [outcome.exception()] * len(batch)
        else:
            answers = outcome.result()
        for (_, _, future), answer in zip(batch, answers):
            if future.done():  # the client went away
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        self._dispatch()

    @staticmethod
    def _score(batch) -> list:
        """Answers (or exceptions) in batch order; runs on the worker thread."""
        answers: list = [None] * len(batch)
        groups: dict[int, list[int]] = {}
        for position, (engine, _, _) in enumerate(batch):
            groups.setdefault(id(engine), []).append(position)
        for positions in groups.values():
            engine = batch[positions[0]][0]
            try:
                results = engine.recommend_histories([batch[p][1] for p in positions])
            except Exception:  # find the request at fault: score each alone
                log.warning(
                    "a micro-batch of %d failed; scoring its requests one by one", len(positions), exc_info=True
                )
                results = []
                for p in positions:
                    try:
                        results.append(engine.recommend_histories([batch[p][1]])[0])
                    except Exception as exc:
                        results.append(exc)
            for p, result in zip(positions, results):
                answers[p] = result
        return answers
