"""The one-shot fit worker: loads a fittable model, fits it on training data, writes the result.

Run as ``python -m proxy.fitting.worker --artifact PATH`` with the job's input on stdin and its
output to stdout (files the service opened: nothing is piped), in the same bubblewrap sandbox as
replica workers (:mod:`proxy.backend.sandbox`), with the job's own time and memory limits. The
service never unpickles model code; only this process does.

Input, one msgpack map (:mod:`bus.codec`)::

    {"data": {stream URI: [[ts_ns, value], ...]} | None, "upload": bytes | None,
     "context": {model, parent_version, new_version, since_ns, until_ns, streams}}

``upload`` is an uploaded training file, which must be a JSON document (it is then ``data``).
The archive at ``--artifact`` must hold a :class:`bus.fittable.Fittable` (or any object with
``fit`` and ``with_state`` alike).

Output, one msgpack map: ``{"archive": bytes}`` — a closure archive (:mod:`bus.artifact`) of
``model.with_state(fit(data, context))``, with the parent archive's package list — or
``{"error": {"code", "message"}}`` with code ``not_fittable``, ``bad_data`` or ``fit_error``.
Exit status 0 on success, 1 on a recorded error. Lines ``modelbus-progress: <text>`` on stderr
(the job's log) are its progress, written by ``context["progress"](text)``.

**In an image** it is the base images' fit program (label ``modelbus.fit``, bus/PROTOCOL.md
§18.9), run in a one-shot container (:mod:`proxy.fitting.images`) as ``python3 -m
proxy.fitting.worker --input FILE --output-dir DIR (--artifact PATH | --function PATH) [--state
PATH]``: the model is the image's (a closure archive, or a cloudpickled function as Clipper
saves it), or the parent version's state if it was fitted; the same input is read from
``--input``, and the result goes to ``DIR/state`` — the fitted model's closure archive, the
state the replicas of the new version get as ``--state`` (:mod:`proxy.backend.worker`) — or the
error to ``DIR/error.json`` (``{"code", "message"}``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bus.artifact import build_closure_archive, check_compatible, load_closure, read_manifest
from bus.codec import pack, unpack
from bus.errors import BusError
from proxy.backend.worker import load_function
from proxy.fitting.protocol import MAX_INPUT_BYTES, PROGRESS_PREFIX

__all__ = ["main"]
_MAX_ERROR_CHARS = 2_000


class _Failed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message[:_MAX_ERROR_CHARS]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.fitting.worker")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--artifact", help="the model: a closure archive")
    model.add_argument("--function", help="the model: a cloudpickled function (in an image)")
    parser.add_argument("--state", help="the parent's fitted state (in an image)")
    parser.add_argument("--input", help="the job's input file (in an image) [stdin]")
    parser.add_argument("--output-dir", help="where the result goes (in an image) [stdout]")
    args = parser.parse_args(argv)
    if args.output_dir is not None:
        return _main_in_image(args)
    try:
        archive = fit(Path(args.artifact), _read_stdin())
    except _Failed as failed:
        print(f"fit failed: {failed.code}: {failed.message}", file=sys.stderr, flush=True)
        sys.stdout.buffer.write(pack({"error": {"code": failed.code, "message": failed.message}}))
        return 1
    sys.stdout.buffer.write(pack({"archive": archive}))
    sys.stdout.buffer.flush()
    return 0


def _main_in_image(args: argparse.Namespace) -> int:
    output = Path(args.output_dir)
    try:
        job = _read_file(Path(args.input or "/dev/stdin"))
        if args.state is not None or args.function is None:
            archive = fit(Path(args.state or args.artifact), job)
        else:
            archive = fit(Path(args.function), job, function=True)
    except _Failed as failed:
        print(f"fit failed: {failed.code}: {failed.message}", file=sys.stderr, flush=True)
        error = {"code": failed.code, "message": failed.message}
        (output / "error.json").write_text(json.dumps(error))
        return 1
    (output / "state").write_bytes(archive)
    return 0


def fit(source: Path, job: bytes, *, function: bool = False) -> bytes:
    """The new version's archive bytes; raises _Failed with a readable reason. ``source`` is a
    closure archive, or with ``function`` a cloudpickled function file."""
    packages: Mapping[str, str] | None = None
    try:
        if function:
            model: Any = load_function(source)
        else:
            manifest = read_manifest(source)
            check_compatible(manifest)
            model, packages = load_closure(source), manifest.packages
    except BusError as error:
        raise _Failed("not_fittable", f"the model cannot be loaded: {error.message}") from error
    if not (callable(getattr(model, "fit", None)) and callable(getattr(model, "with_state", None))):
        raise _Failed(
            "not_fittable",
            f"the model is a {type(model).__name__}, not a bus.fittable.Fittable: it has no fit",
        )
    data, context = _read_job(job)
    context["progress"] = _progress
    _progress("fitting")
    try:
        state = model.fit(data, context)
    except BaseException as exc:  # even sys.exit() in a fit is a recorded failure
        raise _Failed("fit_error", f"fit raised {type(exc).__name__}: {exc}") from exc
    _progress("packing the fitted model")
    try:
        return build_closure_archive(model.with_state(state), packages=packages)
    except Exception as exc:
        raise _Failed("fit_error", f"the fitted state cannot be pickled: {exc}") from exc


def _read_stdin() -> bytes:
    """The job file on stdin, refused past MAX_INPUT_BYTES before it is read."""
    try:
        size = os.fstat(sys.stdin.fileno()).st_size
    except OSError:
        size = 0
    if size > MAX_INPUT_BYTES:
        raise _Failed("bad_data", f"the training data is over {MAX_INPUT_BYTES} bytes")
    return sys.stdin.buffer.read()


def _read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise _Failed("bad_data", f"the job's input cannot be read: {exc}") from exc
    if len(data) > MAX_INPUT_BYTES:
        raise _Failed("bad_data", f"the training data is over {MAX_INPUT_BYTES} bytes")
    return data


def _read_job(job: bytes) -> tuple[Any, dict[str, Any]]:
    if len(job) > MAX_INPUT_BYTES:
        raise _Failed("bad_data", f"the training data is over {MAX_INPUT_BYTES} bytes")
    try:
        body = unpack(job, max_bytes=MAX_INPUT_BYTES)
    except BusError as error:
        raise _Failed("bad_data", f"the job's input cannot be read: {error.message}") from error
    if not isinstance(body, dict) or not isinstance(body.get("context"), dict):
        raise _Failed("bad_data", "the job's input is not a map with a context")
    upload = body.get("upload")
    if isinstance(upload, bytes):
        try:
            return json.loads(upload), body["context"]
        except ValueError as exc:
            raise _Failed("bad_data", f"the uploaded training file is not JSON: {exc}") from exc
    return body.get("data"), body["context"]


def _progress(text: object) -> None:
    line = str(text).replace("\n", " ")[:200]
    print(f"{PROGRESS_PREFIX}{line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
