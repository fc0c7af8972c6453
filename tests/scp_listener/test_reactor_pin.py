"""The listener's reactors (neuronova/scp_listener/reactor.py) copy pynetdicom 3.0.4's loop bodies and override
its internals (queues, ``run_reactor``, ``_run_reactor``, ``_create_association``). Another pynetdicom may
change what was copied: this test fails loudly then, naming what changed, so that reactor.py is re-checked
against the new version before the pin moves (``start_listener(..., data_phase=False)`` and pynetdicom's own
reactors remain the fallback)."""

from __future__ import annotations

import hashlib
import importlib
import inspect

import pynetdicom

PINNED_VERSION = "3.0.4"
#: SHA-256 of the source of each pynetdicom internal that reactor.py mirrors or overrides, in 3.0.4.
MIRRORED = {
    "pynetdicom.dul.DULServiceProvider.run_reactor": "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
    "pynetdicom.dul.DULServiceProvider._is_transport_event": "8725ed03bb8fbdefef249d5d9888c120e6277d7b6aa2c4f537e23027186e1253",
    "pynetdicom.dul.DULServiceProvider.kill_dul": "5ceccf8dd01c2072c377d18bb1be284941a345bd40f03bd1e03a864ab0817842",
    "pynetdicom.association.Association._run_reactor": "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
    "pynetdicom.association.Association.kill": "8f9713666a7f4cffd840899f023090e9786668945a7c844f99d7a834077c3972",
    "pynetdicom.association.Association.abort": "de1cee39dfe396b08999c93bdfddcf750322dcbe4436e3e3056c3c8e4ef3ab84",
    "pynetdicom.transport.RequestHandler._create_association": "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e",
}


def _resolve(dotted: str) -> object:
    module, cls, attr = dotted.rsplit(".", 2)
    return getattr(getattr(importlib.import_module(module), cls), attr)


def test_pynetdicom_is_the_version_the_reactors_copy() -> None:
    assert pynetdicom.__version__ == PINNED_VERSION, (
        f"pynetdicom {pynetdicom.__version__} is installed; neuronova/scp_listener/reactor.py copies {PINNED_VERSION}'s "
        "internals: re-check it against the new version, then update this pin")


def test_mirrored_internals_are_unchanged() -> None:
    changed = [name for name, digest in MIRRORED.items()
               if hashlib.sha256(inspect.getsource(_resolve(name)).encode()).hexdigest() != digest]  # type: ignore[arg-type]
    assert not changed, f"pynetdicom changed what neuronova/scp_listener/reactor.py mirrors: {changed}"


def test_the_queues_the_reactors_replace_still_exist() -> None:
    from pynetdicom.ae import ApplicationEntity
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

    assoc = Association(ApplicationEntity(), "requestor")
    dul = DULServiceProvider(assoc)
    for name in ("event_queue", "to_provider_queue", "to_user_queue", "_run_loop_delay", "state_machine"):
        assert hasattr(dul, name), f"DULServiceProvider.{name} is gone"
    assert hasattr(assoc.dimse, "msg_queue")
