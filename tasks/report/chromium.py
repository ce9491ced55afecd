"""The report as headless Chromium shows it: a screenshot, and a check that every image decoded."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from storage.files import atomic_path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# Without the networking switches Chromium waits for services it cannot reach on a closed network, and hangs.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio", "--virtual-time-budget=5000")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def _chromium(page: str | Path, arguments: Sequence[str], workdir: Path, timeout: float) -> str:
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("headless Chromium is not installed (Debian: apt-get install chromium)")
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}", *arguments,
               Path(page).resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}) on {page}: {done.stderr[-2000:]}")
    return done.stdout


def render_screenshot(page: str | Path, png: str | Path, width: int = 1280, height: int = 4000,
                      timeout: float = 120) -> Path:
    """A PNG of the page's top `height` pixels at `width`, as headless Chromium renders it."""
    with tempfile.TemporaryDirectory(prefix="reenact-chromium-") as folder, atomic_path(png) as partial:
        shot = Path(folder) / "page.png"  # Chromium picks the format by the suffix, so not the partial's name
        _chromium(page, [f"--screenshot={shot}", f"--window-size={width},{height}"], Path(folder), timeout)
        shutil.move(shot, partial)
    return Path(png)


def loaded_images(page: str | Path, timeout: float = 120) -> tuple[int, int]:
    """(images decoded, images on the page) once the page loaded in headless Chromium, as the page's own script
    counted them into <body>."""
    with tempfile.TemporaryDirectory(prefix="reenact-chromium-") as folder:
        dom = _chromium(page, ["--dump-dom"], Path(folder), timeout)
    body = re.search(r"<body[^>]*>", dom)
    counts = dict(re.findall(r'data-images-(loaded|total)="(\d+)"', body.group(0) if body else ""))
    if set(counts) != {"loaded", "total"}:
        raise RuntimeError(f"{page}: the page did not report its images (did its script run?)")
    return int(counts["loaded"]), int(counts["total"])
