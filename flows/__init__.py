"""Prefect flows: short typed compositions of the tasks in `tasks/`. One file per flow; `flows.cli` maps one
sub-command to each."""

from flows.errors import quiet_user_error_tracebacks
from storage.settings import apply_prefect_defaults

apply_prefect_defaults()  # before any flow module imports Prefect
quiet_user_error_tracebacks()
