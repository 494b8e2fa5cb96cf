"""A PostgreSQL client in one page, on pgwire.Frontend and a blocking socket.

    python examples/simple_client.py --host 127.0.0.1 --port 5432 --user postgres \
        "select 1 as one" "select 2 as two"

Connects with trust authentication, runs each argument as a simple query and
prints the rows, then terminates. The socket code is the caller's; the
Frontend only turns bytes into events and messages into bytes.
"""

from __future__ import annotations

import argparse
import socket
import sys

import pgwire


class SimpleClient:
    """A blocking connection: ``query(sql)`` returns (column names, rows)."""

    def __init__(self, host: str, port: int, user: str, database: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.frontend = pgwire.Frontend()
        startup = pgwire.StartupMessage.from_dict({"user": user, "database": database})
        for event in self._exchange(startup):
            if isinstance(event, pgwire.ErrorResponse):
                raise ConnectionError(f"{event.code}: {event.message}")
            if isinstance(event, pgwire.Authentication) and not isinstance(
                event, pgwire.AuthenticationOk
            ):
                raise ConnectionError(f"{type(event).__name__} is not supported by this example")

    def _exchange(self, message: pgwire.Message) -> list[object]:
        self.sock.sendall(self.frontend.send(message))
        events: list[object] = []
        while True:
            event = self.frontend.next_event()
            if event is pgwire.NEED_DATA:
                self.frontend.receive_data(self.sock.recv(65536))
                continue
            events.append(event)
            if isinstance(event, (pgwire.ReadyForQuery, pgwire.ConnectionClosed)):
                return events
            if isinstance(event, pgwire.Authentication) and not isinstance(
                event, pgwire.AuthenticationOk
            ):
                return events

    def query(self, sql: str) -> tuple[list[str], list[tuple[str | None, ...]]]:
        """Run one simple query; raise RuntimeError with the server's error."""
        columns: list[str] = []
        rows: list[tuple[str | None, ...]] = []
        error: pgwire.ErrorResponse | None = None
        for event in self._exchange(pgwire.Query(query=sql)):
            if isinstance(event, pgwire.RowDescription):
                columns = [field.name for field in event.fields]
            elif isinstance(event, pgwire.DataRow):
                rows.append(tuple(
                    None if v is None else v.decode(self.frontend.encoding) for v in event.values
                ))
            elif isinstance(event, pgwire.ErrorResponse):
                error = event
        if error is not None:
            raise RuntimeError(f"{error.severity} {error.code}: {error.message}")
        return columns, rows

    def close(self) -> None:
        """Send Terminate and close the socket."""
        try:
            self.sock.sendall(self.frontend.send(pgwire.Terminate()))
        finally:
            self.sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--database", default="postgres")
    parser.add_argument("queries", nargs="+")
    args = parser.parse_args(argv)
    client = SimpleClient(args.host, args.port, args.user, args.database)
    status = 0
    try:
        for sql in args.queries:
            try:
                columns, rows = client.query(sql)
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                status = 1
                continue
            print(" | ".join(columns))
            for row in rows:
                print(" | ".join("NULL" if v is None else v for v in row))
    finally:
        client.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
