#!/usr/bin/env python3
"""Exits 0 once the Kafka broker at HOST:PORT answers a Metadata request listing at least one
broker (registered with the controller and unfenced), 1 otherwise. An open port is not enough:
a KRaft broker listens before it has caught up with the metadata log and can serve clients.

Usage: ready.py HOST:PORT
"""
import socket
import struct
import sys


def metadata_brokers(host, port):
    # Metadata v4 (Kafka 4 removed v0-v3): header v1, all topics (null array), no auto-create.
    client_id = b"eventflow-ready"
    body = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id + struct.pack(">i?", -1, False)
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.settimeout(5)
        conn.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", read(conn, 4))[0]
        response = read(conn, size)
    # correlation id, throttle time, then the broker array's length.
    _correlation, _throttle, brokers = struct.unpack(">iii", response[:12])
    return brokers


def read(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    try:
        brokers = metadata_brokers(host, int(port))
    except (OSError, ConnectionError, struct.error):
        return 1
    return 0 if brokers > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
