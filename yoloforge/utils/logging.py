"""One logger for the library; quiet on DDP ranks other than 0."""
from __future__ import annotations

import logging
import os
import sys

_NAME = "yoloforge"


def get_logger() -> logging.Logger:
    log = logging.getLogger(_NAME)
    if not log.handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
        log.propagate = False
        rank = int(os.environ.get("RANK", 0))
        log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    return log
