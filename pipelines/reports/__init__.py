"""`nst report`: runs read back from MLflow (`readback`), figures (`figures`), the report with its claim
verdicts (`report`). Nothing is recomputed: everything comes from the store."""
