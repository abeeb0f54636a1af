"""DICOM objects this project writes, each one class that checks its arguments."""

from .mammography import MammographyImage

__all__ = ["MammographyImage"]
