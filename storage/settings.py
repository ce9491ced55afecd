"""Where the project keeps its local state, and the environment defaults that keep it local."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_PHOTO = PROJECT_ROOT / "data" / "demo" / "photos" / "obama.jpg"  # the demo's bundled real photo


def state_dir() -> Path:
    """The project checkout when running from one (it holds prefect.yaml), else the current directory."""
    return PROJECT_ROOT if (PROJECT_ROOT / "prefect.yaml").exists() else Path.cwd()


def apply_prefect_defaults() -> None:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_HOME", str(state_dir() / ".prefect"))
    # the ephemeral API's default 20 s start-up wait is too short on a small machine busy with training
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def default_weights_dir() -> Path:
    """Weights live in $REENACT_WEIGHTS_DIR, else `weights/` beside the project's local state."""
    return Path(os.environ.get("REENACT_WEIGHTS_DIR") or state_dir() / "weights")


def code_version() -> str:
    """The installed face-reenact version (what the store's stages record as the code that wrote them)."""
    try:
        return metadata.version("face-reenact")
    except metadata.PackageNotFoundError:
        return "unknown"
