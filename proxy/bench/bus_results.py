"""What ``modelbus bench bus`` measures and how it reports it: settings, figures, the table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

__all__ = [
    "TARGET_RATE_RATIO",
    "TARGET_RTT_RATIO",
    "BenchSettings",
    "BusResult",
    "Costs",
    "Side",
    "report",
]

TARGET_RTT_RATIO = 1.5  # our p50 round trip at most 1.5x the raw library's
TARGET_RATE_RATIO = 0.4  # our messages/s at least 40% of the raw library's
WARMUP = 20
PUBLISH_WINDOW = 64  # concurrent publishes: MQTT QoS 1 waits for each PUBACK
_CHAIN_LENGTH = 2
REPLY_TIMEOUT_S = 5.0
START_TIMEOUT_S = 10.0
HWM = 100_000  # as the ZeroMQ transport sets, before connecting
LOOPBACK = ("127.0.0.1", "localhost", "::1")
PROFILE_TOP = 8
PROFILE_PLUMBING = ("asyncio", "anyio", "selectors", "threading", "bench_bus", "contextlib")
PROFILE_BUILTINS = ("_contextvars.Context", "select.epoll", "builtins.exec", "_lsprof")


@dataclass(frozen=True)
class BenchSettings:
    buses: tuple[str, ...] = ()  # empty: start our own ZeroMQ forwarder and Mosquitto
    count: int = 5000  # one-way messages
    requests: int = 1000  # round trips
    size: int = 100  # payload bytes
    qos: int = 1  # MQTT QoS, ours and raw alike
    profile: bool = True  # profile our path when it misses a target
    idle_s: float = 3.0  # a stream ends when nothing arrived for this long


@dataclass
class Side:
    """One side's figures on one bus."""

    rtt_ns: list[int] = field(default_factory=list)
    received: int = 0
    sent: int = 0
    elapsed_s: float = 0.0

    def rtt_ms(self, fraction: float) -> float | None:
        ordered = sorted(self.rtt_ns)
        return (
            ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6 if ordered else None
        )

    @property
    def rate(self) -> float | None:
        return self.received / self.elapsed_s if self.received and self.elapsed_s > 0 else None


@dataclass
class BusResult:
    url: str
    label: str
    raw_name: str
    ours: Side = field(default_factory=Side)
    transport: Side = field(default_factory=Side)  # our transport alone: no signing, no client
    raw: Side = field(default_factory=Side)
    hits: int = 0
    misses: int = 0
    rejected: int = 0
    profile: list[str] = field(default_factory=list)

    def ratio(self, metric: Callable[[Side], float | None]) -> float | None:
        ours, raw = metric(self.ours), metric(self.raw)
        return ours / raw if ours is not None and raw else None

    def missed_targets(self) -> list[str]:
        missed = []
        rtt = self.ratio(lambda side: side.rtt_ms(0.5))
        if rtt is not None and rtt > TARGET_RTT_RATIO:
            missed.append(f"rtt p50 {rtt:.2f}x raw (target <= {TARGET_RTT_RATIO}x)")
        rate = self.ratio(lambda side: side.rate)
        if rate is not None and rate < TARGET_RATE_RATIO:
            missed.append(f"msgs/s {rate:.0%} of raw (target >= {TARGET_RATE_RATIO:.0%})")
        return missed


@dataclass(frozen=True)
class Costs:
    """Microseconds per message, measured here: the crypto and codec share of our path."""

    sign_us: float
    verify_us: float
    seal_us: float  # pack + sign one envelope
    check_us: float  # a receiver's parse + cached chain + verify + replay check


# -- reporting -----------------------------------------------------------------------------------


def _number(value: float | None, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}{unit}" if digits == 0 else f"{value:.{digits}f}{unit}"


def _table(results: list[BusResult]) -> list[str]:
    header = ("bus", "side", "rtt p50 ms", "rtt p99 ms", "msgs/s", "received")
    rows: list[tuple[str, ...]] = [header]
    for result in results:
        for first, name, side in (
            (result.url, "ours", result.ours),
            (result.label, "our transport alone", result.transport),
            ("", result.raw_name, result.raw),
        ):
            rows.append(
                (
                    first,
                    name,
                    _number(side.rtt_ms(0.5)),
                    _number(side.rtt_ms(0.99)),
                    _number(side.rate, digits=0),
                    f"{side.received}/{side.sent}",
                )
            )
        rows.append(
            (
                "",
                "ours/raw",
                _number(result.ratio(lambda s: s.rtt_ms(0.5)), "x"),
                _number(result.ratio(lambda s: s.rtt_ms(0.99)), "x"),
                _number(result.ratio(lambda s: s.rate), "x"),
                "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return lines


def _where_time_goes(result: BusResult, costs: Costs) -> list[str]:
    """Raw → our transport alone → ours, with the share of our signing and verifying."""
    crypto_us = costs.seal_us + costs.check_us
    steps = []
    rtts = [side.rtt_ms(0.5) for side in (result.raw, result.transport, result.ours)]
    if all(rtt is not None for rtt in rtts):
        raw, transport, ours = (cast(float, rtt) for rtt in rtts)
        steps.append(
            f"round trip p50: raw {raw:.2f} ms -> our transport alone {transport:.2f} "
            f"({transport - raw:+.2f}) -> ours {ours:.2f} ({ours - transport:+.2f}, of which "
            f"2 seals + 2 receive checks {2 * crypto_us / 1000:.2f})"
        )
    rates = [side.rate for side in (result.raw, result.transport, result.ours)]
    if all(rates):
        raw, transport, ours = (1e6 / cast(float, rate) for rate in rates)
        steps.append(
            f"stream: raw {raw:.0f} us/message -> our transport alone {transport:.0f} "
            f"({transport - raw:+.0f}) -> ours {ours:.0f} ({ours - transport:+.0f}; seal + "
            f"receive check cost {crypto_us:.0f} on the event loop)"
        )
    return [f"  {result.url} {step}" for step in steps]


def report(
    settings: BenchSettings,
    results: list[BusResult],
    costs: Costs,
    notes: list[str],
    environment: str = "",
) -> str:
    lines = [
        f"modelbus bench bus: {settings.size} B payloads; {settings.requests} round trips one at a "
        f"time; {settings.count} messages one-way; MQTT QoS {settings.qos}",
        *([environment] if environment else []),
        "ours = BusClient, every message signed and verified (2-grant chains); "
        "raw = the library alone",
        "",
        *_table(results),
        "",
        "receiving verifier during our stream (verdict cache keyed by chain hash):",
    ]
    for result in results:
        checks = result.ours.received + _CHAIN_LENGTH * result.misses
        per_message = checks / result.ours.received if result.ours.received else 0.0
        lines.append(
            f"  {result.url}: hits {result.hits}, misses {result.misses}, "
            f"rejected {result.rejected} -> {per_message:.4f} signature checks per message "
            f"(a miss costs {_CHAIN_LENGTH + 1})"
        )
    lines += [
        f"per message, measured in this run: sign {costs.sign_us:.1f} us, verify "
        f"{costs.verify_us:.1f} us; seal (pack+sign) {costs.seal_us:.1f} us; receive check "
        f"(parse, cached chain, verify, replay) {costs.check_us:.1f} us",
        "where our time goes:",
        *(line for result in results for line in _where_time_goes(result, costs)),
        f"targets: rtt p50 <= {TARGET_RTT_RATIO}x raw; msgs/s >= {TARGET_RATE_RATIO:.0%} of raw",
    ]
    for result in results:
        missed = result.missed_targets()
        verdict = "BELOW TARGET: " + "; ".join(missed) if missed else "met"
        lines.append(f"  {result.url}: {verdict}")
    for result in results:
        if result.profile:
            title = f"what dominates our path on {result.url} (cProfile, loop plumbing left out)"
            lines += ["", f"{title}, {result.profile[0]}", *result.profile[1:]]
    if notes:
        lines += ["", "notes:", *(f"  {note}" for note in notes)]
    return "\n".join(lines)
