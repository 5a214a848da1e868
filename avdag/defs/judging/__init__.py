"""Judge scores per clip batch, the judge's calibration (with its blocking check), the Batch API sensor."""
