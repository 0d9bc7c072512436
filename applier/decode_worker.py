"""Decoding drain windows off the sink's core: a worker process turns raw events into a window's net effect.

A drain's main process reads the funnel, forms windows and writes them; decoding the
Avro events and collapsing them (``applier.window``) is most of a drain's CPU.  The
worker does both for one window while the main process writes the previous one.

What crosses the pipe is cheap: the window's raw event bytes one way, and the net
effect as plain tuples the other (measured on promote_drain's traffic, 50,000 rows:
decode and collapse 1.5-2 s, sending the bytes and loading the result in the main
process 0.02-0.3 s).  The worker holds no state between windows and writes nothing:
killing either process loses at most the windows not yet written, whose position was
never recorded.
"""
from __future__ import annotations

import gc
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO, Sequence

from applier.transaction import Transaction
from applier.window import net_effect
from funnel.codec import EventCodec
from funnel.errors import CodecError
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges
from funnel.reader import TransactionSummary

_OPS = {op.value: op for op in Op}
_KINDS = {kind.value: kind for kind in Kind}


class WindowWorker:
    """One worker process; ``submit`` windows in order, then take their ``result`` in the same order.

    A plain ``python -m applier.decode_worker`` child on two pipes, not multiprocessing:
    its spawn would import the parent's ``__main__`` again (the CLI, which runs on import),
    and fork would copy a process that runs librdkafka threads.
    """

    def __init__(self, topic: str) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen([sys.executable, "-m", "applier.decode_worker", topic], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        # Answers are read as they come: a worker blocked writing one would stop reading the
        # next window while this process blocks sending it (pipes hold 64 KiB).
        self._answers: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read_answers, daemon=True, name="timefunnel-decode-answers").start()
        # Windows are sent by a thread too: writing megabytes into the pipe blocks until the
        # worker, busy with the window before, reads them; the loop must go on meanwhile.
        self._requests: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._send_requests, daemon=True, name="timefunnel-decode-requests").start()
        self.pending = 0

    def _send_requests(self) -> None:
        while (data := self._requests.get()) is not None:
            try:
                _write(self._process.stdin, data)
            except (OSError, ValueError):  # the worker is gone: result() says so
                return

    def _read_answers(self) -> None:
        while True:
            try:
                data = _receive_bytes(self._process.stdout)
            except (OSError, ValueError):  # closed by close()
                data = None
            self._answers.put(data)
            if data is None:
                return

    def submit(self, window: Sequence[TransactionSummary]) -> None:
        """Send the window's transactions (their raw events) to be decoded and collapsed."""
        request = [(h.txid, h.commit_ts, h.kind.value, h.first_offset, h.last_offset, h.payloads) for h in window]
        self._requests.put(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
        self.pending += 1

    def result(self) -> list[Transaction]:
        """The oldest submitted window's net effect (``net_effect``'s result). Raises CodecError."""
        self.pending -= 1
        data = self._answers.get()
        if data is None:
            self._answers.put(None)  # the worker is gone for every later call too
            raise CodecError("the decoding worker process died", hint="see the log above; rerun the command")
        answer = pickle.loads(data)
        if answer[0] == "error":
            raise CodecError(answer[1], hint=answer[2])
        return [_unpack(packed) for packed in answer[1]]

    def close(self) -> None:
        self._requests.put(None)
        for pipe in (self._process.stdin, self._process.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)


def _write(pipe: BinaryIO, data: bytes) -> None:
    pipe.write(len(data).to_bytes(8, "little"))
    pipe.write(data)
    pipe.flush()


def _send(pipe: BinaryIO, message: object) -> None:
    _write(pipe, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _receive_bytes(pipe: BinaryIO) -> bytes | None:
    """The next message's pickle, or None at the end of the pipe."""
    size = pipe.read(8)
    if len(size) < 8:
        return None
    data = pipe.read(int.from_bytes(size, "little"))
    return data if len(data) == int.from_bytes(size, "little") else None


def _receive(pipe: BinaryIO) -> object | None:
    data = _receive_bytes(pipe)
    return None if data is None else pickle.loads(data)


def serve(topic: str, requests: BinaryIO, answers: BinaryIO) -> None:
    """The worker's loop: a window's raw events in, its net effect out, until the input ends."""
    gc.disable()  # a window's objects have no cycles (see applier.window.gc_paused)
    codec = EventCodec()
    while True:
        request = _receive(requests)
        if request is None:
            return
        try:
            net = net_effect(_decode(codec, topic, held) for held in request)
            answer = ("ok", [_pack(transaction) for transaction in net])
        except CodecError as exc:
            answer = ("error", str(exc), exc.hint)
        _send(answers, answer)


def _decode(codec: EventCodec, topic: str, held: tuple) -> Transaction:
    txid, commit_ts, kind, first, last, payloads = held
    batches = []
    for index, payload in enumerate(payloads):
        try:
            batches.append(codec.decode(payload))
        except CodecError as exc:
            raise CodecError(f"{topic}[0] transaction {txid!r} from offset {first} (chunk {index}): {exc}",
                             hint=exc.hint) from exc
    return Transaction(txid, commit_ts, _KINDS[kind], first, last, batches)


def _pack(transaction: Transaction) -> tuple:
    groups = [(g.table, g.op.value, g.columns, g.key, [tuple(row) for row in g.rows], g.ddl)
              for g in transaction.changes]
    return (transaction.txid, transaction.commit_ts, transaction.kind.value, transaction.first_offset,
            transaction.last_offset, groups)


def _unpack(packed: tuple) -> Transaction:
    txid, commit_ts, kind, first, last, groups = packed
    changes = [TableChanges(table, _OPS[op], columns, key, [Row(*row) for row in rows], ddl)
               for table, op, columns, key, rows, ddl in groups]
    batch = ChangeBatch("window", txid, commit_ts, 0, 0, sum(len(g.rows) for g in changes), _KINDS[kind], changes)
    return Transaction(txid, commit_ts, _KINDS[kind], first, last, [batch])


class Pipeline:
    """The drain's windows between forming and writing, in order, submitted to the worker (``start``).

    Each entry keeps what the writer needs: the window's held transactions (for the
    stats) and the position after it (recorded with its net effect, never before).
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.worker: WindowWorker | None = None
        self.windows: deque[tuple[list[TransactionSummary], object]] = deque()
        self.rows = 0  # rows held in windows not yet written (flow control counts them)

    def __len__(self) -> int:
        return len(self.windows)

    def start(self) -> None:
        if self.worker is None:
            self.worker = WindowWorker(self.topic)

    def submit(self, due: list[TransactionSummary], position: object, excluded: set[str]) -> None:
        self.start()
        self.worker.submit([held for held in due if held.txid not in excluded])
        self.windows.append((due, position))
        self.rows += sum(held.rows for held in due)

    def oldest(self) -> tuple[list[TransactionSummary], object, list[Transaction]]:
        """The oldest window: (its transactions, the position after it, its net effect). Raises CodecError."""
        due, position = self.windows.popleft()
        self.rows -= sum(held.rows for held in due)
        return due, position, self.worker.result()

    def close(self) -> None:
        self.windows.clear()
        self.rows = 0
        if self.worker is not None:
            self.worker.close()
            self.worker = None


if __name__ == "__main__":
    try:
        serve(sys.argv[1], sys.stdin.buffer, sys.stdout.buffer)
    except (BrokenPipeError, KeyboardInterrupt):  # the drain ended or was killed: nothing to write
        pass
