"""The modelbus service and its command line, in rooms (see README, "How the code is laid out").

service/    the proxy on the bus: start-up, slots, the operations, version selection
registry/   the store of applications, models, versions, replicas and uploads (SQLite)
uploads/    chunked-upload sessions: spool files, running digests, resumption
backend/    the embedded model backend: batching, replica channel, supervision, runtimes
cli/        the ``modelbus`` command (imports everything; nothing imports it)
bench/      the benchmark programs and the demo (drive the client library and raw libraries)
"""
