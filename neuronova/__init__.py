"""NeuroNova AI node: receives studies from a PACS, runs brain-tumour models, writes DICOM results back."""

__version__ = "0.1.0"
