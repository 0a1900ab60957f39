"""`nst report`: runs read back from MLflow (`readback`), figures (`figures`), the report with its claim
verdicts (`report`), `nst sheet`'s matrix of final images (`sheet`) and `nst run --out`'s copy of a run's
final image (`export`). Nothing is recomputed: everything comes from the store."""
