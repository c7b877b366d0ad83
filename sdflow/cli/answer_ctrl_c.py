"""Ctrl-C answered within seconds, whatever torch is doing.

Python takes a signal between two lines of Python; one torch operation on a large image (the VAE's attention over
a 512x512 latent, a convolution over 4096x4096 pixels) runs for tens of seconds inside C++ before the next line.
So the command's work runs in a thread, and the main thread only waits: Ctrl-C reaches it at once. The work is then
asked to stop at its next line of Python (the same KeyboardInterrupt, so its run folder says ``interrupted``); if
it is still inside one operation after ``GRACE_S``, the command ends anyway, marking the runs it leaves.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Callable, TypeVar

T = TypeVar("T")

GRACE_S = 2.0


def run_answering_ctrl_c(work: Callable[[], T]) -> T:
    """``work()``, run in a worker thread; KeyboardInterrupt in the caller as soon as Ctrl-C is pressed."""
    outcome: dict[str, object] = {}
    done = threading.Event()  # (not Thread.join: a join cut short by Ctrl-C can mark a running thread as ended)

    def target():
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 (given back to the main thread as it was raised)
            outcome["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=target, name="sdflow-run", daemon=True)
    worker.start()
    try:
        while not done.is_set():
            done.wait(0.1)  # (a wait that a signal interrupts)
    except KeyboardInterrupt:
        _raise_in(worker, KeyboardInterrupt)
        if not done.wait(GRACE_S):
            from ..run.manifest import interrupt_running_runs

            interrupt_running_runs()
            _abandoned.append(worker)
        raise
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")  # type: ignore[return-value]


_abandoned: list[threading.Thread] = []


def exit_now_if_work_abandoned(status: int) -> None:
    """Exit with ``status`` at once when a worker thread is still inside a torch operation: the interpreter's normal
    shutdown would wait on it or abort under it (its C++ thread pool torn down while it runs)."""
    if any(thread.is_alive() for thread in _abandoned):
        import logging
        import os
        import sys

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _raise_in(thread: threading.Thread, exception: type[BaseException]) -> None:
    """Raise ``exception`` in ``thread`` at its next line of Python (CPython's PyThreadState_SetAsyncExc)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exception))
