"""A PostgreSQL server in one page: pgwire.Backend on plain sockets, answering ``select 1``.

``python examples/fake_server.py --port 5433``, then ``psql -h 127.0.0.1 -p 5433 -U demo``.
The Backend does the protocol (framing, limits, message order); this file moves bytes,
one thread per client, and picks the answers. The complete in-memory server (a table,
the extended protocol, transactions) is pgwire/demo_server.py, run by ``pgwire demo``.
"""

import argparse
import socket
import threading

import pgwire as pw

ONE = (pw.RowDescription(fields=(pw.FieldDescription(name="?column?", data_type_oid=23),)),
       pw.DataRow(values=(b"1",)), pw.CommandComplete(tag="SELECT 1"))
NOT_ONE = (pw.ErrorResponse(severity="ERROR", code="0A000", message="I only know select 1"),)
SETTINGS = {"server_version": "15.0", "server_encoding": "UTF8", "client_encoding": "UTF8",
            "DateStyle": "ISO, MDY", "integer_datetimes": "on", "standard_conforming_strings": "on"}


def answer(backend: pw.Backend, event: object) -> list[pw.Message]:
    if isinstance(event, pw.SSLRequest):
        return [pw.SSLResponse(accepted=False)]  # no TLS in this sketch: 'N'
    if isinstance(event, pw.StartupMessage):  # trust everybody
        first = [backend.protocol_negotiation] if backend.protocol_negotiation else []
        status = [pw.ParameterStatus(name=k, value=v) for k, v in SETTINGS.items()]
        key = pw.BackendKeyData(process_id=1, secret_key=b"demo")
        return [*first, pw.AuthenticationOk(), *status, key, pw.ReadyForQuery()]
    if isinstance(event, (pw.Query, pw.Sync)):  # an extended query gets the error at Sync
        is_one = isinstance(event, pw.Query) and event.query.strip("; \t\n").lower() == "select 1"
        return [*(ONE if is_one else NOT_ONE), pw.ReadyForQuery()]
    return []  # Parse, Bind...; Terminate or CancelRequest: the loop below sees the phase


def serve_client(sock: socket.socket) -> None:
    backend = pw.Backend()
    with sock:
        while backend.phase not in (pw.Phase.CLOSED, pw.Phase.CANCEL):
            backend.receive_data(sock.recv(65536))  # b"" means the client closed
            while (event := backend.next_event()) is not pw.NEED_DATA:
                if isinstance(event, pw.ConnectionClosed):
                    return
                sock.sendall(b"".join(backend.send(m) for m in answer(backend, event)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    listener = socket.create_server((args.host, args.port))
    host, port = listener.getsockname()[:2]
    print(f"listening on {host}:{port}\ntry: psql -h {host} -p {port} -U demo", flush=True)
    while True:
        threading.Thread(target=serve_client, args=(listener.accept()[0],), daemon=True).start()


if __name__ == "__main__":
    main()
