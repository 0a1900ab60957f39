"""Running: one tracked batch of runs (`run`), which points share a batch (`batches`), sweeps with their
parent run and resume (`sweep`), who runs them (`executors`: here; `ray_executor`: a Ray cluster), and
what a run measures and says when it fails (`probe`, `failures`)."""
