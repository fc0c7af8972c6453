"""Event-driven reactors for pynetdicom's acceptor associations.

Why: pynetdicom 3.0 runs two polling loops per association. The DUL thread sleeps 1 ms whenever it finds no
work (``DULServiceProvider._run_loop_delay``) and the association thread sleeps 1 ms on *every* turn
(``Association._run_reactor``). Each instance received by C-STORE waits for both: about 1-2 ms of idle latency
per instance, more than the instance's own work, so one association could not use a core.

Here the same loops wait on events instead of sleeping: the DUL thread blocks in ``select`` on the peer's
socket and on a wake-up socket that every queue feeding it pokes; the association thread blocks on a
``threading.Event`` that the DUL sets when it queues a DIMSE message, a release or an abort. Each loop body
is pynetdicom's own (3.0.x), kept line for line except for the wait, so the state machine, the timers and
the handlers behave as before; a timeout bounds every wait, so a missed wake-up costs latency, never a hang.

When the server has a ``data_phase`` (the listener's default), pynetdicom still negotiates the association,
then hands the socket over: once established (state Sta6) the DUL thread stops reading it, and the
association thread runs the data phase (dataphase.py) until release or abort, then stops the DUL.
Only this listener's associations use these classes (no process-global setting is changed).
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer
from pynetdicom._globals import MODE_ACCEPTOR

from neuronova.scp_listener.dataphase import DataPhase

log = logging.getLogger(__name__)

#: Longest a loop waits without a wake-up: the granularity of the ARTIM and idle timers, and the worst-case
#: latency should a wake-up ever be missed.
MAX_WAIT = 0.05
#: The DUL's wait once the data phase owns the socket: only a kill or a local abort can give it work.
IDLE_WAIT = 0.5


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``wake`` after each put, so that its consumer need not poll it."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class EventDUL(DULServiceProvider):
    """The DUL reactor of pynetdicom 3.0 that waits in ``select`` instead of sleeping 1 ms per idle turn."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.event_queue = _WakingQueue(self.wake)
        self.to_provider_queue = _WakingQueue(self.wake)
        # The association thread waits on this; set whenever the DUL hands it something.
        self.user_wake = threading.Event()
        self.to_user_queue = _WakingQueue(self.user_wake.set)

    #: Set before negotiation when the association serves its data phase itself (dataphase.py): once
    #: established (Sta6) the socket is the association thread's, and this thread no longer reads it.
    handoff = False

    def _handed_off(self) -> bool:
        return self.handoff and self.state_machine.current_state == "Sta6"

    def _is_transport_event(self) -> bool:
        if self._handed_off():
            return False
        return super()._is_transport_event()

    def wake(self) -> None:
        w = self._wake_w
        if w is not None:
            try:
                w.send(b"\0")
            except OSError:  # full (a wake-up is pending anyway) or closed (the reactor has ended)
                pass

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def _wait(self) -> None:
        """Block until the peer sent data, a local primitive was queued, or MAX_WAIT passed."""
        sock = self.socket.socket if self.socket is not None else None
        waits: list[Any] = [self._wake_r]
        handed_off = self._handed_off()
        if sock is not None and self.socket is not None and self.socket._is_connected and not handed_off:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return  # decrypted bytes already buffered: select would not see them
            waits.append(sock)
        try:
            ready, _, _ = select.select(waits, [], [], IDLE_WAIT if handed_off else MAX_WAIT)
        except (OSError, ValueError):  # the peer's socket was closed under us: the next turn notices
            return
        if self._wake_r in ready:
            try:
                self._wake_r.recv(4096)
            except OSError:
                pass

    def run_reactor(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        try:
            self._run_reactor_loop()
        finally:
            wake_r, wake_w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, None, None
            wake_w.close()
            wake_r.close()

    def _run_reactor_loop(self) -> None:
        # pynetdicom 3.0.4 DULServiceProvider.run_reactor, with the sleep replaced by self._wait().
        self._idle_timer.start()
        self.socket = cast(AssociationSocket, self.socket)
        sleep = False

        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True

            if sleep:
                self._wait()

            if self._kill_thread:
                break

            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                log.error("Exception in DUL.run(), aborting association")
                log.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return

            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue

            self.state_machine.do_action(event)
            sleep = False


class EventAssociation(Association):
    """An acceptor association whose reactor waits for the DUL's wake-up instead of sleeping 1 ms per turn."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self.dul: EventDUL = EventDUL(self)
        self.dimse.msg_queue = _WakingQueue(self.dul.user_wake.set)
        #: Builds the data phase that serves this association once established (None: pynetdicom's DIMSE).
        self.data_phase: Callable[[EventAssociation], DataPhase] | None = None
        self._in_data_phase = False

    def kill(self) -> None:
        self.dul.user_wake.set()
        super().kill()

    def abort(self, block: bool = True) -> None:
        if self._in_data_phase:
            # The data phase owns the socket: end it there (the peer sees the connection close).
            sock = self.dul.socket.socket if self.dul.socket is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return
        super().abort(block)

    def _run_data_phase(self, make: Callable[[EventAssociation], DataPhase]) -> None:
        self._in_data_phase = True
        try:
            outcome = make(self).serve()
        finally:
            self._in_data_phase = False
        self.is_established = False
        if outcome == "released":
            self.is_released = True
            evt.trigger(self, evt.EVT_RELEASED, {})
        else:
            self.is_aborted = True
            evt.trigger(self, evt.EVT_ABORTED, {})
        # The DUL idles in Sta6 without the socket: stop it, then let pynetdicom close the connection.
        self.dul.kill_dul()
        self.dul.join(5)
        self.kill()

    def _run_reactor(self) -> None:
        if self.data_phase is not None and self.dul.handoff:
            self._run_data_phase(self.data_phase)
            return
        # pynetdicom 3.0.4 Association._run_reactor, with the per-turn sleep replaced by a wait on the DUL's
        # wake-up when the previous turn found no message.
        self._is_paused = False
        wake = self.dul.user_wake
        idle = False
        while not self._kill:
            if idle:
                wake.wait(MAX_WAIT)
            wake.clear()  # before looking: whatever arrives from now on sets it again

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            idle = msg is None
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                log.debug("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                log.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class EventRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        # pynetdicom 3.0.4 RequestHandler._create_association, building an EventAssociation.
        from copy import deepcopy

        assoc = EventAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(AssociationSocket(assoc, client_socket=self.request))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        data_phase = getattr(self.server, "data_phase", None)
        if data_phase is not None:
            assoc.data_phase = data_phase
            assoc.dul.handoff = True
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    handler = cast(evt._HandlerBase, handler)
                    assoc.bind(event, handler[0], handler[1])
        return assoc


class EventAssociationServer(ThreadedAssociationServer):
    """A threaded association server whose associations are event-driven (see the module's docstring)."""

    #: Set by the listener: builds the data phase of each established association (None: pynetdicom's DIMSE
    #: service classes and the bound event handlers serve it).
    data_phase: Callable[[EventAssociation], DataPhase] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request_handler", EventRequestHandler)
        super().__init__(*args, **kwargs)
