"""The replica worker: runs one model function and serves batches to the backend over ZeroMQ.

Run as ``python -m proxy.backend.worker --backend tcp://127.0.0.1:PORT --name M --version V
--replica N
(--artifact PATH | --function PATH) [--batch-size B] [--heartbeat-s S] [--backend-timeout-s T]
[--state PATH]``, with the start token in the ``MODELBUS_REPLICA_TOKEN`` environment variable.
``--artifact`` is a closure archive (:mod:`bus.artifact`); ``--function`` a plain cloudpickled
function file, as Clipper's ``save_python_function`` writes ``/model/func.pkl``; ``--state`` a
fitted image version's state, which for this worker is the fitted model's closure archive (as
``python -m proxy.fitting.worker`` writes it in an image), served instead of the model. The
process runtime starts it; the docker runtime runs it inside a model image
(:mod:`proxy.backend.images`).

Replica protocol, version 1
===========================

Like Clipper's model RPC: the backend binds a ZeroMQ ROUTER socket; each replica's worker
connects a DEALER socket to it. Every message is a single frame holding a msgpack map (see
``bus/codec.py``: no extension types) with a ``type`` key; the backend addresses a worker by the
routing id ZeroMQ gives its connection. Unknown keys are an error (the message is dropped).

Worker → backend:

``hello {type, protocol: 1, name, version, replica, pid, token}``
    First message once the model is loaded. ``token`` is the secret the backend gave this start of
    the replica (``MODELBUS_REPLICA_TOKEN``); a hello with an unknown token, or a wrong
    name/version/replica, is answered with ``shutdown``. From then on the replica is *ready*.
``fatal {type, name, version, replica, pid, token, error: {code, message, details}}``
    The model cannot be loaded (wrong Python or package versions, an import failing while
    unpickling). The worker then exits with status 2; the backend does not restart it.
``result {type, batch_id, outputs: [...]}`` or ``result {type, batch_id, error: {...}}``
    The answer to one batch: ``outputs`` has exactly one output per input, in order. ``error``
    codes: ``model_error`` (the function raised; the message names the exception) and
    ``bad_output`` (not a list, the wrong length, or values msgpack cannot carry).
``heartbeat {type}``
    Every ``--heartbeat-s`` seconds, also while a batch runs (the model runs on its own thread).
``bye {type}``
    After ``shutdown``, once the batch in hand is answered; the worker then exits with status 0.

Backend → worker:

``batch {type, batch_id, inputs: [...]}``
    Inputs to run. The backend sends a worker one batch at a time and waits for its result. The
    model function is called with a list of at most ``--batch-size`` inputs (larger batches are
    split) and must return a list of as many outputs, each a msgpack value (None, bool, number,
    str, bytes, list, map); values with a ``tolist()`` method (numpy) are converted with it.
    An input of the shape ``{"modelbus.can_predict": {...}}`` is a ``can_predict`` question,
    answered by the worker instead of the model (:mod:`proxy.backend.verdicts`).
``heartbeat {type}``
    Every heartbeat interval. A worker that hears nothing for ``--backend-timeout-s`` (default
    10 s; 0 turns it off) decides the backend is gone and exits with status 3, as it does when its
    parent process changes (the service died).
``shutdown {type}``
    Finish the batch in hand, say ``bye``, exit 0. The backend kills a worker that takes too long.

A batch whose worker dies before answering is retried once, on another replica or the restarted
one; the backend also restarts a ready worker it has not heard from for several heartbeats.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bus.artifact import MAX_CLOSURE_BYTES, check_compatible, load_closure, read_manifest
from bus.errors import BusError, DecodeError, InvalidRequest, TransportError
from proxy.backend.channel import (
    EXIT_BACKEND_LOST,
    EXIT_LOAD_FAILED,
    PROTOCOL,
    TOKEN_ENV,
    Batch,
    Bye,
    DealerChannel,
    Fatal,
    Heartbeat,
    Hello,
    Result,
    Shutdown,
    WireError,
    encode,
)
from proxy.backend.verdicts import answer_questions

__all__ = ["EXIT_BACKEND_LOST", "EXIT_LOAD_FAILED", "load_function", "main", "run_batch"]

logger = logging.getLogger("proxy.backend.worker")  # also when run as __main__

_MAX_ERROR_CHARS = 2_000
_FATAL_LINGER_S = 2.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s [replica {args.replica} of {args.name}:{args.version}"
        f" pid {os.getpid()}] %(name)s: %(message)s",
    )
    try:
        channel = DealerChannel(args.backend)
    except TransportError as exc:
        logger.error("%s", exc)
        return EXIT_BACKEND_LOST
    try:
        return _run(channel, args, os.environ.get(TOKEN_ENV, ""))
    except KeyboardInterrupt:
        return 130
    finally:
        channel.close(linger_s=_FATAL_LINGER_S)


def run_batch(func: Callable[[list[Any]], Any], batch: Batch, batch_size: int) -> Result:
    """Call the model on a batch (in chunks of ``batch_size``); an error result if it fails."""
    return _run_batch(func, batch, batch_size)[0]


def _run_batch(
    func: Callable[[list[Any]], Any], batch: Batch, batch_size: int
) -> tuple[Result, bytes]:
    """The result and its encoding (encoding is what proves the outputs can be sent)."""
    outputs: list[Any] = []
    try:
        for start in range(0, len(batch.inputs), batch_size):
            chunk = batch.inputs[start : start + batch_size]
            outputs.extend(answer_questions(chunk, lambda xs: _as_outputs(func(xs), len(xs)), func))
        result = Result(batch_id=batch.batch_id, outputs=outputs)
        return result, encode(result)
    except _BadOutput as exc:
        failed = _error_result(batch, "bad_output", str(exc))
    except DecodeError:
        failed = _error_result(batch, "bad_output", _unencodable(outputs))
    except BaseException as exc:  # even sys.exit() in a model is reported, not raised
        logger.exception("the model failed on batch %d", batch.batch_id)
        failed = _error_result(batch, "model_error", f"{type(exc).__name__}: {exc}", type(exc))
    return failed, encode(failed)


def _run(channel: DealerChannel, args: argparse.Namespace, token: str) -> int:
    identity: dict[str, Any] = {
        "name": args.name,
        "version": args.version,
        "replica": args.replica,
        "pid": os.getpid(),
        "token": token,
    }
    try:
        if args.function is not None and args.state is None:
            func = load_function(Path(args.function))
        else:
            artifact = Path(args.state or args.artifact)
            check_compatible(read_manifest(artifact))
            func = load_closure(artifact)
    except BusError as exc:
        logger.error("cannot load the model: %s", exc.message)
        error = WireError(code=exc.code, message=exc.message[:_MAX_ERROR_CHARS])
        channel.send(Fatal(**identity, error=error))
        return EXIT_LOAD_FAILED
    channel.send(Hello(protocol=PROTOCOL, **identity))
    logger.info("model loaded; serving %s", args.backend)
    return _Server(channel, func, args).serve()


def load_function(path: Path) -> Callable[..., Any]:
    """Unpickle a plain cloudpickled function file (no manifest, no digest). Runs code."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CLOSURE_BYTES + 1)
    except OSError as exc:
        raise InvalidRequest(f"the model function {path} cannot be read: {exc}") from exc
    if len(data) > MAX_CLOSURE_BYTES:
        raise InvalidRequest(f"{path} is over the {MAX_CLOSURE_BYTES}-byte limit")
    try:
        func = pickle.loads(data)  # cloudpickle's output; its helpers are imported by name
    except Exception as exc:
        raise InvalidRequest(
            f"the model function in {path} could not be loaded here: {type(exc).__name__}: {exc}",
            exception=type(exc).__name__,
        ) from exc
    if not callable(func):
        raise InvalidRequest(f"{path} holds a {type(func).__name__}, not a callable")
    result: Callable[..., Any] = func
    return result


class _Server:
    """The socket loop on the main thread; the model runs on a thread of its own."""

    def __init__(self, channel: DealerChannel, func: Callable[..., Any], args: Any) -> None:
        self._channel = channel
        self._func = func
        self._batch_size: int = args.batch_size
        self._heartbeat_s: float = args.heartbeat_s
        self._backend_timeout_s: float = args.backend_timeout_s
        self._parent = os.getppid()
        self._batches: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._replies: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()
        self._busy = 0

    def serve(self) -> int:
        thread = threading.Thread(target=self._model_loop, name="model", daemon=True)
        thread.start()
        self._channel.watch(self._wake_read)
        try:
            return self._loop()
        finally:
            self._batches.put(None)
            # Only the read end: a model still running then gets EPIPE, never a reused fd.
            os.close(self._wake_read)

    def _loop(self) -> int:
        stopping = False
        last_heard = time.monotonic()
        next_heartbeat = last_heard
        while True:
            now = time.monotonic()
            if now >= next_heartbeat:
                self._channel.send(Heartbeat())
                next_heartbeat = now + self._heartbeat_s
            messages, woken = self._channel.poll(next_heartbeat - now)
            if woken:
                os.read(self._wake_read, 4096)
            self._send_replies()
            for message in messages:
                last_heard = time.monotonic()
                if isinstance(message, Batch):
                    self._busy += 1
                    self._batches.put(message)
                elif isinstance(message, Shutdown):
                    logger.info("shutting down at the backend's request")
                    stopping = True
            if stopping and self._busy == 0:
                self._channel.send(Bye())
                return 0
            if self._is_orphaned(time.monotonic() - last_heard):
                return EXIT_BACKEND_LOST

    def _send_replies(self) -> None:
        while True:
            try:
                reply = self._replies.get_nowait()
            except queue.Empty:
                return
            self._channel.send_encoded(reply)
            self._busy -= 1

    def _is_orphaned(self, silent_s: float) -> bool:
        if self._backend_timeout_s > 0 and silent_s > self._backend_timeout_s:
            logger.error("no word from the backend for %.1f s; exiting", silent_s)
            return True
        if self._parent > 1 and os.getppid() != self._parent:
            logger.error("the service that started this worker is gone; exiting")
            return True
        return False

    def _model_loop(self) -> None:
        while (batch := self._batches.get()) is not None:
            self._replies.put(_run_batch(self._func, batch, self._batch_size)[1])
            try:
                os.write(self._wake_write, b"!")
            except OSError:  # the main loop is gone
                return


class _BadOutput(Exception):
    pass


def _as_outputs(value: Any, expected: int) -> list[Any]:
    if hasattr(value, "tolist") and callable(value.tolist):
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise _BadOutput(
            f"the model returned a {type(value).__name__}, not a list; a model function takes a "
            "list of inputs and returns a list of outputs"
        )
    if len(value) != expected:
        raise _BadOutput(
            f"the model returned {len(value)} outputs for {expected} inputs; it must return "
            "exactly one output per input, in order"
        )
    return [item.tolist() if callable(getattr(item, "tolist", None)) else item for item in value]


def _unencodable(outputs: list[Any]) -> str:
    for index, output in enumerate(outputs):
        try:
            encode(Result(batch_id=0, outputs=[output]))
        except DecodeError:
            return (
                f"output {index} is a {type(output).__name__}, which cannot be sent; return "
                "None, bools, numbers, str, bytes, lists or dicts"
            )
    return "the outputs cannot be sent as msgpack"


def _error_result(
    batch: Batch, code: str, message: str, exception: type[BaseException] | None = None
) -> Result:
    details = {"exception": exception.__name__} if exception is not None else {}
    error = WireError(code=code, message=message[:_MAX_ERROR_CHARS], details=details)
    return Result(batch_id=batch.batch_id, error=error)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.backend.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--backend", required=True, help="the backend's ROUTER, tcp://host:port")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--replica", required=True, type=int)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--artifact", help="the closure archive to serve")
    model.add_argument("--function", help="a cloudpickled function file to serve")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument("--heartbeat-s", type=float, default=1.0)
    parser.add_argument("--backend-timeout-s", type=float, default=10.0)
    parser.add_argument("--state", help="a fitted state: the fitted model's closure archive")
    return parser.parse_args(argv)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
