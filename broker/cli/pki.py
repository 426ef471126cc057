"""``broker pki``: a development CA for mutual TLS (production brings its own CA). Files only:
no settings, no database."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from broker.cli.common import actions
from broker.crypto import pki


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    group = actions(sub, "pki", "development CA and certificates for mutual TLS")
    key_type = {
        "choices": pki.KEY_TYPES,
        "default": pki.DEFAULT_KEY_TYPE,
        "help": f"key algorithm, one of: {', '.join(pki.KEY_TYPES)} (default: %(default)s)",
    }
    init = group.add_parser("init-ca", parents=[common], help="create a self-signed CA in DIR")
    init.add_argument("dir", metavar="DIR", help="where to write ca.pem and ca.key")
    init.add_argument(
        "--name", default=pki.DEFAULT_CA_NAME, help="the CA's common name (default: %(default)s)"
    )
    init.add_argument("--key-type", **key_type)
    init.add_argument("--days", type=int, default=pki.CA_DAYS, help="validity in days (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="replace a CA already in DIR (default: refuse)")
    issue = group.add_parser("issue", parents=[common], help="a client certificate for a node")
    issue.add_argument("node", metavar="NODE-ID", help="the node it identifies (its URI SAN)")
    server = group.add_parser("server-cert", parents=[common], help="a server certificate for HOSTs")
    server.add_argument("hosts", metavar="HOST", nargs="+", help="DNS names and IP addresses")
    for p in (issue, server):
        p.add_argument("--ca", required=True, metavar="DIR", help="the CA directory (from init-ca)")
        p.add_argument("--out", required=True, metavar="DIR", help="where to write the .pem and .key")
        p.add_argument("--key-type", **key_type)
        p.add_argument(
            "--days", type=int, default=pki.LEAF_DAYS, help="validity in days (default: %(default)s)"
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "init-ca":
        folder = Path(args.dir)
        ca = pki.create_ca(name=args.name, key_type=args.key_type, days=args.days)
        cert_path, key_path = pki.save_ca(folder, ca, force=args.force)
        return {
            "certificate": str(cert_path),
            "key": str(key_path),
            "subject": ca.certificate.subject.rfc4514_string(),
            "key_type": ca.key_type,
            "not_after": ca.certificate.not_valid_after_utc.isoformat(),
            "fingerprint_sha256": pki.fingerprint_sha256(pki.certificate_der(ca.certificate)),
        }
    ca_dir, out = Path(args.ca), Path(args.out)
    if args.action == "issue":
        pki.node_uri(args.node)  # a bad node id is reported before the CA is read
        ca = pki.load_ca(ca_dir)
        node = pki.issue_node_certificate(args.node, ca=ca, key_type=args.key_type, days=args.days)
        cert_path, key_path = pki.save_issued(out, args.node, node, ca_directory=ca_dir)
        return {
            "node": args.node,
            "certificate": str(cert_path),
            "key": str(key_path),
            "fingerprint_sha256": pki.fingerprint_sha256(pki.certificate_der(node.certificate)),
        }
    pki.server_names(args.hosts)
    ca = pki.load_ca(ca_dir)
    server = pki.issue_server_certificate(args.hosts, ca=ca, key_type=args.key_type, days=args.days)
    cert_path, key_path = pki.save_issued(
        out, pki.SERVER_STEM, server, chain=[ca.certificate], ca_directory=ca_dir
    )
    return {
        "hosts": args.hosts,
        "certificate": str(cert_path),
        "key": str(key_path),
        "fingerprint_sha256": pki.fingerprint_sha256(pki.certificate_der(server.certificate)),
    }
