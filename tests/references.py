"""The reference implementations that parity tests compare against (`pip install -e .[test]`, in the lock).

`reference(module)` imports one. Where it is missing, a developer's run skips the test with the reason, and CI
(`REENACT_REQUIRE_REFERENCES=1`, set by `.ci/run`) fails it: a parity test must never pass by not running."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRED = os.environ.get("REENACT_REQUIRE_REFERENCES") == "1"


def reference(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        message = f"reference package for {module!r} missing ({err}); install them with pip install -e .[test]"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
