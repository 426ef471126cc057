"""TAXII 2.1 over the report stream: the same access rule, sealing policy and audit as REST.

A collection is a window on the reports carrying one of its topics. Every page is decided in
one transaction, like ``reports.listing``: the node re-checked at the change counter, each
report decided by ``domain.access``, one ``read`` event per report whose objects were served,
recorded with ``decided_at`` (so nothing is answered after a change that committed meanwhile).
Paging is a cursor on the report sequence (``domain.stix.Position``) that only ever names a
place right after something the node may see. Writes go through ``reports.publish``.

Refusals specific to TAXII (each audited):
- a node with an X25519 key receives every payload sealed to it, and TAXII cannot carry a sealed
  payload: its object reads are refused (``sealed_delivery_required``), REST and streams serve it;
- a node with an Ed25519 key must sign what it publishes, and a TAXII client cannot sign: its
  writes are refused (``signature_required``), REST ``POST /v1/reports`` takes signed reports.

One module per concern: ``common`` (the collection, refusals, cursors, the object index's
state), ``objects`` (a payload's entries), ``scan`` (paging a collection), ``byid`` (one
object's versions), ``delete`` (recall and version exclusion), ``writing`` (adding objects and
their status). The names the web edge calls are listed here.
"""

from broker.services.taxii.byid import by_id
from broker.services.taxii.common import collection_for, collections_for, cursor, position_of
from broker.services.taxii.delete import delete
from broker.services.taxii.objects import Page
from broker.services.taxii.scan import page
from broker.services.taxii.writing import add_objects, max_objects, publishes_in, status

__all__ = [
    "Page",
    "add_objects",
    "by_id",
    "collection_for",
    "collections_for",
    "cursor",
    "delete",
    "max_objects",
    "page",
    "position_of",
    "publishes_in",
    "status",
]
