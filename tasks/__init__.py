"""Prefect tasks: small named units that call `models/` and `storage/`.

Importing this package sets the project's Prefect defaults before Prefect itself is imported: no telemetry, and a
project-local PREFECT_HOME, so nothing phones home and nothing lands in the user's home directory by surprise.
Values already in the environment win.
"""

from storage.settings import apply_prefect_defaults

apply_prefect_defaults()
