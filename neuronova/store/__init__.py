"""Durable instance storage and its index."""

from neuronova.store.index import Index
from neuronova.store.instances import InstanceStore, StoreResult, TmpInstance
from neuronova.store.scan import ScannedInstance, scan_part10
from neuronova.store.uids import is_valid_uid, validate_uid

__all__ = ["Index", "InstanceStore", "ScannedInstance", "StoreResult", "TmpInstance", "is_valid_uid", "scan_part10",
           "validate_uid"]
