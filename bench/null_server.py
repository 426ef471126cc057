"""A null endpoint: answers every POST /v1/reports with 201 at once, after reading the body.

    python -m bench.null_server PORT

The ceiling a load client can see; the benchmarks start it in a process of its own, like the
servers they compare.
"""

from __future__ import annotations

import sys

from aiohttp import web


async def created(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"id": "x", "sequence": 1, "created": "now"}, status=201)


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/reports", created)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
