"""`broker demo --federation`: three linked brokers come up, a report crosses usa -> nato -> fra
with its signature verified at fra, and Ctrl-C stops all three."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.integration.federation import free_ports
from tests.integration.helpers import Forked


def test_demo_federation_shows_a_report_crossing_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_ports(3)  # usa, nato and fra listen on port, port + 1, port + 2
    proc = Forked(  # the demo's process, forked; the brokers it starts are the real binary
        [
            "-m",
            "broker",
            "demo",
            "--federation",
            "--dir",
            str(tmp_path / "fed"),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends at the process's exit at the latest
            lines.append(line)
            if line.startswith("demo federation ready"):
                break
        text = "".join(lines)
        assert "signature verified=True" in text, text
        assert "usa.example/broker -> nato.example/broker -> fra.example/broker" in text, text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(30) == 0
        finally:  # a demo that did not stop is killed, not left to other tests
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
    logs = [(tmp_path / "fed" / name / "broker.log").read_text() for name in ("usa", "nato", "fra")]
    assert all("Traceback" not in log for log in logs)
