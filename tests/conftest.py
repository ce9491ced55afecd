"""Test-wide settings: Prefect runs for real (ephemeral API) with its state in a throwaway PREFECT_HOME."""

import os
import tempfile

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="reenact-prefect-")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import tasks  # noqa: E402,F401  (the project's other Prefect defaults)
