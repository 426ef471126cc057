"""A TAXII 2.1 server seen only through HTTP, loaded with medallion's test data: what the checks in
test_taxii_medallion_checks.py need to know about it, and the few requests they all make.

The same checks run against our broker and against medallion itself, so nothing here may depend
on either server beyond what TAXII 2.1 leaves to the server (paths, authentication, which
collection holds the data, whether objects in STIX 2.0 form are stored)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

TAXII = "application/taxii+json;version=2.1"
DATA = Path(__file__).resolve().parent.parent / "corpus" / "taxii" / "medallion-default-data.json"
LOADED = "91a7b528-80eb-42ed-a74d-c6fbd5a26116"  # the data file's collection that holds objects

RELATIONSHIP = "relationship--2f9a9aa9-108a-4333-83e2-4fb25add0463"
POISON_IVY_HASH = "indicator--cd981c25-8042-4166-8945-51178443bdac"
MALICIOUS_SITE = "indicator--6770298f-0fd8-471a-ab8c-1c658a46574e"  # three STIX 2.1 versions
TLP_GREEN = "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da"
POISON_IVY = "malware--c0931cc6-c75e-47e5-9036-78fabc95d4ec"  # one 2.1 version, one 2.0 version
COURSE_OF_ACTION = "course-of-action--68794cd5-28db-429d-ab1e-1256704ef906"


def data_file() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DATA.read_text())
    return loaded


def version_of(obj: dict[str, Any]) -> str:
    return str(obj.get("modified") or obj.get("created"))


def loaded_groups() -> list[list[dict[str, Any]]]:
    """The loaded collection's objects grouped by their manifest `date_added`, oldest first: one
    POST each, so a server that stamps `date_added` itself orders them as the file does."""
    collection = next(c for c in data_file()["trustgroup1"]["collections"] if c["id"] == LOADED)
    added = {(m["id"], m["version"]): m["date_added"] for m in collection["manifest"]}
    groups: dict[str, list[dict[str, Any]]] = {}
    for obj in collection["objects"]:
        groups.setdefault(added[(obj["id"], version_of(obj))], []).append(obj)
    return [groups[when] for when in sorted(groups)]


def course_of_action(**changes: str) -> dict[str, Any]:
    """The object medallion's tests post (a fresh copy each time)."""
    return {
        "type": "course-of-action",
        "spec_version": "2.1",
        "id": COURSE_OF_ACTION,
        "created": "2017-01-27T13:49:53.935Z",
        "modified": "2017-01-27T13:49:53.935Z",
        "name": "Test object",
        **changes,
    }


def shifted(stamp: str, **delta: float) -> str:
    moved = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) + timedelta(**delta)
    return moved.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Refused(AssertionError):
    """An answer that is not what the check expected."""


@dataclass
class Target:
    """One server under test. Paths are absolute (``/.../``); ``auth`` is an Authorization value."""

    name: str
    session: aiohttp.ClientSession
    base: str
    root: str
    loaded: str  # collection id holding medallion's data
    writable: str  # an empty collection the checks write to
    forbidden: str  # a collection ``forbidden_auth`` may neither read nor write
    auth: str
    forbidden_auth: str
    known_status: str  # a status resource with successes and failures
    # medallion keeps objects in STIX 2.0 form (no `spec_version`); the broker validates each object
    # under STIX 2.1, which requires one, and refuses them
    stores_stix20: bool
    unknown_root: str
    dated: dict[tuple[str, str], str] = field(default_factory=dict)

    def coll(self, cid: str | None = None) -> str:
        return f"{self.root}collections/{cid or self.loaded}/"

    async def request(
        self,
        method: str,
        path: str,
        *,
        status: int | tuple[int, ...] = 200,
        auth: str | None = "default",
        headers: dict[str, str] | None = None,
        body: Any = None,
        data: bytes | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        sent = {"Accept": TAXII, **(headers or {})}
        if auth is not None:
            sent["Authorization"] = self.auth if auth == "default" else auth
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", TAXII)
        stream = None if data is None else io.BytesIO(data)  # aiohttp warns on large raw bytes
        async with self.session.request(method, self.base + path, headers=sent, data=stream) as resp:
            text = await resp.text()
            try:
                answer = json.loads(text)
            except ValueError:  # medallion's 401 is plain text
                answer = {"text": text}
            wanted = status if isinstance(status, tuple) else (status,)
            if resp.status not in wanted:
                raise Refused(f"{method} {path}: {resp.status} (wanted {status}): {text[:300]}")
            return resp.status, dict(resp.headers), answer

    async def get(self, path: str, **kw: Any) -> tuple[dict[str, str], Any]:
        _, headers, answer = await self.request("GET", path, **kw)
        return headers, answer

    async def taxii_get(self, path: str, **kw: Any) -> tuple[dict[str, str], Any]:
        """A GET whose answer must carry the TAXII media type (every check on a 200 asks that)."""
        headers, answer = await self.get(path, **kw)
        assert_taxii(headers)
        return headers, answer

    async def post(self, cid: str, objects: list[dict[str, Any]], **kw: Any) -> tuple[int, Any]:
        kw.setdefault("status", 202)
        status, headers, answer = await self.request(
            "POST", self.coll(cid) + "objects/", body={"objects": objects}, **kw
        )
        assert_taxii(headers)
        return status, answer

    async def learn_dates(self) -> None:
        """``date_added`` of every version in the loaded collection, from its manifest."""
        url = self.coll() + "manifest/?match[version]=all&match[spec_version]=2.0,2.1&limit=5"
        page = url
        for _ in range(20):
            _, answer = await self.taxii_get(page)
            for record in answer.get("objects", []):
                self.dated[(record["id"], record["version"])] = record["date_added"]
            if not answer.get("more"):
                return
            page = f"{url}&next={quote(answer['next'])}"
        raise Refused("the manifest did not end")

    def added(self, ident: str, version: str) -> str:
        return self.dated[(ident, version)]


def assert_taxii(headers: dict[str, str]) -> None:
    kind = headers.get("Content-Type", "").replace(" ", "")
    if not kind.startswith(TAXII):
        raise Refused(f"Content-Type {kind!r}")
