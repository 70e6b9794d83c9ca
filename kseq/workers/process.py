"""A persistent pool of worker processes that return batches through shared memory.

# NOTE [ worker processes ]
Each worker gets the dataset once, at start (inherited under ``fork``, pickled
under ``spawn`` and ``forkserver``), and a duplex pipe. A request is
``(epoch, index, slot path)``; the worker calls the pure
``dataset.get_batch(index, epoch)``, writes the arrays into the slot
(NOTE [ shared-memory slots ] in ``shm.py``) and answers with the batch's
skeleton and layout. Requests carry their epoch, so no state leaks between
epochs and any worker can compute any batch.

The main process waits on every pipe *and* every process sentinel at once
(``multiprocessing.connection.wait``), so a worker that dies (a signal,
``os._exit``, the OOM killer) is seen at once and raised as a ``WorkerError``
naming it, its exit code or signal, and the batches it held: never a hang.
Workers ignore SIGINT (Ctrl-C is the main process's to handle: it closes the
pool) and exit by themselves when their parent goes away: a watchdog thread in each
worker checks every quarter second that the parent it started under is still its parent
and that the main process still exists, and ends the worker with ``os._exit`` otherwise,
even in the middle of a batch. Under fork and spawn either check sees a dead main process;
under forkserver only the second does: the parent is the fork server, which holds on until
its last child is gone (each child keeps its "alive" pipe open), so it cannot be waited for.
With nameless slots (NOTE [ shared-memory slots ] in ``shm.py``) a main process killed by
SIGKILL leaves nothing behind: the workers are gone within a second or so, and their
memory with them (tests/test_reliability.py asserts it under each start method).

Each worker also gets, over its socket, the descriptor of a nameless file where
``faulthandler`` writes its Python stack on SIGUSR1. A batch that takes longer than
``timeout`` seconds is reported with that stack (see :meth:`ProcessPool.overdue`); the
loader then replaces the pool.

A worker sets ``KSEQ_WORKER_PROCESS=1``, unpickles the dataset's plan (no Keras class in it),
and this module (like all of ``kseq.workers``) imports no framework: a worker of a dataset
whose code needs only numpy never loads Keras or its backend (NOTE [ a Keras class only
where Keras is fed ] in ``kseq/datasets/_pydataset.py``).

On glibc, a worker fixes malloc's thresholds at start: see NOTE [ malloc
thresholds ] in ``malloc.py``. Only kseq's own worker processes are tuned, never
the user's process.
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import pickle
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from kseq.errors import WorkerError
from kseq.workers.backend import Done, Key, in_window
from kseq.workers.context import batch_context, leave_globals_alone, reseed_globals
from kseq.workers.malloc import tune_malloc
from kseq.workers.pickling import dumps_for_workers
from kseq.workers.shm import NoSpace, SlotPool, SlotWriter, nameless_file, pid_alive
from kseq.workers.tree import flatten, unflatten

__all__ = ["WORKER_ENV", "ProcessPool"]

WORKER_ENV = "KSEQ_WORKER_PROCESS"  # set to "1" in every worker process, before the dataset is unpickled
_PARENT_CHECK_S = 0.25
_JOIN_S = 2.0
_STACK_WAIT_S = 2.0
_STACK_SIGNAL = signal.SIGUSR1


@dataclass
class _Worker:
    number: int
    process: BaseProcess
    conn: Connection
    sock: socket.socket  # the same socket as conn, for passing descriptors
    stack_fd: int  # faulthandler writes the worker's stack here on SIGUSR1
    busy: list[Key] = field(default_factory=list)  # in the order sent: the first is being computed
    ready: bool = False
    since: float = 0.0  # when busy[0] started (estimated: when the worker was known to be free for it)
    slots: set[int] = field(default_factory=set)  # slots whose descriptor the worker holds

    def __str__(self) -> str:
        return f"kseq worker {self.number} (pid {self.process.pid})"

    def start_next(self) -> None:
        self.since = time.monotonic()


class ProcessPool:
    """``workers`` processes computing batches of ``dataset`` into ``slots``.

    Example:
        >>> import numpy as np
        >>> from kseq.workers.shm import SlotPool
        >>> class Squares:
        ...     def get_batch(self, index, epoch):
        ...         return (np.arange(4) + index) ** 2,
        >>> slots = SlotPool()
        >>> pool = ProcessPool(Squares(), workers=1, start_method="fork", slots=slots)
        >>> pool.submit(None, (0, 1))
        >>> done = []
        >>> while not done:  # poll returns what finished; the first answer is the worker's "ready"
        ...     done = pool.poll(10.0)
        >>> pool.materialize(done[0])[0].tolist()
        [1, 4, 9, 16]
        >>> pool.overdue(60.0) is None  # nothing is being computed, so nothing is late
        True
        >>> pool.close(graceful=True); slots.close()
    """

    def __init__(self, dataset: Any, *, workers: int, start_method: str, slots: SlotPool) -> None:
        context = multiprocessing.get_context(start_method)
        payload = dataset if start_method == "fork" else dumps_for_workers(dataset, start_method)
        self.start_method = start_method
        self._slots = slots
        self._window = context.RawValue("q", 0)
        self._workers: list[_Worker] = []
        self._tasks: dict[Key, tuple[_Worker, int | None]] = {}
        self._short: str | None = None  # why batches went through the pipes; reported once by notices()
        self._short_reported = False
        try:
            for number in range(workers):
                self._workers.append(self._start(context, number, payload))
        except BaseException:
            self.close(graceful=False)
            raise

    def _start(self, context: Any, number: int, payload: Any) -> _Worker:
        parent_end, child_end = context.Pipe(duplex=True)
        process = context.Process(
            target=_worker_main,
            args=(child_end, payload, os.getpid(), self._window),
            name=f"kseq-worker-{number}",
            daemon=True,
        )
        try:
            process.start()
        except Exception as e:
            parent_end.close()
            msg = f"Cannot start kseq worker {number} with start_method={self.start_method!r}: {e}"
            raise WorkerError(msg) from e
        finally:
            child_end.close()
        sock = socket.socket(fileno=os.dup(parent_end.fileno()))
        stack_fd = nameless_file(tempfile.gettempdir())
        worker = _Worker(number, process, parent_end, sock, stack_fd)
        with contextlib.suppress(OSError):  # a worker that died at once is reported by poll
            parent_end.send("stack")
            socket.send_fds(sock, [b"s"], [stack_fd])
        return worker

    # -- the Backend protocol ----------------------------------------------------

    def submit(self, dataset: Any, key: Key) -> None:  # noqa: ARG002 - the workers hold their own copy
        worker = min(self._workers, key=lambda w: len(w.busy))
        slot: int | None
        try:
            slot = self._slots.acquire()
        except NoSpace as e:  # the batch travels through the pipe (NOTE [ shared-memory slots ])
            slot = None
            self._note_short(str(e))
        new_fd = slot is not None and slot not in worker.slots
        try:
            worker.conn.send((key[0], key[1], slot, new_fd))
            if new_fd:
                socket.send_fds(worker.sock, [b"f"], [self._slots.fd(slot)])  # type: ignore[arg-type]
                worker.slots.add(slot)  # type: ignore[arg-type]
        except OSError as e:  # its pipe broke: the worker is gone
            if slot is not None:
                self._slots.release(slot)
            raise self._death(worker) from e
        if not worker.busy and worker.ready:
            worker.start_next()
        worker.busy.append(key)
        self._tasks[key] = (worker, slot)

    def poll(self, timeout: float) -> list[Done]:
        by_conn = {w.conn: w for w in self._workers}
        by_sentinel = {w.process.sentinel: w for w in self._workers}
        ready = wait([*by_conn, *by_sentinel], timeout)
        done: list[Done] = []
        for obj in ready:
            if obj in by_conn:
                done.extend(self._drain(by_conn[obj]))  # type: ignore[index]
        dead = [by_sentinel[obj] for obj in ready if obj in by_sentinel]  # type: ignore[index]
        if dead:
            # Report the worker holding the earliest batch: the one the caller is waiting for.
            dead.sort(key=lambda w: w.busy[0] if w.busy else (float("inf"), 0))
            raise self._death(dead[0])
        return done

    def set_window(self, epoch: int) -> None:
        self._window.value = epoch

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def materialize(self, done: Done) -> Any:
        slot, skeleton, layout = done.value
        if slot is None:  # it came through the pipe: ``layout`` is the arrays themselves
            return unflatten(skeleton, layout)
        return unflatten(skeleton, self._slots.lease(slot, layout))

    def discard(self, done: Done) -> None:
        if done.status == "ok" and done.value[0] is not None:
            self._slots.release(done.value[0])

    def overdue(self, timeout: float, wanted: Key | None = None) -> tuple[Key, str] | None:
        """The batch a worker has computed for more than ``timeout`` s, if any, with the worker and its stack:
        ``wanted`` if it is late, else the longest running."""
        now = time.monotonic()
        late = [w for w in self._workers if w.ready and w.busy and now - w.since > timeout]
        if not late:
            return None
        worker = max(late, key=lambda w: (w.busy[0] == wanted, now - w.since))
        epoch, index = worker.busy[0]
        where = (
            f"{worker} has been computing batch {index} of epoch {epoch} for {now - worker.since:.1f} s. "
            f"Its Python stack (faulthandler, most recent call first):\n{self._stack(worker)}"
        )
        return worker.busy[0], where

    def notices(self) -> list[tuple[str, str]]:
        if self._short is None or self._short_reported:
            return []
        self._short_reported = True
        return [("shm", self._short)]

    def close(self, *, graceful: bool) -> None:
        """Stop every worker: ask, wait up to 2 s when ``graceful``, then terminate, then kill."""
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        if graceful:
            for worker in self._workers:
                worker.process.join(_JOIN_S)
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in self._workers:
            worker.process.join(_JOIN_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
            worker.sock.close()
            with contextlib.suppress(OSError):
                os.close(worker.stack_fd)
            worker.process.close()
        self._workers = []
        self._tasks.clear()

    # -- helpers -------------------------------------------------------------------

    def _drain(self, worker: _Worker) -> list[Done]:
        done = []
        try:
            while worker.conn.poll():
                result = self._receive(worker, worker.conn.recv())
                if result is not None:
                    done.append(result)
        except (EOFError, OSError):  # its pipe closed: the worker is gone
            raise self._death(worker) from None
        return done

    def _receive(self, worker: _Worker, message: tuple) -> Done | None:
        status, key, value = message
        if status == "ready":
            worker.ready = True
            worker.start_next()
            return None
        if status == "fatal":
            msg = f"{worker} could not load the dataset (start_method={self.start_method!r}):\n{value}"
            raise WorkerError(msg)
        worker.busy.remove(key)
        worker.start_next()
        _, slot = self._tasks.pop(key)
        if status == "ok":
            skeleton, layout = value
            return Done(key, "ok", (slot, skeleton, layout), str(worker))
        if slot is not None:
            self._slots.release(slot)
        if status == "piped":
            skeleton, arrays, why = value
            if why:
                self._note_short(why)
            return Done(key, "ok", (None, skeleton, arrays), str(worker))
        if status == "error":
            text, exc_bytes = value
            return Done(key, "error", (text, _loads(exc_bytes)), str(worker))
        return Done(key, "skipped", None, str(worker))

    def _note_short(self, why: str) -> None:
        if self._short is None:
            self._short = why

    def _stack(self, worker: _Worker) -> str:
        """Ask ``worker``'s faulthandler for its stack (SIGUSR1) and read what it wrote."""
        fd = worker.stack_fd
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)  # the worker's descriptor shares this file offset
            os.kill(worker.process.pid, _STACK_SIGNAL)  # type: ignore[arg-type]
        except OSError as e:
            return f"(no stack: {e})"
        deadline, size = time.monotonic() + _STACK_WAIT_S, -1
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = os.fstat(fd).st_size
            if now and now == size:
                break
            size = now
        text = os.pread(fd, max(size, 0), 0).decode(errors="replace")
        return text.rstrip() or f"(no stack written within {_STACK_WAIT_S:.0f} s)"

    def _death(self, worker: _Worker) -> WorkerError:
        worker.process.join(_JOIN_S)
        code = worker.process.exitcode
        if code is None:
            how = "closed its pipe"
        elif code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}" + _SIGNAL_HINTS.get(-code, "")
        else:
            how = f"exited with code {code}"
        if not worker.ready:
            msg = (
                f"{worker} {how} while starting, before it could load the dataset "
                f"(start_method={self.start_method!r}). Under spawn and forkserver the main module is imported "
                "again in every worker: guard the script's entry point with `if __name__ == '__main__':`, "
                "and check that the dataset's module imports cleanly."
            )
            return WorkerError(msg)
        if worker.busy:
            (epoch, index), queued = worker.busy[0], worker.busy[1:]
            doing = f"batch {index} of epoch {epoch}" + (f" ({_describe(queued)} queued behind it)" if queued else "")
        else:
            doing = "no batch (it was idle)"
        msg = (
            f"{worker} {how} while computing {doing}. The pool is closed; the next batch starts a new one. "
            "To debug, compute that batch in the main process (ds.get_batch(index, epoch)), or pass workers=0."
        )
        return WorkerError(msg)


_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGKILL: " (often the out-of-memory killer: lower max_queue_size or workers)",
    signal.SIGBUS: " (often a full /dev/shm: lower max_queue_size, or give the machine more shared memory)",
}


def _describe(keys: list[Key]) -> str:
    by_epoch: dict[int, list[int]] = {}
    for epoch, index in sorted(keys):
        by_epoch.setdefault(epoch, []).append(index)
    parts = [f"batch {ix[0]}" if len(ix) == 1 else f"batches {ix}" for ix in by_epoch.values()]
    return ", ".join(f"{part} of epoch {epoch}" for part, epoch in zip(parts, by_epoch, strict=True))


def _loads(data: bytes | None) -> BaseException | None:
    if data is None:
        return None
    try:
        return pickle.loads(data)
    except Exception:  # an exception that does not unpickle: the traceback text still says it all
        return None


# -- the worker side -------------------------------------------------------------------


def _one_torch_thread() -> None:
    """Where the parent ran PyTorch, give this worker one torch thread, as torch's own DataLoader workers do.

    torch's intra-op thread pool does not survive ``fork``: a forked worker's first parallel
    torch op waits forever for threads that were not copied (measured: ``keras.ops.tanh``
    hung in a worker forked after ``fit`` on the torch backend). Asked of ``sys.modules``
    only: nothing is imported.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _worker_main(conn: Connection, payload: Any, parent_pid: int, window: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent(parent_pid)
    tune_malloc()
    _one_torch_thread()
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        conn.recv()  # "stack", then the descriptor faulthandler writes to
        faulthandler.register(_STACK_SIGNAL, file=_receive_fd(sock), all_threads=True)
    except (EOFError, OSError):
        return  # the main process went away
    # Marks a kseq worker for user code that wants to know; the plan it unpickles holds no Keras class
    # (NOTE [ a Keras class only where Keras is fed ] in kseq/datasets/_pydataset.py).
    os.environ[WORKER_ENV] = "1"
    try:
        dataset = pickle.loads(payload) if isinstance(payload, bytes) else payload
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("fatal", None, traceback.format_exc()))
        return
    writer = SlotWriter()
    leave_globals_alone()  # _compute reseeds the global generators once per batch; batch_context need not again
    try:
        conn.send(("ready", None, None))
        _serve(conn, sock, dataset, writer, window)
    except (EOFError, OSError):
        return  # the main process went away
    finally:
        writer.close()


def _watch_parent(parent_pid: int) -> None:
    """End this worker when its parent or the main process is gone (NOTE [ worker processes ])."""
    start_ppid = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(_PARENT_CHECK_S)
            if os.getppid() != start_ppid or not pid_alive(parent_pid):
                os._exit(0)

    threading.Thread(target=watch, name="kseq-parent-watch", daemon=True).start()


def _receive_fd(sock: socket.socket) -> int:
    _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    if not fds:
        raise EOFError
    return fds[0]


def _serve(conn: Connection, sock: socket.socket, dataset: Any, writer: SlotWriter, window: Any) -> None:
    while True:
        request = conn.recv()
        if request is None:
            return
        epoch, index, slot, new_fd = request
        if new_fd:
            writer.add(slot, _receive_fd(sock))
        if not in_window(epoch, window.value):
            conn.send(("skipped", (epoch, index), None))
            continue
        _send(conn, _compute(dataset, writer, epoch, index, slot), (epoch, index))


def _compute(dataset: Any, writer: SlotWriter, epoch: int, index: int, slot: int | None) -> tuple:
    reseed_globals(getattr(dataset, "seed", 0), epoch, index)
    try:
        with batch_context(epoch, index):
            skeleton, arrays = flatten(dataset.get_batch(index, epoch))
    except Exception as e:
        return ("error", (epoch, index), (traceback.format_exc(), _dumps(e)))
    if slot is None:  # the main process could not create a slot
        return ("piped", (epoch, index), (skeleton, arrays, None))
    try:
        layout = writer.write(slot, arrays)
    except NoSpace as e:  # the slot cannot grow: this batch goes through the pipe (NOTE in loader.py)
        return ("piped", (epoch, index), (skeleton, arrays, str(e)))
    except Exception as e:
        return ("error", (epoch, index), (traceback.format_exc(), _dumps(e)))
    return ("ok", (epoch, index), (skeleton, layout))


def _send(conn: Connection, message: tuple, key: Key) -> None:
    try:
        conn.send(message)
    except (pickle.PicklingError, TypeError, AttributeError) as e:  # a leaf that is neither array nor picklable
        text = "".join(traceback.format_exception(e))
        conn.send(("error", key, (f"The batch cannot be sent to the main process:\n{text}", None)))


def _dumps(error: BaseException) -> bytes | None:
    try:
        data = pickle.dumps(error)
        pickle.loads(data)
    except Exception:
        return None
    return data
