"""Interruption handling shared by the CLI entry point and worker pools.

SIGTERM (``kill``, a batch scheduler, ``docker stop``) is treated exactly like Ctrl-C: it runs
whatever SIGINT handler is active (a command may install a graceful one, e.g. ``train`` stops at
the next step boundary), else raises ``KeyboardInterrupt``. Either way the ``finally`` blocks of
the atomic-write helpers remove temp files and the CLI exits with code 130.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from types import FrameType

from meddiff_cli.errors import ExitCode


def _sigterm_as_sigint(signum: int, frame: FrameType | None) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


def install_sigterm_handler() -> None:
    """Make SIGTERM behave like SIGINT in this (main-thread) process."""
    signal.signal(signal.SIGTERM, _sigterm_as_sigint)


def exit_at_next_interrupt() -> None:
    """After the first Ctrl-C has been reported: another one (while finalizers and threads wind down) ends the
    process at once with exit 130 instead of a traceback. Atomic writes make that safe (temp names only)."""
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(int(ExitCode.INTERRUPTED)))


def ignore_interrupts_in_worker() -> None:
    """Pool-worker initializer: Ctrl-C reaches the whole process group, but only the parent reacts.

    The parent cancels pending work and waits for each worker's current case, which finishes its
    atomic write (or fails) normally; a worker killed mid-loop would print its own traceback and
    break the pool instead.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _SpawnIgnoringInterrupts(ProcessPoolExecutor):
    """Workers are born with SIGINT ignored, not only after their initializer ran.

    A spawn worker imports numpy/torch/meddiff for a second or more before the initializer; a Ctrl-C in
    that window printed a KeyboardInterrupt traceback per worker. ``submit`` (``map`` uses it) is where
    the pool starts its processes, so SIGINT is set to SIG_IGN around it: an ignored signal stays ignored
    across exec, and Python keeps it that way at start-up. The parent's own handler is back at once.
    """

    def submit(self, fn, /, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return super().submit(fn, *args, **kwargs)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return super().submit(fn, *args, **kwargs)
        finally:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def interruptible_process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool that Ctrl-C stops within one case's time, without worker tracebacks.

    ``with ProcessPoolExecutor()`` waits on exit for *every* queued job (``pool.map`` queues them all),
    so Ctrl-C would run the whole corpus first. Here queued work is cancelled on any exception,
    workers ignore SIGINT (see :func:`ignore_interrupts_in_worker`), and spawn (not fork) avoids
    deadlocks on the parent's torch/OpenMP threads.
    """
    pool = _SpawnIgnoringInterrupts(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=ignore_interrupts_in_worker
    )
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
