"""What to run: one run's settings (`runs`; `nst run`'s, from its flags: `one_run`), the YAML files and
`--set` overrides they come from (`yaml_files`), a run's identity (`run_key`), experiment files and their
grids (`grid`), and the claims an experiment declares with the criteria that judge them (`claims`).
No MLflow, no torch work."""
