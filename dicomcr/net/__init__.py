"""DICOM networking shared by the command line and the node: the SCU side (echo, store)."""
