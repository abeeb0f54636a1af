"""The compression audit: per site, the achieved CRs against the DICOM rules, the guidelines and the model."""
