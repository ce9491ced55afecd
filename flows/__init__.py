"""Prefect flows: short typed compositions of the tasks in `tasks/`. One file per flow; `flows.cli` maps one
sub-command to each."""

import tasks  # noqa: F401  (applies the project's Prefect environment defaults before Prefect is imported)
