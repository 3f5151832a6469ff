"""The node bed's only links between this machine's loopback and the node's network namespace.

`python -m testbed.forward CONFIG` (started by the node bed) runs in the host's namespaces
and creates each socket in the namespace it belongs to (a socket keeps the namespace it was
created in), so nothing listens outside loopback and no route or NAT leaves the node:

- `listen_in_node`: a listener inside the node namespace whose connections go to a port on
  the host's 127.0.0.1 (the API server for kubelet, kube-proxy and pods; PostgreSQL for
  worker pods);
- `connect_proxy`: an HTTP CONNECT proxy on a unix socket that opens its connections inside
  the node namespace. The API server reaches kubelet, pods and Services through it (its
  egress selector's `cluster` connection), as it would through konnectivity.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["in_netns", "main"]

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(netns_fd: int) -> Iterator[None]:
    """Sockets created inside this block belong to the namespace behind netns_fd.

    setns changes the calling thread only; the forwarder is single-threaded.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(netns_fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    try:
        await asyncio.gather(_pump(a[0], b[1]), _pump(b[0], a[1]))
    finally:
        for w in (a[1], b[1]):
            w.close()


async def _connect(host: str, port: int, netns_fd: int | None) -> socket.socket:
    loop = asyncio.get_running_loop()
    if netns_fd is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    else:
        with in_netns(netns_fd):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout=10)
    except BaseException:
        sock.close()
        raise
    return sock


async def _listen_in_node(netns_fd: int, listen: str, target: str) -> asyncio.Server:
    host, _, port = listen.rpartition(":")
    t_host, _, t_port = target.rpartition(":")
    with in_netns(netns_fd):
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, int(port)))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = await _connect(t_host, int(t_port), None)
        except (OSError, TimeoutError):
            writer.close()
            return
        up = await asyncio.open_connection(sock=sock)
        await _splice((reader, writer), up)

    return await asyncio.start_server(handle, sock=lsock)


async def _connect_proxy(netns_fd: int, path: str) -> asyncio.Server:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            host, _, port = target.rpartition(":")
            if method != "CONNECT" or not port.isdigit():
                raise ValueError(f"not a CONNECT request: {method} {target}")
            sock = await _connect(host.strip("[]"), int(port), netns_fd)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as err:
            with contextlib.suppress(OSError):
                writer.write(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{err}\n".encode())
                await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        down = await asyncio.open_connection(sock=sock)
        await _splice((reader, writer), down)

    server = await asyncio.start_unix_server(handle, path=path)
    os.chmod(path, 0o600)
    return server


async def _serve(config: dict[str, object]) -> None:
    netns_fd = os.open(str(config["netns"]), os.O_RDONLY)
    servers: list[asyncio.Server] = []
    for route in config.get("listen_in_node", []):  # type: ignore[attr-defined]
        servers.append(await _listen_in_node(netns_fd, route["listen"], route["target"]))
    if config.get("connect_proxy"):
        servers.append(await _connect_proxy(netns_fd, str(config["connect_proxy"])))
    Path(str(config["ready_file"])).write_text("ready\n")
    print(f"forwarding: {json.dumps(config)}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.forward")
    parser.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    asyncio.run(_serve(json.loads(args.config.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
