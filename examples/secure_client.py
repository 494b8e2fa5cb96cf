"""Log in with TLS and SCRAM through pgwire.client.ClientConnection, then query.

    python examples/secure_client.py --host localhost --port 5432 --user app \
        --password secret --sslrootcert ca.pem "select current_user"

The socket loop is all this program does: ClientConnection negotiates TLS
(sslmode=verify-full, channel_binding=require by default), answers the
server's authentication requests, and refuses any downgrade.
"""

from __future__ import annotations

import argparse
import socket
import sys

import pgwire
from pgwire.client import ClientConnection


def run(conn: ClientConnection, sock: socket.socket) -> list[object]:
    """Events up to the next ReadyForQuery, writing what the connection queues."""
    events: list[object] = []
    while True:
        event = conn.next_event()
        outgoing = conn.data_to_send()
        if outgoing:
            sock.sendall(outgoing)
        if event is pgwire.NEED_DATA:
            conn.receive_data(sock.recv(65536))
            continue
        events.append(event)
        if isinstance(event, (pgwire.ReadyForQuery, pgwire.ConnectionClosed)):
            return events
        if isinstance(event, pgwire.ErrorResponse) and event.severity == "FATAL":
            raise SystemExit(f"{event.code}: {event.message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--database", default="postgres")
    parser.add_argument("--sslrootcert", required=True)
    parser.add_argument("--channel-binding", default="require",
                        choices=["disable", "prefer", "require"])
    parser.add_argument("query")
    args = parser.parse_args(argv)
    conn = ClientConnection(
        user=args.user, database=args.database, password=args.password,
        sslmode="verify-full", sslrootcert=args.sslrootcert, server_hostname=args.host,
        channel_binding=args.channel_binding,
    )
    with socket.create_connection((args.host, args.port), timeout=10) as sock:
        conn.start()
        sock.sendall(conn.data_to_send())
        run(conn, sock)
        info = conn.tls_info
        assert info is not None
        print(f"logged in with {conn.authentication_method} over {info.version} ({info.cipher})")
        conn.send(pgwire.Query(query=args.query))
        for event in run(conn, sock):
            if isinstance(event, pgwire.DataRow):
                print(" | ".join("NULL" if v is None else v.decode() for v in event.values))
            elif isinstance(event, pgwire.ErrorResponse):
                print(f"{event.code}: {event.message}", file=sys.stderr)
                return 1
        conn.send(pgwire.Terminate())
        sock.sendall(conn.data_to_send())
    return 0


if __name__ == "__main__":
    sys.exit(main())
