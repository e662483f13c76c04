"""structlog set up once: a console renderer on the terminal (colours on a TTY) and JSON
lines in the run dir. Hydra's and every other stdlib logger go through the same formatter."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import structlog

_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
_FILE_HANDLER_NAME = "runner-jsonl"


def configure(level: int = logging.INFO) -> None:
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [console]
    root.setLevel(level)


def log_to_run_dir(path: Optional[Path]) -> None:
    """JSON lines for this run; replaces the previous run's file (multirun)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _FILE_HANDLER_NAME]:
        root.removeHandler(handler)
        handler.close()
    if path is None:
        return
    handler = logging.FileHandler(path)
    handler.set_name(_FILE_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root.addHandler(handler)


def get(name: str = "runner"):
    return structlog.get_logger(name)
