"""ktserver's command line: ``[options] [db ...]``, parsed and checked as ktserver does.

Option parsing stops at the first argument that does not start with ``-`` or after
``--``; every remaining argument is a database spec.  An unknown option or a missing
option value is a usage error (usage text on stderr, exit status 1); the consistency
checks of ktserver's ``proc()`` (``-ulog`` needs ``-sid``, ``-mhost`` needs ``-sid`` and
``-rts``, ``-cmd`` must be a directory, ``-scr`` must exist, at most 200 databases,
absolute paths with ``-dmn``) are :class:`ConfigError`s with ktserver's messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..protocol.kcnum import atof, atoix
from .db.dbspec import DBSpec

__all__ = ["ServerConfig", "UsageError", "ConfigError", "parse_args", "usage_text",
           "LOG_DEBUG", "LOG_INFO", "LOG_SYSTEM", "LOG_ERROR", "LOG_ALL"]

DEFAULT_PORT = 1978
THREAD_MAX = 64
OPEN_DB_MAX = 200
#: logger kinds (kt::RPCServer::Logger::Kind)
LOG_DEBUG, LOG_INFO, LOG_SYSTEM, LOG_ERROR = 1, 2, 4, 8
LOG_ALL = LOG_DEBUG | LOG_INFO | LOG_SYSTEM | LOG_ERROR


class UsageError(Exception):
    """The command line does not parse: print the usage and exit 1."""


class ConfigError(Exception):
    """The command line parses but cannot be served (ktserver's message, exit 1)."""


@dataclass
class ServerConfig:
    """Everything the command line says.  Paths are as given (relative to the cwd)."""

    dbs: list[DBSpec] = field(default_factory=list)
    host: str | None = None
    port: int = DEFAULT_PORT
    timeout: float = 30.0
    threads: int = 16
    log_path: str | None = None
    log_kinds: int = LOG_ALL
    ulog_path: str | None = None
    ulog_limit: int = 256 << 20
    ulog_sync_interval: float = 0.0
    sid: int = -1
    read_only: bool = False
    open_flags: tuple[str, ...] = ()
    sync_interval: float = 0.0
    sync_hard: bool = False
    snapshot_path: str | None = None
    snapshot_interval: float = 180.0
    snapshot_compressor: str | None = None
    daemon: bool = False
    pid_path: str | None = None
    cmd_path: str = "."
    script_path: str | None = None
    master_host: str | None = None
    master_port: int = DEFAULT_PORT
    rts_path: str | None = None
    replication_interval: float = 0.04
    plugin_server_path: str | None = None
    plugin_server_expr: str = ""
    plugin_db_path: str | None = None

    def check(self) -> None:
        """ktserver's consistency checks (ConfigError) and defaults."""
        if self.daemon:
            for path in (self.log_path, self.ulog_path, self.snapshot_path, self.pid_path,
                         self.cmd_path if self.cmd_path != "." else None, self.script_path, self.rts_path,
                         self.plugin_server_path, self.plugin_db_path):
                if path and not path.startswith("/"):
                    raise ConfigError(f"{path}: a daemon can accept absolute path only")
        if self.ulog_path and self.sid < 0:
            raise ConfigError("update log requires the server ID")
        if self.master_host:
            if self.sid < 0:
                raise ConfigError("replication requires the server ID")
            if not self.rts_path:
                raise ConfigError("replication requires the replication time stamp file")
        if self.sid < 0:
            self.sid = 0
        if self.snapshot_path and not os.path.isdir(self.snapshot_path):
            try:
                os.mkdir(self.snapshot_path)
            except OSError:
                raise ConfigError(f"{self.snapshot_path}: could not open the directory") from None
        if not os.path.isdir(self.cmd_path):
            raise ConfigError(f"{self.cmd_path}: no such directory")
        if self.script_path and not os.path.exists(self.script_path):
            raise ConfigError(f"{self.script_path}: no such file")
        if len(self.dbs) > OPEN_DB_MAX:
            raise ConfigError("too much databases")

    @property
    def void_db(self) -> bool:
        """``-pldb ktplugdbvoid.so``: every database is the void plug-in database."""
        return self.plugin_db_path is not None and os.path.basename(self.plugin_db_path) == "ktplugdbvoid.so"


def usage_text(progname: str) -> str:
    return (f"{progname}: Kyoto Tycoon: a handy cache/storage server\n\nusage:\n"
            f"  {progname} [-host str] [-port num] [-tout num] [-th num] [-log file] [-li|-ls|-le|-lz]"
            " [-ulog dir] [-ulim num] [-uasi num] [-sid num] [-ord] [-oat|-oas|-onl|-otl|-onr]"
            " [-asi num] [-ash] [-bgs dir] [-bgsi num] [-bgsc str]"
            " [-dmn] [-pid file] [-cmd dir] [-scr file]"
            " [-mhost str] [-mport num] [-rts file] [-riv num]"
            " [-plsv file] [-plex str] [-pldb file] [db...]\n\n")


def _num(text: str) -> int:
    return atoix(text.encode("utf-8", "surrogateescape"))


def _real(text: str) -> float:
    return atof(text.encode("utf-8", "surrogateescape"))


_FLAG_OPTIONS = {"-oat", "-oas", "-onl", "-otl", "-onr"}
_LOG_LEVELS = {"-li": LOG_INFO | LOG_SYSTEM | LOG_ERROR, "-ls": LOG_SYSTEM | LOG_ERROR, "-le": LOG_ERROR, "-lz": 0}


def parse_args(argv: list[str]) -> ServerConfig:
    """Parse the arguments after the program name (UsageError on bad syntax)."""
    cfg = ServerConfig()
    specs: list[str] = []
    opt_break = False
    args = iter(argv)

    def value() -> str:
        try:
            return next(args)
        except StopIteration:
            raise UsageError("missing option value") from None

    thnum = 16.0
    for arg in args:
        if opt_break or not arg.startswith("-"):
            opt_break = True
            specs.append(arg)
            continue
        if arg == "--":
            opt_break = True
        elif arg == "-host":
            cfg.host = value()
        elif arg == "-port":
            cfg.port = _num(value())
        elif arg == "-tout":
            cfg.timeout = _real(value())
        elif arg == "-th":
            thnum = _real(value())
        elif arg == "-log":
            cfg.log_path = value()
        elif arg in _LOG_LEVELS:
            cfg.log_kinds = _LOG_LEVELS[arg]
        elif arg == "-ulog":
            cfg.ulog_path = value()
        elif arg == "-ulim":
            cfg.ulog_limit = _num(value())
        elif arg == "-uasi":
            cfg.ulog_sync_interval = _real(value())
        elif arg == "-sid":
            cfg.sid = _num(value())
        elif arg == "-ord":
            cfg.read_only = True
        elif arg in _FLAG_OPTIONS:
            cfg.open_flags += (arg,)
        elif arg == "-asi":
            cfg.sync_interval = _real(value())
        elif arg == "-ash":
            cfg.sync_hard = True
        elif arg == "-bgs":
            cfg.snapshot_path = value()
        elif arg == "-bgsi":
            cfg.snapshot_interval = _real(value())
        elif arg == "-bgsc":
            name = value().lower()
            cfg.snapshot_compressor = {"zlib": "zlib", "gz": "zlib", "lzo": "lzo", "oz": "lzo", "lzma": "lzma",
                                       "xz": "lzma"}.get(name)
        elif arg == "-dmn":
            cfg.daemon = True
        elif arg == "-pid":
            cfg.pid_path = value()
        elif arg == "-cmd":
            cfg.cmd_path = value()
        elif arg == "-scr":
            cfg.script_path = value()
        elif arg == "-mhost":
            cfg.master_host = value()
        elif arg == "-mport":
            cfg.master_port = _num(value())
        elif arg == "-rts":
            cfg.rts_path = value()
        elif arg == "-riv":
            cfg.replication_interval = _real(value())
        elif arg == "-plsv":
            cfg.plugin_server_path = value()
        elif arg == "-plex":
            cfg.plugin_server_expr = value()
        elif arg == "-pldb":
            cfg.plugin_db_path = value()
        else:
            raise UsageError(f"unknown option {arg}")
    cfg.threads = int(thnum) if -2 ** 31 <= thnum < 2 ** 31 else -1
    if cfg.port < 1 or cfg.threads < 1 or cfg.master_port < 1:
        raise UsageError("bad number")
    cfg.threads = min(cfg.threads, THREAD_MAX)
    if not specs:
        if cfg.plugin_db_path:
            raise UsageError("a plug-in database needs a database spec")
        specs = [":"]
    try:
        cfg.dbs = [DBSpec.parse(spec) for spec in specs]
    except ValueError as exc:
        raise ConfigError(f"could not open a database file: {exc}") from None
    return cfg
