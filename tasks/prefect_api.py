"""Prefect's temporary API, started early: while a command loads its networks, not after.

With no `PREFECT_API_URL`, Prefect starts a temporary API server (a uvicorn subprocess: several seconds on a small
machine) the first time a flow talks to it, i.e. only once the flow is called. A command that has other work to do
first (loading weights, checking inputs) starts it in a background thread and waits for it just before the flow, so
the two overlap:

    with temporary_api_in_background() as api_ready:
        networks_for(config)               # meanwhile, the server starts
        api_ready()                        # joined; the flow then finds it running
        reenact_video(...)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def temporary_api_in_background() -> Iterator[Callable[[], None]]:
    """Start Prefect's temporary API server in a background thread when the flow will need one (no API configured,
    temporary servers allowed); yield a function that waits until it is up. A failure to start here is only logged:
    the flow then starts the server itself, as it would have, and reports what goes wrong. When the block fails
    before the server was launched (a bad option, missing weights), it is not launched at all."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield lambda: None
        return
    cancelled = threading.Event()

    def start() -> None:
        from prefect.server.api.server import SubprocessASGIServer  # the server's app: seconds of imports

        if cancelled.is_set():
            return
        try:
            SubprocessASGIServer().start()  # the instance the flow's client asks for: started once, stopped at exit
        except Exception as err:  # noqa: BLE001 (logged; the flow retries the start and raises its own error)
            log.warning("starting Prefect's temporary API early failed (%s); the flow will start it", err)

    thread = threading.Thread(target=start, name="prefect-api-start", daemon=True)
    thread.start()
    try:
        yield thread.join
    except BaseException:
        cancelled.set()
        raise
