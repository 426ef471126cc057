"""Publish one signed STIX 2.1 bundle as a node, with the Python SDK.

    BROKER_URL=https://127.0.0.1:8080 BROKER_TOKEN=abk_... BROKER_SIGNING_KEY=usa.key \\
        python examples/publisher.py examples/indicator_bundle.json

BROKER_SIGNING_KEY is a file holding the node's Ed25519 private key (base64), as
`broker node keygen NODE --out DIR` writes it (DIR/NODE.ed25519.key; see README). For TLS, BROKER_CA (and, for
mutual TLS, BROKER_CERT and BROKER_KEY instead of a token) name PEM files.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from broker.client import BrokerClient
from broker.crypto.keys import Ed25519PrivateKey, load_signing_key


def tls() -> tuple[str, str, str] | None:
    ca, cert, key = (os.environ.get(k) for k in ("BROKER_CA", "BROKER_CERT", "BROKER_KEY"))
    return (ca, cert, key) if ca and cert and key else None


async def main(bundle: dict[str, object], signing_key: Ed25519PrivateKey) -> None:
    async with BrokerClient(
        os.environ["BROKER_URL"], os.environ.get("BROKER_TOKEN"), signing_key=signing_key, tls=tls()
    ) as node:
        receipt = await node.publish(
            label={"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []},
            payload=bundle,
            topics=["c2"],
        )
    print(json.dumps(receipt))


if __name__ == "__main__":
    key = load_signing_key(Path(os.environ["BROKER_SIGNING_KEY"]).read_text())
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text()), key))
