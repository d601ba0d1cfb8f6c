"""Run a modelbus proxy as a process of its own, for tests that kill it and start it again.

    python -m tests.proxy.proxy_process --bus-url zmq://127.0.0.1:P --data-dir DIR
        [--registry postgresql://… --artifacts file:///shared --instance NAME]

The bus must outlive the process (a ZeroMQ forwarder or an MQTT broker the test runs), so the
proxy's embedded bus is off. Once it serves, it prints ``ready <service uri>`` on stdout and
nothing else there; its log goes to stderr. SIGTERM or SIGINT stop it cleanly, as ``modelbus
serve`` does (requests in flight drained), workers included; SIGKILL is the crash a test wants.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import anyio

from proxy.service.settings import ProxySettings
from proxy.service.startup import run_proxy


def parse_settings(argv: list[str]) -> ProxySettings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bus-url", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--heartbeat-interval-s", type=float, default=1.0)
    parser.add_argument("--max-upload-bytes", type=int, default=None)
    parser.add_argument("--registry", default=None)  # one of several instances: these three
    parser.add_argument("--artifacts", default=None)
    parser.add_argument("--instance", default=None)
    args = parser.parse_args(argv)
    limits = {} if args.max_upload_bytes is None else {"max_upload_bytes": args.max_upload_bytes}
    scale_out = {
        key: getattr(args, key)
        for key in ("registry", "artifacts", "instance")
        if getattr(args, key) is not None
    }
    return ProxySettings(
        bus_url=args.bus_url,
        embed_bus=False,
        data_dir=args.data_dir,
        heartbeat_interval_s=args.heartbeat_interval_s,
        **limits,
        **scale_out,
    )


async def serve(settings: ProxySettings) -> None:
    """Serve until SIGTERM or SIGINT, then stop as ``modelbus serve`` does: drain the requests
    in flight (an instance withdraws from its share group first), then exit."""
    stop = anyio.Event()
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as task_group:
            info = await task_group.start(run_proxy, settings, stop)
            print(f"ready {info.service_uri}", flush=True)
            async for signum in signals:
                logging.getLogger(__name__).info("signal %d: stopping", signum)
                stop.set()
                break


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    anyio.run(serve, parse_settings(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
