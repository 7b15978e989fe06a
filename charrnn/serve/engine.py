"""The server's engine: one thread that owns the model and a charrnn.sample.Batch.

Continuous batching: every active request's streams advance together, a block of
characters per stream per engine call (see BLOCK); between calls, requests whose
client went away leave, and queued requests join while the batch has rows free (at
most max_streams streams; a request with n choices takes n rows and joins whole, in
the order requests came). A stream's text does not depend on what else runs beside it
(see charrnn.sample.Batch). Scoring (/v1/score), beam search and the search for
unique lines run here too, a step (a chunk of text, a beam's character, a batch of
lines) between two generation calls, so that they do not stall generation for long;
so does the reading of a prompt longer than a chunk, while its request waits in the
queue (letting those behind it join if they fit).

The engine talks to the event loop through Jobs: the HTTP side submits a Job and
reads its updates; the engine appends updates and wakes the loop (once per batch of
updates, however many arrive before the loop reads them).
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
import traceback
from dataclasses import dataclass

from charrnn.sample import PRIME_CHUNK, prime_steps

# Characters per stream per engine call: BLOCK, or more (up to MAX_BLOCK) while the
# batch is small enough that a call still takes under CALL_TIME.
#
# An engine call costs a fixed Python and dispatch overhead (measured: ~50 us plus
# ~12 us per stream) on top of the compute, and a request that arrives waits for the
# call under way to end before it joins, then one call more for its first
# characters. For an LSTM 2x256 on one core a step takes ~45 us at batch 1 and ~0.3 ms
# at batch 16, so 16 characters a call keep the overhead near 5% at batch 16 and up,
# while a newcomer waits ~5 ms (~20 ms at batch 64) to join. At batch 1, 16 steps are
# only ~0.7 ms (overhead ~7%, and an event for the client every 0.7 ms): the block
# then grows, to 64 (as `charrnn sample` uses) at ~3 ms a call, which a joining
# request hardly notices.
BLOCK, MAX_BLOCK = 16, 64
CALL_TIME = 0.004  # seconds: a call may take this long to use a block above BLOCK
RATE_WINDOW = 5.0  # seconds over which characters/s is measured


def engine_threads(cores: int | None = None) -> int:
    """Numba threads of the engine: one less than the cores, at least 1.

    The kernels' threads spin at a barrier after every step; with as many engine
    threads as cores, the event loop (HTTP, JSON, server-sent events) would have to
    take its time from spinning threads, and every engine call would wait for the
    thread it preempted. With one core left to it, the HTTP side keeps up and the
    engine runs undisturbed (on 2 cores: a 1-thread engine)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores - 1)


@dataclass
class Update:
    """What one engine call made for one stream of a job: its new characters, whether
    it ended, and the stop string that ended it (None: none, or its length ran out)."""

    index: int
    text: str
    ended: bool
    stop: str | None


class Job:
    """A request's work, shared by the event loop (which submits it and reads its
    updates) and the engine thread (which appends them).

    kind "generate": streams (charrnn.sample.Stream, index = the choice), advanced in
    the shared batch. kind "steps": work that runs a step at a time between two calls
    (a score, a beam search, a search for unique lines): steps() makes the generator,
    whose return value is the job's result (which finish(result), if given, turns
    into updates of its choices)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, streams=(), steps=None, finish=None):
        self.loop = loop
        self.streams = list(streams)
        self.steps, self.finish = steps, finish
        self.kind = "steps" if steps is not None else "generate"
        self.rows = len(self.streams) if steps is None else 0
        # A prime longer than a chunk is read a chunk per engine round while the job
        # waits in the queue (priming: the generator; prime_state: its result), so that
        # a long prompt does not stall the batch; a shorter one is read as it joins.
        self.long_prime = (any(s.remaining > 0 for s in self.streams)
                           and self.streams[0].prime_ids.size - 1 > PRIME_CHUNK)
        self.priming = None
        self.prime_state = None
        self.result = None  # a stepped job's result (a score's Scored)
        self.error: str | None = None  # why the engine gave up on it
        self.error_code = "shutting_down"  # ... "shutting_down" (the server stopping) or "internal_error"
        self.done = False
        self.cancelled = False
        self.queued_at = time.monotonic()
        self._items: list[Update] = []
        self._lock = threading.Lock()
        self._woken = False
        self._event = asyncio.Event()

    # ----- the engine's side
    def push(self, updates: list[Update], done: bool = False) -> None:
        with self._lock:
            self._items.extend(updates)
            self.done = self.done or done
            wake, self._woken = not self._woken, True
        if wake:
            try:
                self.loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: nobody is reading
                pass

    def fail(self, message: str, code: str = "shutting_down") -> None:
        self.error, self.error_code = message, code
        self.push([], done=True)

    # ----- the event loop's side
    def _wake(self) -> None:
        with self._lock:
            self._woken = False
        self._event.set()

    async def updates(self):
        """Lists of Updates as the engine makes them, until the job is done. Whatever
        arrived while the reader was busy comes as one list."""
        while True:
            await self._event.wait()
            self._event.clear()
            with self._lock:
                items, self._items, done = self._items, [], self.done
            if items:
                yield items
            if done:
                return


class Engine:
    """The engine thread and its queue (see the module's doc)."""

    def __init__(self, model, max_streams: int, threads: int | None = None, block: int | None = None):
        from charrnn.sample import Batch

        self.model, self.vocab = model, model.checkpoint.vocab
        self.max_streams, self.block = max_streams, block  # block None: chosen per call (block_size)
        self._step_time = None  # (seconds per step of the last call, its batch size)
        self.threads = threads or engine_threads()
        self.batch = Batch(model.network, self.vocab)
        self.owner: dict[int, Job] = {}  # id(stream) -> its job
        self.active: list[Job] = []  # generate jobs in the batch
        self.queue: collections.deque[Job] = collections.deque()  # generate jobs waiting for rows
        self.stepped: collections.deque[Job] = collections.deque()  # "steps" jobs, run in turn
        self.cond = threading.Condition()
        self.stopping = False
        self.ready = threading.Event()  # set once the kernels are loaded
        self.generated = 0  # characters generated, ever
        self.calls = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._steps = None  # the generator of the first stepped job
        self.thread = threading.Thread(target=self._run, name="charrnn-engine", daemon=True)

    # ----- the event loop's side
    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.stopping:
                job.fail("the server is shutting down")
                return
            (self.stepped if job.kind == "steps" else self.queue).append(job)
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: the job's rows are freed at the next engine call."""
        if job.done:
            return
        with self.cond:
            job.cancelled = True
            self.cond.notify()

    def stop(self, timeout: float | None = 10.0) -> None:
        """End the thread; unfinished jobs fail."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    @property
    def active_streams(self) -> int:
        return len(self.batch)

    @property
    def queued(self) -> int:
        return len(self.queue)

    def chars_per_second(self) -> float:
        """Characters generated per second over the last RATE_WINDOW seconds."""
        now = time.monotonic()
        recent = list(self._recent)
        return sum(n for t, n in recent if t >= now - RATE_WINDOW) / RATE_WINDOW

    # ----- the engine thread
    def _run(self) -> None:
        import numba

        # Thread-local in Numba: the HTTP side's threads are not affected.
        numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
        try:
            try:
                self._warm_up()
            except Exception:  # the first requests will load the kernels instead (and meet the fault)
                traceback.print_exc()
            self.ready.set()
            while True:
                try:
                    if not self.step(wait=True):
                        break
                except Exception as e:  # a fault: the requests under way fail, the engine goes on
                    traceback.print_exc()
                    self._recover(f"internal error in the engine: {type(e).__name__}: {e}")
        finally:
            self._fail_all("the server is shutting down")

    def _recover(self, message: str) -> None:
        """After a fault in a call: fail the jobs in the batch (and the stepped one
        under way) and start again with an empty batch; queued jobs wait as before."""
        from charrnn.sample import Batch

        with self.cond:
            jobs, self.active = self.active, []
            if self._steps is not None and self.stepped:
                jobs.append(self.stepped.popleft())
            self._steps = None
        self.batch = Batch(self.model.network, self.vocab)
        self.owner.clear()
        for job in jobs:
            job.fail(message, "internal_error")

    def _warm_up(self) -> None:
        """Load the compiled kernels (from Numba's cache: about a second) before the
        first request rather than during it: a prime, a few characters and a score.
        Requests that come meanwhile wait in the queue."""
        from charrnn.config import SampleConfig
        from charrnn.sample import Batch, Stream

        prime = next(c for c in self.vocab.chars if c != "\n") * 2  # (line mode: a line, not its ends)
        batch = Batch(self.model.network, self.vocab)
        batch.add([Stream(self.vocab, SampleConfig(prime=prime, length=2), 0, lines=self.model.lines)])
        while len(batch):
            batch.advance(2)
        self.model.score(prime)

    def step(self, wait: bool = False) -> bool:
        """One round: the changes between calls (leave, join), one generation call
        for the batch, one chunk of scoring. wait: block until there is work. Returns
        False once the engine is stopping."""
        with self.cond:
            while wait and not self.stopping and not self._has_work():
                self.cond.wait()
            if self.stopping:
                return False
            self._leave_cancelled()
            joining = self._admit()
            stepped = self.stepped[0] if self.stepped else None
            priming = self._unprimed()
        if joining:
            self._join(joining)
        if len(self.batch):
            k, rows, start = self.block_size(), len(self.batch), time.perf_counter()
            self._dispatch(self.batch.advance(k))
            self._step_time = ((time.perf_counter() - start) / k, rows)
        if stepped is not None:
            self._step_job(stepped)
        if priming is not None:
            self._prime_chunk(priming)
        return True

    def block_size(self) -> int:
        """Characters per stream for the next call: BLOCK, or up to MAX_BLOCK when the
        last call's time per step says that the call still takes under CALL_TIME (the
        step time scaled up with the batch, if it grew since)."""
        if self.block is not None:
            return self.block
        if self._step_time is None:
            return BLOCK
        seconds, rows = self._step_time
        step = seconds * max(1.0, len(self.batch) / max(1, rows))
        return max(BLOCK, min(MAX_BLOCK, int(CALL_TIME / max(step, 1e-9))))

    def _has_work(self) -> bool:
        return bool(len(self.batch) or self.queue or self.stepped or any(j.cancelled for j in self.active))

    def _leave_cancelled(self) -> None:
        for job in [j for j in self.active if j.cancelled]:
            self.batch.drop(job.streams)
            self._forget(job)
        for job in [j for j in self.queue if j.cancelled]:
            self.queue.remove(job)
            job.push([], done=True)
        for job in [j for j in self.stepped if j.cancelled]:
            if job is self.stepped[0]:
                self._steps = None  # it was under way
            self.stepped.remove(job)
            job.push([], done=True)

    def _admit(self) -> list[Job]:
        """Queued jobs that fit in the batch now, in order (the first that does not fit
        waits, and so do those behind it); a job whose long prime is still being read
        lets those behind it pass."""
        joining, rows = [], len(self.batch)
        for job in list(self.queue):
            if job.long_prime and job.prime_state is None:
                continue
            if rows + job.rows > self.max_streams:
                break
            self.queue.remove(job)
            joining.append(job)
            rows += job.rows
        return joining

    def _unprimed(self) -> Job | None:
        """The first queued job whose long prime is still to be read."""
        return next((j for j in self.queue if j.long_prime and j.prime_state is None), None)

    def _prime_chunk(self, job: Job) -> None:
        """Read one chunk of a queued job's long prime; a fault fails that job alone."""
        try:
            if job.priming is None:
                job.priming = prime_steps(self.model.network, job.streams[0].prime_ids)
            next(job.priming)
        except StopIteration as done:
            job.prime_state, job.priming = done.value, None
        except Exception as e:
            traceback.print_exc()
            with self.cond:
                if job in self.queue:
                    self.queue.remove(job)
            job.fail(f"internal error in the engine: {type(e).__name__}: {e}", "internal_error")

    def _join(self, jobs: list[Job]) -> None:
        streams, primed = [], {}
        for job in jobs:
            live = [s for s in job.streams if s.remaining > 0]
            if not live:  # max_tokens 0: nothing to generate
                job.push([Update(s.index, "", True, None) for s in job.streams], done=True)
                continue
            if len(live) < len(job.streams):
                job.push([Update(s.index, "", True, None) for s in job.streams if s.remaining <= 0])
            self.active.append(job)
            if job.prime_state is not None:
                primed[job.streams[0].settings.prime] = job.prime_state
            for s in live:
                self.owner[id(s)] = job
            streams += live
        first = self.batch.add(streams, primed)  # runs each new prime not read yet
        if first is not None:  # streams that start from a random character
            self._dispatch(first)

    def _dispatch(self, block) -> None:
        """Hand each job its streams' new characters; jobs whose streams all ended are done."""
        chars = self.vocab.chars
        by_job: dict[int, list[Update]] = {}
        made = 0
        for s, ids, n, ended in zip(block.streams, block.ids, block.counts, block.ended):
            n = int(n)
            made += n
            stop = s.stop if ended else None
            by_job.setdefault(id(self.owner[id(s)]), []).append(
                Update(s.index, "".join(chars[j] for j in ids[:n]), bool(ended), stop))
        self.calls += 1
        self.generated += made
        now = time.monotonic()
        self._recent.append((now, made))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()
        for job in list(self.active):
            updates = by_job.get(id(job))
            if updates is None:
                continue
            finished = all(s.ended for s in job.streams)
            if finished:
                self._forget(job)
            job.push(updates, done=finished)

    def _forget(self, job: Job) -> None:
        self.active.remove(job)
        for s in job.streams:
            self.owner.pop(id(s), None)
        if job.cancelled:
            job.push([], done=True)

    def _step_job(self, job: Job) -> None:
        """One step of the first stepped job; at its end, its result."""
        import numba

        if self._steps is None:
            self._steps = job.steps()
        # On as many threads as `charrnn evaluate` and `charrnn sample` use (all cores).
        before = numba.get_num_threads()
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        try:
            next(self._steps)
            return
        except StopIteration as done:  # its work is done
            job.result = done.value
            updates = job.finish(done.value) if job.finish else []
        finally:
            numba.set_num_threads(before)
        self._steps = None
        with self.cond:
            self.stepped.popleft()
        job.push(updates, done=True)

    def _fail_all(self, message: str) -> None:
        with self.cond:
            jobs = [*self.active, *self.queue, *self.stepped]
            self.active, self.queue, self.stepped = [], collections.deque(), collections.deque()
        for job in jobs:
            job.fail(message)
