"""MLflow, and nothing else does MLflow: the store, experiments, params and tag names (`store`, `tags`),
what a run logs while it optimizes (`run_log`, `run_writer`; `writer_process`: those writes in a process
of their own; `writers`: a thread or processes, and how many), its checkpoints (`checkpoint_store`), the
UI's links and command (`ui`) and the tracking server (`server`)."""

import os

# Against a tracking server MLflow prints two lines at every run's end ("View run ... at", "View experiment
# at") and asks the server for the run once more to make them: 128 lines and 64 requests for a batch of 64,
# between nst's progress bars. nst prints its sweep's one link itself.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# And a progress bar on stderr for every artifact it downloads from a server: `nst report` reads about ten
# per run, `nst run --init run:<id>` and a resume one each.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
