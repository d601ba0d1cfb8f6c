"""``modelbus bench``: benchmarks that print ours next to a baseline measured in the same run.

    modelbus bench bus [--bus URL]... [--count N] [--requests N] [--size BYTES] [--qos 0|1|2]
    modelbus bench heartbeats [--services N]... [--seconds 30] [--bus URL]
    modelbus bench predict [--count N] [--in-flight 8]
    modelbus bench scale [--count N] [--in-flight 8] [--clients 2]
    modelbus bench remote [--count N]
    modelbus bench registry [--deploys N] [--predictions N] [--postgres-url URL]
    modelbus bench upload [--mib 256] [--window 16] [--artifacts LOCATION …]
    modelbus bench upload --image [--image-mib 300] [--docker-url URL]
    modelbus bench choose [--repeats 300] [--rounds 200]
    modelbus bench policies [--calls 2000] [--served/--no-served] [--requests 1000]

Each subcommand imports its measuring program (:mod:`proxy.bench`) only when it runs, so the
other commands start without the benchmarks' baselines.
"""

from __future__ import annotations

import click

__all__ = ["bench"]


@click.group()
def bench() -> None:
    """Benchmarks: ours next to the raw library, measured in the same run."""


@bench.command("bus")
@click.option(
    "--bus",
    "buses",
    multiple=True,
    metavar="URL",
    help="A loopback zmq:// or mqtt:// bus to measure (repeatable). Default: start a ZeroMQ "
    "forwarder and, if installed, a Mosquitto on free ports.",
)
@click.option(
    "--count",
    default=5000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="One-way messages per stream.",
)
@click.option(
    "--requests",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Round trips, one at a time.",
)
@click.option(
    "--size",
    default=100,
    show_default=True,
    type=click.IntRange(8, 1024 * 1024),
    help="Payload bytes.",
)
@click.option("--qos", default=1, show_default=True, type=click.IntRange(0, 2), help="MQTT QoS.")
@click.option(
    "--profile/--no-profile",
    default=True,
    show_default=True,
    help="Profile our path when it misses a target.",
)
def bus(
    buses: tuple[str, ...], count: int, requests: int, size: int, qos: int, profile: bool
) -> None:
    """Signed+verified BusClient vs raw paho / pyzmq: round trips and messages/s."""
    from proxy.bench.bus import BenchSettings, check_bus_url, run_bench

    for url in buses:
        try:
            check_bus_url(url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--bus") from None
    settings = BenchSettings(
        buses=buses, count=count, requests=requests, size=size, qos=qos, profile=profile
    )
    click.echo(run_bench(settings, progress=lambda line: click.echo(line, err=True)))


@bench.command("heartbeats")
@click.option(
    "--services",
    "counts",
    multiple=True,
    type=click.IntRange(1, 100_000),
    help="Simulated services (repeatable) [default: 100, 1000, 10000].",
)
@click.option(
    "--seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(5, 3600),
    help="How long each N runs (the first third, at most one period, warms up).",
)
@click.option("--bus", "bus_url", default=None, metavar="URL", help="Default: a ZeroMQ forwarder.")
def heartbeats(counts: tuple[int, ...], seconds: float, bus_url: str | None) -> None:
    """N services beating every 10 s into one dashboard monitor: its CPU next to the bare
    library receiving the same frames, its memory and delay."""
    from proxy.bench.heartbeats import run_bench

    chosen = counts or (100, 1000, 10_000)
    click.echo(run_bench(chosen, seconds, bus_url, lambda line: click.echo(line, err=True)))


@bench.command("predict")
@click.option(
    "--count",
    default=2000,
    show_default=True,
    type=click.IntRange(16, 1_000_000),
    help="Predictions per measurement.",
)
@click.option(
    "--in-flight",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Outstanding requests for the throughput measurement.",
)
def predict(count: int, in_flight: int) -> None:
    """Prediction round trips over the bus vs aiohttp and MLServer (MODELBUS_MLSERVER)."""
    from proxy.bench.predict import print_predict_table, run_predict_bench

    rows, notes = run_predict_bench(count, in_flight)
    print_predict_table(rows, notes, in_flight)


@bench.command("remote")
@click.option(
    "--count",
    default=1000,
    show_default=True,
    type=click.IntRange(16, 1_000_000),
    help="Predictions per measurement.",
)
def remote(count: int) -> None:
    """What the remote V2 backend adds to a direct call to MLServer (MODELBUS_MLSERVER)."""
    from proxy.bench.remote import print_remote_table, run_remote_bench

    print_remote_table(run_remote_bench(count))


@bench.command("registry")
@click.option(
    "--deploys",
    default=200,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Deploys (and registry writes) timed per registry.",
)
@click.option(
    "--predictions",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Predictions timed per registry, one at a time.",
)
@click.option(
    "--postgres-url",
    metavar="URL",
    help="A postgresql:// database to use [default: start a PostgreSQL server of its own from "
    "the installed binaries].",
)
def registry(deploys: int, predictions: int, postgres_url: str | None) -> None:
    """Deploy and prediction times with the registry on PostgreSQL next to SQLite, the same
    service otherwise, in one run (target: deploy p50 ratio < 1.10, prediction about 1)."""
    from proxy.bench.registry import print_registry_table, run_registry_bench
    from proxy.registry.postgres import is_postgres_url

    if postgres_url is not None and not is_postgres_url(postgres_url):
        raise click.BadParameter("not a postgresql:// URL", param_hint="--postgres-url")
    print_registry_table(run_registry_bench(deploys, predictions, postgres_url))


@bench.command("upload")
@click.option(
    "--mib",
    default=256,
    show_default=True,
    type=click.IntRange(1, 65536),
    help="Size of the artifact to upload.",
)
@click.option(
    "--window", default=16, show_default=True, type=click.IntRange(1, 256), help="Chunks in flight."
)
@click.option(
    "--image",
    is_flag=True,
    help="Instead: save, upload and load a container image vs docker save | docker load.",
)
@click.option(
    "--image-mib",
    default=300,
    show_default=True,
    type=click.IntRange(1, 65536),
    help="With --image: random bytes in the test image (1024 for the 1 GB memory check).",
)
@click.option(
    "--docker-url",
    envvar="DOCKER_HOST",
    metavar="URL",
    help="With --image: the engine (unix:// or loopback tcp://) [default: $DOCKER_HOST, else "
    "start a podman system service].",
)
@click.option(
    "--artifacts",
    "stores",
    multiple=True,
    metavar="LOCATION",
    help="Also upload to a service with this artifact store (file:///path or s3://bucket/prefix, "
    "endpoint and keys from AWS_*): shared uploads, chunks in the store. Repeatable.",
)
def upload(
    mib: int,
    window: int,
    image: bool,
    image_mib: int,
    docker_url: str | None,
    stores: tuple[str, ...],
) -> None:
    """Chunked upload MB/s over ZeroMQ and MQTT vs raw loopback TCP; with --image, an image
    deploy (save, upload, load) vs docker save | docker load on the same engine."""
    if image:
        from proxy.bench.image import check_docker_url, print_image_table, run_image_bench

        try:
            url = check_docker_url(docker_url) if docker_url else None
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--docker-url") from None
        image_rows, image_notes, size = run_image_bench(image_mib, window, url)
        print_image_table(image_rows, image_notes, image_mib, size)
        return
    from proxy.bench.upload import print_upload_table, run_upload_bench

    rows, notes = run_upload_bench(mib, window, stores)
    print_upload_table(rows, notes, mib)


@bench.command("choose")
@click.option(
    "--repeats",
    default=300,
    show_default=True,
    type=click.IntRange(3, 100_000),
    help="Decisions timed per index size (the median is reported).",
)
@click.option(
    "--rounds",
    default=200,
    show_default=True,
    type=click.IntRange(0, 100_000),
    help="End-to-end rounds against a real service (0: decision time only).",
)
def choose(repeats: int, rounds: int) -> None:
    """The chooser's decision time with 10, 1,000 and 10,000 registered models, and its overhead
    end to end next to querying the same models directly over the bus."""
    from proxy.bench.choose import run_choose_bench

    for line in run_choose_bench(repeats=repeats, end_to_end_rounds=rounds):
        click.echo(line)


@bench.command("policies")
@click.option(
    "--calls",
    default=2000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Decisions per timed batch (the median of 7 batches is reported).",
)
@click.option(
    "--served/--no-served",
    default=True,
    show_default=True,
    help="Also measure the served p50 with and without a shadow release (starts a service).",
)
@click.option("--requests", default=1000, show_default=True, type=click.IntRange(10, 1_000_000))
def policies(calls: int, served: bool, requests: int) -> None:
    """The per-request decision cost of each policy, and a shadow's cost to the served p50."""
    from proxy.bench.policies import run_policies_bench

    for line in run_policies_bench(calls=calls):
        click.echo(line)
    if served:
        from proxy.bench.shadow import run_served_bench

        for line in run_served_bench(count=requests):
            click.echo(line)


@bench.command("schedule")
@click.option("--schedules", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 100))
@click.option(
    "--delay-schedules",
    default=100,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Schedules of the real-time delay test (2 s grid, 0.5 s delay).",
)
def schedule(schedules: int, rounds: int, delay_schedules: int) -> None:
    """Windows/s through the scheduler next to direct model calls; due-to-output delay."""
    from bus import runner
    from proxy.bench.schedule import print_schedule_table, run_schedule_bench

    result = runner.run(run_schedule_bench, schedules, rounds, delay_schedules)
    print_schedule_table(result)


@bench.command("scale")
@click.option(
    "--count",
    default=3000,
    show_default=True,
    type=click.IntRange(100, 1_000_000),
    help="Predictions per row, shared by the clients.",
)
@click.option(
    "--in-flight",
    default=8,
    show_default=True,
    type=click.IntRange(1, 16),
    help="Predictions in flight at once per client (at most a sender's limit, 16).",
)
@click.option(
    "--clients",
    default=2,
    show_default=True,
    type=click.IntRange(1, 16),
    help="Client processes, each a requester of its own.",
)
def scale(count: int, in_flight: int, clients: int) -> None:
    """Predictions/s with 1, 2, 3 instances of one service on one Mosquitto, next to one plain
    proxy; CPU of the broker, the proxies and the clients: what saturates."""
    from proxy.bench.scale import print_scale_table, run_scale_bench

    rows, notes = run_scale_bench(count, in_flight, clients)
    print_scale_table(rows, notes, in_flight, clients)
