"""Stream what this node may receive, open sealed payloads, verify signatures, with the SDK.

    BROKER_URL=https://127.0.0.1:8080 BROKER_TOKEN=abk_... BROKER_SEALING_KEY=gbr.key \\
        python examples/subscriber.py [COUNT]

Prints one JSON line per report (id, originator, whether it was sealed and its signature
verified, the payload) and stops after COUNT reports (default: run until Ctrl-C). The
stream resumes after the last report acknowledged on the stream name `examples`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from broker.client import BrokerClient
from broker.crypto.keys import X25519PrivateKey, load_sealing_key


async def main(count: int | None, sealing_key: X25519PrivateKey | None) -> None:
    ca = os.environ.get("BROKER_CA")
    tls = (
        (ca, os.environ["BROKER_CERT"], os.environ["BROKER_KEY"])
        if ca and "BROKER_CERT" in os.environ
        else None
    )
    async with BrokerClient(
        os.environ["BROKER_URL"], os.environ.get("BROKER_TOKEN"), sealing_key=sealing_key, tls=tls
    ) as node:
        seen = 0
        async for report in node.stream(name="examples", after=0 if count else None):
            line = {
                "id": report.id,
                "originator": report.originator,
                "sealed": report.was_sealed,
                "verified": report.verified,
                "payload": report.payload,
            }
            print(json.dumps(line), flush=True)
            seen += 1
            if count is not None and seen >= count:
                return


if __name__ == "__main__":
    key_file = os.environ.get("BROKER_SEALING_KEY")
    key = load_sealing_key(Path(key_file).read_text()) if key_file else None
    try:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else None, key))
    except KeyboardInterrupt:  # Ctrl-C is how a person stops it: no traceback, the shell's status
        sys.exit(130)
