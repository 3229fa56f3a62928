"""Continuous batching: every call on one ``BlendedLLM`` decodes in one running batch.

A background thread owns the models. Each call becomes a ``Request`` around its ``Generation``'s
coroutine (``Generation.run``). At every step boundary the thread admits waiting requests (up to
``max_batch_size``, in arrival order) and drops finished or abandoned ones, then runs one step of
every active request together:

1. the base's forward pass for all rows at once (``Forward(step=True)``; rows that feed the same
   number of tokens share one pass: a decoding step, all of them; a new row's prompt runs apart);
2. then, in rounds, what the rows ask for next: guide forward passes, batched among the rows that
   consulted the guide, and host reads (``Fetch``), one device sync for all rows per round;
3. each row's event goes to its caller as soon as it is made.

A request's result is what it would be decoded alone: its own caches, sampler, stop strings and
reliability record; only the forward passes are shared. Nobody waits for a long answer to end: a
short request that arrives later joins at the next step and leaves when it is done.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

import torch

from .backends.cpu import release_thread_pool
from .engine import Generation
from .model_calls import Fetch, Forward
from .results import StreamEvent

# a sink receives (event, None) for each event and (None, error) once when the request fails
Sink = Callable[[StreamEvent | None, BaseException | None], None]

# Interpreter exit: a daemon thread still inside a torch operation when Python finalizes is
# stopped in C++ code, which aborts the process ("terminate called without an active
# exception"). So at exit every decoding thread stops at its next step boundary, and exit waits
# for it.
_SCHEDULERS: weakref.WeakSet[Scheduler] = weakref.WeakSet()
_THREADS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()  # every decoding thread started
_EXITING = threading.Event()
EXIT_WAIT_S = 30.0
"""The longest interpreter exit waits for a decoding thread to finish its step."""


@atexit.register
def _stop_at_exit() -> None:
    _EXITING.set()
    for scheduler in list(_SCHEDULERS):
        with scheduler._cv:
            scheduler._cv.notify_all()
    # every thread, also one that has left its loop and is still freeing its frame's tensors
    for thread in list(_THREADS):
        if thread.is_alive() and thread is not threading.current_thread():
            thread.join(EXIT_WAIT_S)


class TurnLock:
    """The models' lock: the decoding thread holds it for each step, a caller for its prompt's
    encoding (the tokenizers are shared with the steps).

    A plain lock is not fair: the decoding thread, releasing it at the end of a step and taking it
    again a moment later, would keep a waiting caller out for many steps (a new request then waits
    for the running ones, the head-of-line blocking batching removes). Here callers go first: at
    each step boundary the decoding thread lets every caller that is waiting have its turn (for at
    most ``CALLER_FIRST_S`` per step, so a flood of callers cannot stop the decoding).
    """

    CALLER_FIRST_S = 0.05

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cv = threading.Condition()
        self._callers = 0  # callers waiting for a turn

    def acquire(self, timeout: float = -1) -> bool:
        """A caller's turn (up to ``timeout`` seconds of waiting; -1: no limit); True if taken."""
        with self._cv:
            self._callers += 1
        try:
            return self._lock.acquire(timeout=timeout)
        finally:
            with self._cv:
                self._callers -= 1
                if not self._callers:
                    self._cv.notify_all()

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> TurnLock:
        """The decoding thread's turn: after the callers waiting now."""
        # read without the condition: a caller counted a moment later arrived after this boundary
        if self._callers:
            with self._cv:
                self._cv.wait_for(lambda: not self._callers, self.CALLER_FIRST_S)
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class Request:
    """One call's decoding: its coroutine, where its events go, and whether it was abandoned."""

    __slots__ = (
        "gen",
        "steps",
        "sink",
        "on_done",
        "item",
        "cancelled",
        "over",
        "submitted",
        "admitted",
    )

    def __init__(
        self, gen: Generation, sink: Sink, on_done: Callable[[StreamEvent], None] | None = None
    ) -> None:
        self.gen = gen
        self.steps: Generator[Forward | Fetch | StreamEvent, Any, None] | None = None  # its run()
        self.sink = sink
        self.on_done = on_done
        self.item: Any = None
        self.cancelled = False
        self.over = False
        self.submitted = time.perf_counter()
        self.admitted: float | None = None

    def cancel(self) -> None:
        """Abandon the request: its row is freed at the next step boundary, and its models' work
        in flight (a remote request) is stopped now."""
        first = not (self.cancelled or self.over)
        self.cancelled = True
        if first:
            try:
                self.gen.cancel()
            except Exception:  # stopping early is a courtesy; the row is freed at the next step
                pass


class Scheduler:
    """The decoding thread of one ``BlendedLLM`` (started on demand, gone when idle).

    Args:
        lock: held while the models run (a step), shared with prompt encoding (tokenizers).
        max_batch_size: most requests decoding at once; more wait in arrival order.
        idle_s: how long the thread waits for work before it ends (a new call starts it again).
    """

    def __init__(
        self,
        lock: TurnLock,
        max_batch_size: int = 16,
        idle_s: float = 2.0,
        name: str = "blendin",
    ) -> None:
        self.lock = lock
        self.max_batch_size = max_batch_size
        self.idle_s = idle_s
        self.name = name
        self._cv = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._active: list[Request] = []
        self._thread: threading.Thread | None = None
        self.steps = 0  # decoding steps run (for stats and tests)
        self.max_rows = 0  # the most rows one step ran
        _SCHEDULERS.add(self)

    # -- the callers' side -------------------------------------------------------------------
    def submit(
        self, gen: Generation, sink: Sink, on_done: Callable[[StreamEvent], None] | None = None
    ) -> Request:
        req = Request(gen, sink, on_done)
        release_thread_pool()  # the caller's idle CPU threads would slow the decoding thread's
        with self._cv:
            self._waiting.append(req)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name=f"{self.name}-decode", daemon=True
                )
                _THREADS.add(self._thread)
                self._thread.start()
            self._cv.notify()
        return req

    @property
    def queued(self) -> int:
        """Requests waiting for a row."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests decoding now."""
        return len(self._active)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until the decoding thread has ended (``idle_s`` after its last request); True if
        it has. Its CPU thread pool goes with it (see ``backends.cpu.release_thread_pool``)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    # -- the decoding thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                if _EXITING.is_set():  # the interpreter is exiting: nobody will read the rows
                    self._thread = None
                    return
                self._active = [r for r in self._active if not r.over]
                if not self._waiting and not self._active:
                    self._cv.wait(self.idle_s)
                    if not self._waiting and not self._active:
                        self._thread = None
                        return
                while self._waiting and len(self._active) < self.max_batch_size:
                    req = self._waiting.popleft()
                    if not req.cancelled:
                        req.admitted = time.perf_counter()
                        self._active.append(req)
                rows = list(self._active)
            try:
                with self.lock, torch.inference_mode():
                    self._step(rows)
            except BaseException as e:  # a bug in the loop itself: fail the rows, keep serving
                for r in rows:
                    if not r.over:
                        self._fail(r, e)

    def _step(self, rows: list[Request]) -> None:
        """One decoding step of every row (see the module's docstring)."""
        live = []
        for r in rows:
            if r.cancelled:
                self._close(r)
            elif r.steps is None:  # new: run up to its first request (the prompt's forward)
                r.steps = r.gen.run()
                if self._advance(r, None):
                    live.append(r)
            else:
                live.append(r)
        if not live:
            return
        self.steps += 1
        self.max_rows = max(self.max_rows, len(live))
        self._forwards([r for r in live if isinstance(r.item, Forward)])
        while live:
            nxt = []
            for r in live:
                while not r.over and isinstance(r.item, StreamEvent):
                    self._deliver(r)
                if r.over or (isinstance(r.item, Forward) and r.item.step):
                    continue  # done, or waiting for the next step
                nxt.append(r)
            live = nxt
            forwards = [r for r in live if isinstance(r.item, Forward)]
            if forwards:
                self._forwards(forwards)
            elif live:
                self._fetches(live)

    def _advance(self, r: Request, value: Any) -> bool:
        """Send ``value`` into the row's coroutine; False when the row failed."""
        try:
            assert r.steps is not None  # started
            r.item = r.steps.send(value)
            return True
        except StopIteration:
            r.over = True
        except BaseException as e:
            self._fail(r, e)
        return False

    def _deliver(self, r: Request) -> None:
        event = r.item
        if event.done:
            r.over = True
            try:
                if r.on_done is not None:
                    r.on_done(event)
            except BaseException as e:
                self._fail(r, e)
                return
            r.sink(event, None)
            self._close(r)
        else:
            r.sink(event, None)
            self._advance(r, None)

    def _forwards(self, rows: list[Request]) -> None:
        """Answer ``Forward`` requests: one batched call per model. A backend may answer a row with
        an exception instead of logits (a remote request that failed): that row fails alone."""
        groups: dict[int, list[Request]] = {}
        for r in rows:
            groups.setdefault(id(r.item.backend), []).append(r)
        for group in groups.values():
            items = [r.item for r in group]
            try:
                logits = items[0].backend.forward_batch(
                    [f.state for f in items], [f.ids for f in items], [f.n_last for f in items]
                )
            except BaseException as e:
                for r in group:
                    self._fail(r, e)
                continue
            for r, out in zip(group, logits):
                if isinstance(out, BaseException):  # this row's model call failed, not the group's
                    self._fail(r, out)
                else:
                    self._advance(r, out)

    def _fetches(self, rows: list[Request]) -> None:
        """Answer ``Fetch`` requests with one host read for all of them."""
        tensors = [r.item.tensor for r in rows]
        if len({t.dtype for t in tensors}) > 1:
            tensors = [t.to(torch.float64) for t in tensors]
        values = torch.cat(tensors).tolist() if len(tensors) > 1 else tensors[0].tolist()
        at = 0
        for r, t in zip(rows, tensors):
            n = t.shape[0]
            self._advance(r, values[at : at + n])
            at += n

    def _fail(self, r: Request, error: BaseException) -> None:
        if r.over and r.steps is None:
            return
        r.over = True
        self._close(r)
        r.sink(None, error)

    @staticmethod
    def _close(r: Request) -> None:
        r.over = True
        if r.steps is not None:
            try:
                r.steps.close()
            except BaseException:
                pass
            r.steps = None
        r.gen.release()  # its caches (and the batch buffers they point into) can go now
