"""`mlflow server --app-name nst-auth`: MLflow's basic-auth app with one rule more.

MLflow lets every signed-in user create an experiment (and then owns it, runs included), so a
"read-only" user would not be read-only. Here creating an experiment or a registered model also
needs the writers' role (auth.py) or admin rights; every other decision is MLflow's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipelines.tracking.auth import WRITERS


def _writers_only(check: Callable[[], bool]) -> Callable[[], bool]:
    from mlflow.server import auth

    def gate() -> bool:
        if not check():
            return False
        signed_in = auth.authenticate_request()  # check() passed: credentials, not a 401 response
        user = auth.store.get_user(signed_in.username)  # type: ignore[union-attr,arg-type]
        return user.is_admin or any(role.name == WRITERS for role in auth.store.list_user_roles(user.id))

    return gate


def create_app() -> Any:
    """The entry point MLflow's server loads (pyproject.toml: [project.entry-points."mlflow.app"])."""
    from mlflow.server import app, auth

    creating = {auth.validate_can_create_experiment, auth.validate_can_create_registered_model}
    for key, check in list(auth.BEFORE_REQUEST_VALIDATORS.items()):
        if check in creating:
            auth.BEFORE_REQUEST_VALIDATORS[key] = _writers_only(check)
    return auth.create_app(app)
