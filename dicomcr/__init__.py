"""dicomcr: a DICOM node and toolkit for lossy JPEG 2000 mammography at exact compression ratios."""

__version__ = "0.1.0"
