"""A minimal keep-alive HTTP server that answers every GET with one file via sendfile.

It is the ceiling for the blob-pull figure: the same loopback, page cache and client,
with no registry logic in between. Run as ``python -m bench.sendfile_server FILE PORT``.
"""

from __future__ import annotations

import os
import socket
import sys
import threading


def _serve_connection(conn: socket.socket, path: str) -> None:
    size = os.path.getsize(path)
    header = (
        f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    pending = b""
    with conn, open(path, "rb") as source:
        while True:
            while b"\r\n\r\n" not in pending:
                data = conn.recv(65536)
                if not data:
                    return
                pending += data
            _request, _, pending = pending.partition(b"\r\n\r\n")
            conn.sendall(header)
            source.seek(0)
            conn.sendfile(source)


def main() -> None:
    path, port = sys.argv[1], int(sys.argv[2])
    with socket.create_server(("127.0.0.1", port)) as server:
        print("ready", flush=True)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_serve_connection, args=(conn, path), daemon=True).start()


if __name__ == "__main__":
    main()
