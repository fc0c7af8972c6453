"""Write-back: a durable outbox sending result instances by C-STORE or STOW-RS until acknowledged."""

from neuronova.outbox.destinations import Destination, parse_destination
from neuronova.outbox.store import OutboxStore
from neuronova.outbox.worker import OutboxWorker

__all__ = ["Destination", "OutboxStore", "OutboxWorker", "parse_destination"]
