"""pipelines: config files, MLflow tracking, sweeps, reports and the `nst` command line."""
