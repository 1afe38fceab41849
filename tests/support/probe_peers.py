"""Debian peers for the ``edgeway probe`` interop tests: coturn ``turnserver`` as a STUN media
node and ``tinyproxy`` as an HTTP proxy with Basic authentication. Each runs in the foreground
from a config in a tmp dir, loopback only (127.0.32.x), and is stopped by its PID."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port(host: str, kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on ``host`` (best effort)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                u.bind((host, port))
                t.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no free port on {host}")


def _wait_tcp(host: str, port: int, proc: subprocess.Popen, log: Path, seconds: float = 8.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection((host, port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on {host}:{port} after {seconds} s: {log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def turnserver_available() -> bool:
    return shutil.which("turnserver") is not None


def tinyproxy_available() -> bool:
    return shutil.which("tinyproxy") is not None


class Coturn:
    """``turnserver`` on ``host``: STUN/TURN on ``port`` (UDP and TCP) and TLS on ``tls_port``.
    ``udp=False`` runs it with ``--no-udp`` (a node whose UDP is blocked)."""

    def __init__(self, workdir: Path, host: str, *, cert: Path, key: Path, udp: bool = True) -> None:
        self.dir = workdir
        self.host = host
        self.port = free_port(host)
        self.tls_port = free_port(host)
        self.cert, self.key, self.udp = cert, key, udp
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "turnserver.log"

    def start(self) -> "Coturn":
        self.dir.mkdir(parents=True, exist_ok=True)
        alt, alt_tls = free_port(self.host), free_port(self.host)
        args = ["turnserver", "-n", "--no-cli", "--listening-ip", self.host, "--relay-ip", self.host,
                "--listening-port", str(self.port), "--tls-listening-port", str(self.tls_port),
                "--alt-listening-port", str(alt), "--alt-tls-listening-port", str(alt_tls),
                "--cert", str(self.cert), "--pkey", str(self.key), "--no-dtls",
                "--min-port", "49152", "--max-port", "49200",
                "--log-file", "stdout", "--simple-log", "--pidfile", str(self.dir / "turnserver.pid"),
                "--userdb", str(self.dir / "turndb")]
        if not self.udp:
            args.append("--no-udp")
        self.proc = subprocess.Popen(args, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.dir)
        _wait_tcp(self.host, self.tls_port, self.proc, self.log)
        _wait_tcp(self.host, self.port, self.proc, self.log)
        return self

    def stop(self) -> None:
        _stop(self.proc)


class Tinyproxy:
    """``tinyproxy -d`` on ``host``, Basic authentication ``user``/``password``, CONNECT allowed
    only to ``connect_ports``."""

    def __init__(self, workdir: Path, host: str, connect_ports: list[int], user: str = "probe",
                 password: str = "s3cret") -> None:
        self.dir, self.host, self.user, self.password = workdir, host, user, password
        self.port = free_port(host)
        self.connect_ports = connect_ports
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "tinyproxy.stderr"  # no LogFile: in the foreground (-d) it logs to stderr

    @property
    def url(self) -> str:
        return f"http://{self.user}:{self.password}@{self.host}:{self.port}"

    def start(self) -> "Tinyproxy":
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "tinyproxy.conf"
        lines = [f"Port {self.port}", f"Listen {self.host}", "Timeout 30", "MaxClients 20",
                 "Allow 127.0.0.0/8", f"BasicAuth {self.user} {self.password}",
                 f"PidFile \"{self.dir / 'tinyproxy.pid'}\"", "LogLevel Info",
                 "User nobody", "Group nogroup"]
        lines += [f"ConnectPort {p}" for p in self.connect_ports]
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("wb"), stdin=subprocess.DEVNULL,
                                     cwd=self.dir)
        _wait_tcp(self.host, self.port, self.proc, self.log)
        return self

    def stop(self) -> None:
        _stop(self.proc)
