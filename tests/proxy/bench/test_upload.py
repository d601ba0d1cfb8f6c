"""Smoke test of ``modelbus bench upload --artifacts``: a tiny upload to a service with its
default spool and to one whose artifact store is a bucket on a real S3 server (moto), each row
printed with its ratio to raw TCP. No timing is asserted (a benchmark's figures are for people).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

_ROW = r"^modelbus upload over (.+?) +[\d.]+ +[\d,]+ +\d+%$"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_upload_prints_the_default_and_the_s3_store_next_to_raw(s3_bucket: str) -> None:
    argv = ["bench", "upload", "--mib", "2", "--artifacts", f"s3://{s3_bucket}/bench"]
    completed = subprocess.run(
        [sys.executable, "-m", "proxy.cli", *argv],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert re.search(r"^raw loopback TCP .* 100%$", out, re.M), out
    rows = re.findall(_ROW, out, re.M)
    assert "ZeroMQ forwarder" in rows and "ZeroMQ forwarder → s3" in rows, out
    assert len(rows) % 2 == 0, out  # every bus twice: its spool, then the bucket
