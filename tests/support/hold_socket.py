#!/usr/bin/env python3
"""Plays systemd's socket activation for the end-to-end tests: binds the router's port once,
keeps it for its whole life, and runs the server command with the socket as fd 3 (LISTEN_PID,
LISTEN_FDS=1, LISTEN_FDNAMES=http). A line `restart` on stdin stops the server with SIGTERM,
waits for it, and starts it again on the same socket, as `systemctl restart` does with a
.socket unit. The server dies with this process (PR_SET_PDEATHSIG).

    hold_socket.py HOST:PORT -- COMMAND...
"""
import ctypes
import os
import signal
import socket
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    command = sys.argv[sys.argv.index("--") + 1:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(1024)
    if listener.fileno() != 3:
        os.dup2(listener.fileno(), 3)
    os.set_inheritable(3, True)
    libc = ctypes.CDLL(None, use_errno=True)

    def in_child():
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.environ["LISTEN_PID"] = str(os.getpid())

    env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="http")
    os.environ.update(env)

    def start():
        return subprocess.Popen(command, pass_fds=(3,), preexec_fn=in_child)

    server = start()

    def stop(*_):
        server.terminate()
        server.wait()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for line in sys.stdin:
        if line.strip() == "restart":
            server.terminate()
            server.wait()
            server = start()
    stop()


if __name__ == "__main__":
    main()
