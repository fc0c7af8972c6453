"""DICOM C-STORE / C-ECHO listener (pynetdicom)."""

from neuronova.scp_listener.server import start_listener

__all__ = ["start_listener"]
