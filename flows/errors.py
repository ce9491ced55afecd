"""What counts as the user's mistake (bad input, a missing file, a wrong setting): one line, never a traceback.

The command line prints such an error as `error: ...` and exits 2; in a flow run's log (a deployment's worker, the
Prefect UI) it keeps its message and loses the engine's traceback, which would only bury the reason."""

from __future__ import annotations

import logging
import sys

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def is_user_error(error: BaseException) -> bool:
    """Bad values and inputs (ValueError, pydantic's validation errors included), missing files and weights,
    unknown names, refused videos."""
    if isinstance(error, (ValueError, FileNotFoundError, KeyError)):
        return True
    video = sys.modules.get("storage.video")  # loaded whenever a VideoError can exist; not imported for this
    prefect_errors = sys.modules.get("prefect.exceptions")
    return bool((video and isinstance(error, video.VideoError))
                or (prefect_errors and isinstance(error, prefect_errors.ParameterTypeError)))


class WithoutUserErrorTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_user_error(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_user_error_tracebacks() -> None:
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, WithoutUserErrorTraceback) for f in logger.filters):
            logger.addFilter(WithoutUserErrorTraceback())
