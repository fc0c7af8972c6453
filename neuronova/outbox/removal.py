"""Remove a re-run's stale results from a destination, so that it keeps exactly one result set.

DICOM has no "delete" in C-STORE or STOW-RS. What a node can do:

- Orthanc (``?orthanc=URL`` on the destination): delete the instances through Orthanc's REST API
  (``/tools/lookup`` by SOP Instance UID, then ``DELETE /instances/{id}``) with pyorthanc. Immediate and
  exact; needs the REST API reachable from the node, with a user allowed to delete.
- Archives that implement IHE IOCM ("Imaging Object Change Management"; ``?reject=iocm``): a Key Object
  Selection "Rejection Note" titled (113001, DCM, "Rejected for Quality Reasons") that lists the instances,
  which the archive hides or deletes (``iocm.py``). Opt-in: an archive without IOCM would keep the note as
  one more object in the study, and the instances too.
- Any other destination keeps the stale instances, and the outbox says so (row state ``kept``, a warning,
  the delivery-failure counter).

Each answer per SOP Instance UID is a ``Delivery`` like a send's: ``removed`` (not in the destination any
more, whether deleted now or never there), ``retry`` (transient: unreachable, 5xx, 401/403/429) or
``failed``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import httpx
from pyorthanc import Orthanc

from neuronova.outbox.destinations import Destination
from neuronova.outbox.iocm import IocmRejecter, Send
from neuronova.outbox.senders import Delivery
from neuronova.store import InstanceStore

log = logging.getLogger(__name__)

TRANSIENT_HTTP = (401, 403, 408, 429)


class OrthancRemover:
    def __init__(self, destination: Destination, *, timeout: float = 30) -> None:
        if destination.orthanc_url is None:
            raise ValueError(f"{destination.name} has no orthanc= REST URL")
        self.destination = destination
        self.timeout = timeout

    def remove(self, sop_uids: Sequence[str]) -> dict[str, Delivery]:
        d = self.destination
        client = Orthanc(d.orthanc_url or "", username=d.orthanc_username, password=d.orthanc_password,
                         return_raw_response=True, timeout=self.timeout)
        out: dict[str, Delivery] = {}
        try:
            for uid in sop_uids:
                out[uid] = self._remove_one(client, uid)
                if out[uid].outcome == "retry" and out[uid].status == "no response":
                    break  # unreachable: the others would wait for the same timeout
        finally:
            client.close()
        for uid in sop_uids:
            out.setdefault(uid, Delivery("retry", "no response", "Orthanc's REST API is unreachable"))
        return out

    def _remove_one(self, client: Orthanc, uid: str) -> Delivery:
        try:
            # pyorthanc's post_tools_lookup sends its body as form data, which httpx deprecates for plain
            # text: the route is posted through the same client with the UID as the raw body.
            found = client.post(f"{client.url}/tools/lookup", content=uid)
            if found.status_code != 200:
                return _http_answer(found, "lookup")
            ids = [m["ID"] for m in found.json() if m.get("Type") == "Instance"]
            for oid in ids:
                r = client.delete_instances_id(oid)
                if r.status_code not in (200, 404):  # 404: deleted meanwhile
                    return _http_answer(r, "delete")
        except httpx.HTTPError as exc:
            return Delivery("retry", "no response", f"{type(exc).__name__}: {exc}")
        except ValueError as exc:  # not JSON: not an Orthanc
            return Delivery("failed", "bad answer", f"/tools/lookup answered no JSON list: {exc}")
        return Delivery("removed", f"HTTP 200 ({len(ids)} deleted)")


def _http_answer(r: httpx.Response, what: str) -> Delivery:
    status = f"HTTP {r.status_code}"
    if r.status_code >= 500 or r.status_code in TRANSIENT_HTTP:
        return Delivery("retry", status, f"Orthanc {what}: {r.text[:200]}")
    return Delivery("failed", status, f"Orthanc {what}: {r.text[:200]}")


def make_remover(destination: Destination, *, store: InstanceStore,
                 send: Send) -> OrthancRemover | IocmRejecter | None:
    """The removal method of a destination; None when it has none (stale instances stay there). ``send``
    delivers a rejection note like any result."""
    if destination.orthanc_url is not None:
        return OrthancRemover(destination)
    if destination.reject == "iocm":
        return IocmRejecter(destination, store=store, send=send)
    return None
