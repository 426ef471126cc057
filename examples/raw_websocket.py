"""A stream client without the SDK: the websocket protocol as it is on the wire.

    BROKER_URL=http://127.0.0.1:8080 BROKER_TOKEN=abk_... python examples/raw_websocket.py [COUNT]

Frames are JSON text: {"type": "report", "report": {...}} and {"type": "heartbeat"}. The client
acks each report with {"type": "ack", "sequence": N}; a reconnect without `after` resumes after
the last ack. (Payloads sealed to a node with an X25519 key arrive as {"sealed": ...}; opening
them is the SDK's job.)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp


async def main(count: int) -> None:
    url = os.environ["BROKER_URL"].replace("http", "ws", 1) + "/v1/stream?after=0&name=raw"
    headers = {"Authorization": f"Bearer {os.environ['BROKER_TOKEN']}"}
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
        received = 0
        async for message in ws:
            frame = json.loads(message.data)
            if frame["type"] != "report":
                continue
            report = frame["report"]
            print(json.dumps({"sequence": report["sequence"], "id": report["id"], "label": report["label"]}))
            await ws.send_json({"type": "ack", "sequence": report["sequence"]})
            received += 1
            if received >= count:
                return


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1))
