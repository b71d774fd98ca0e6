"""A blocking source (pyserial, OpenCV) read in a thread it owns, as an async iterator.

The event loop must never block (invariant 7), and a serial port or a camera only offers
blocking reads. :class:`BlockingSource` runs ``read()`` over and over in one thread of its
own and hands each result to the loop; ``async with`` bounds the thread's life: leaving the
block (also by cancellation) tells the thread to stop, calls ``interrupt`` so a read in
progress returns early, and waits until the thread has ended. ``read`` must return within
about ``stop_within`` seconds (a serial read with a timeout, a camera frame), returning None
when it has nothing; whatever it raises ends the source and is raised to the consumer.

The thread owns the device handle between ``open`` and ``close`` (both run in the thread),
so nothing else touches it concurrently: writes to the device (a scanner's good-read answer)
go through :meth:`call`, which runs a function in the same thread between two reads. A source
whose ``read`` blocks until data comes (no busy polling while a device is silent: a serial
read with no timeout, woken by ``interrupt``) passes ``wake_for_calls=True``: :meth:`call`
then also calls ``interrupt``, so the read returns at once (with None) and the call runs
within milliseconds instead of waiting for the next byte. ``interrupt`` must then leave a
wake-up pending if no read is in progress (pyserial's ``cancel_read`` writes to a pipe), so
that a call queued just before the next read starts is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_END = object()


class ThreadLeak(RuntimeError):
    """The reader thread did not end within its deadline after being told to stop."""


class BlockingSource(Generic[T]):
    """``async with BlockingSource(name, read) as src: async for item in src: ...``"""

    def __init__(
        self,
        name: str,
        read: Callable[[], T | None],
        *,
        open: Callable[[], None] | None = None,
        close: Callable[[], None] | None = None,
        interrupt: Callable[[], None] | None = None,
        stop_within: float = 5.0,
        wake_for_calls: bool = False,
    ) -> None:
        self.name = name
        self._read = read
        self._open = open
        self._close = close
        self._interrupt = interrupt
        self.stop_within = stop_within
        self._wake_for_calls = wake_for_calls and interrupt is not None
        self._stop = threading.Event()
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]]] = (
            queue.SimpleQueue()
        )
        # Set by the thread once it takes no more calls; under the lock, so that no call can
        # be queued after the last drain (its caller would wait forever).
        self._calls_lock = threading.Lock()
        self._calls_closed = False
        self._items: asyncio.Queue[Any] = asyncio.Queue()
        self._ended = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._opened: asyncio.Future[None] | None = None

    async def __aenter__(self) -> BlockingSource[T]:
        loop = self._loop = asyncio.get_running_loop()
        self._opened = loop.create_future()
        self._thread = threading.Thread(target=self._main, name=f"source:{self.name}", daemon=True)
        self._thread.start()
        try:
            await self._opened  # open() ran in the thread; its error is raised here
        except BaseException:
            await self._finish()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._finish()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            item = await self._items.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    async def call(self, fn: Callable[[], R]) -> R:
        """Run ``fn`` in the source's thread, between two reads, and return its result.

        With ``wake_for_calls`` the read in progress is interrupted so that ``fn`` runs now.
        """
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            raise RuntimeError(f"source {self.name} is not running")
        future: asyncio.Future[R] = self._loop.create_future()
        with self._calls_lock:
            if self._calls_closed:
                raise RuntimeError(f"source {self.name} is not running")
            self._calls.put((fn, future))
        if self._wake_for_calls and self._interrupt is not None:
            try:
                self._interrupt()
            except Exception:
                log.debug("source %s: interrupt for a call failed", self.name, exc_info=True)
        return await future

    # ---- the thread ----------------------------------------------------------------------

    def _main(self) -> None:
        opened = False
        try:
            if self._open is not None:
                self._open()
            opened = True
            self._post(self._resolve_opened, None)
            while not self._stop.is_set():
                self._run_calls()
                item = self._read()
                if item is not None and not self._stop.is_set():
                    self._post(self._items.put_nowait, item)
        except BaseException as exc:  # everything the device raises goes to the consumer
            if not opened:
                self._post(self._resolve_opened, exc)
            else:
                self._post(self._items.put_nowait, _Failure(exc))
        finally:
            if opened and self._close is not None:
                try:
                    self._close()
                except Exception:
                    log.debug("source %s: error while closing", self.name, exc_info=True)
            self._fail_calls()
            self._post(self._items.put_nowait, _END)
            self._post(self._ended.set)

    def _run_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                result = fn()
            except BaseException as exc:
                self._post(_settle, future, None, exc)
            else:
                self._post(_settle, future, result, None)

    def _fail_calls(self) -> None:
        with self._calls_lock:
            self._calls_closed = True
        while True:
            try:
                _, future = self._calls.get_nowait()
            except queue.Empty:
                return
            error = RuntimeError(f"source {self.name} stopped")
            self._post(_settle, future, None, error)

    def _resolve_opened(self, error: BaseException | None) -> None:
        if self._opened is None or self._opened.done():
            return
        if error is None:
            self._opened.set_result(None)
        else:
            self._opened.set_exception(error)

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # The loop may close meanwhile: then nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    # ---- stopping ------------------------------------------------------------------------

    async def _finish(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        if self._interrupt is not None and thread.is_alive():
            try:
                self._interrupt()
            except Exception:
                log.debug("source %s: interrupt failed", self.name, exc_info=True)
        try:
            async with asyncio.timeout(self.stop_within):
                await asyncio.shield(self._ended.wait())
        except TimeoutError:
            raise ThreadLeak(
                f"source {self.name}: reader thread still running {self.stop_within}s after "
                "stop (a read without a timeout?)"
            ) from None
        thread.join()
        self._thread = None


async def run_in_thread(name: str, fn: Callable[[], R]) -> R:
    """``fn()`` in a thread of its own that ends with it (``asyncio.to_thread`` would leave
    a pool thread behind for the life of the loop): for a rare blocking call such as opening
    a serial port once to learn why it failed."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()

    def main() -> None:
        try:
            result = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    try:
        return await asyncio.shield(future)
    finally:
        # The call is short by contract; joining it keeps the thread's life inside ours.
        if not future.done():
            await asyncio.wait([future])
        thread.join()


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
