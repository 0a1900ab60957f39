"""MLflow, and nothing else does MLflow: the store, experiments, params and tag names (`store`, `tags`),
what a run logs while it optimizes (`run_log`, `run_writer`; `writer_process`: those writes in a process
of their own; `writers`: a thread or processes, and how many), its checkpoints (`checkpoint_store`), and
the tracking server (`server`)."""
