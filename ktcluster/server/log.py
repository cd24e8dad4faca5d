"""The server's log: ktserver's ``DATE: [KIND]: message`` lines (``-log``, ``-li``/``-ls``/
``-le``/``-lz``)."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from .config import LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_SYSTEM, ConfigError

__all__ = ["Logger"]


class Logger:
    """ktserver's log: ``DATE: [KIND]: message`` lines, filtered by the -li/-ls/-le/-lz
    kinds.  Nothing is written unless a -log path is given (``-`` = stdout)."""

    _NAMES = {LOG_DEBUG: "DEBUG", LOG_INFO: "INFO", LOG_SYSTEM: "SYSTEM", LOG_ERROR: "ERROR"}

    def __init__(self, path: str | None, kinds: int) -> None:
        self.path = path
        self.kinds = kinds if path else 0
        self._lock = threading.Lock()
        self._stream: TextIO | None = None
        self.open()

    def open(self) -> None:
        if not self.path:
            return
        if self.path == "-":
            self._stream = sys.stdout
        else:
            try:
                self._stream = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
            except OSError:
                raise ConfigError(f"{self.path}: could not open the log file") from None

    def reopen(self) -> None:
        """SIGUSR1 / SIGHUP as daemon: reopen the log file (for log rotation)."""
        with self._lock:
            self.close()
            self.open()

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stdout:
            self._stream.close()
        self._stream = None

    def log(self, kind: int, message: str) -> None:
        if not kind & self.kinds or self._stream is None:
            return
        now = time.time()
        local = time.localtime(now)
        offset = local.tm_gmtoff // 60
        zone = "Z" if offset == 0 else "%s%02d:%02d" % ("+" if offset > 0 else "-", abs(offset) // 60,
                                                        abs(offset) % 60)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", local) + ".%06d" % int(now % 1 * 1e6) + zone
        with self._lock:
            try:
                self._stream.write(f"{stamp}: [{self._NAMES.get(kind, 'MISC')}]: {message}\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass
