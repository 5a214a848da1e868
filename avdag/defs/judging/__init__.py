"""Judge scores per clip batch, the calibration check, the Batch API sensor."""
