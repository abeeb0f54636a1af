"""The long-running DICOM node, built on the dicomcr library (which never imports this package)."""
