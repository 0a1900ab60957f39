"""What to run: one run's settings (`runs`; `nst run`'s, from its flags: `one_run`), experiment files and
their grids (`grid`), and the claims an experiment declares with the criteria that judge them (`claims`).
No MLflow, no torch work."""
