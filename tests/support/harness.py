"""Process harness for tests and benchmarks: ``edgeway lab up`` as a process, SIPp
runs against it, and the CPU time of the node processes.

Every process started here is stopped by the helper that started it, by its PID
(its whole session, SIGINT first, SIGKILL after a grace period).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from edgeway._ascii import ascii_uint

#: SIPp scenarios shipped with the lab (UAC with pcap RTP, UAS with RTP echo, ...).
SIPP_DIR = Path(__file__).resolve().parent / "sipp"
PCAP = Path("/usr/share/sip-tester/g711a.pcap")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT, grace_s: float = 10.0) -> None:
    """Stop ``proc`` (its whole session) with ``sig``, then SIGKILL after ``grace_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class LabUp:
    """``edgeway lab up`` in ``workdir``: ``start()`` waits until it prints that it is up.
    ``args`` are added to its command line (e.g. ``["--call-control-transport", "tls"]``)."""

    def __init__(self, workdir: Path, args: list[str] | tuple[str, ...] = ()):
        self.workdir = workdir
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.out = workdir.parent / f"{workdir.name}.out"

    def start(self, timeout_s: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeway", "lab", "up", "--workdir", str(self.workdir), *self.args],
            stdout=open(self.out, "w"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "COLUMNS": "120"},
        )
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if "Press Ctrl-C" in self.out.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        text = self.out.read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"edgeway lab up did not come up:\n{text[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def node_pids(self) -> dict[str, int]:
        """Node name → PID, from the ``<node> started on … (pid N)`` lines lab up prints."""
        import re

        return {m.group(1): int(m.group(2)) for m in re.finditer(r"(edge|core) started on \S+ \(pid (\d+)\)", self.out.read_text(errors="replace"))}

    def events(self, node: str) -> list[dict]:
        path = self.workdir / f"{node}.events.jsonl"
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out


@dataclass
class SippResult:
    returncode: int
    successful: int
    failed: int
    call_id_marker: str
    log: str


def sipp_available() -> bool:
    return shutil.which("sipp") is not None and PCAP.exists()


def start_sipp(args: list[str], workdir: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["sipp", *args, "-nostdin", "-trace_err", "-trace_stat", "-stf", str(workdir / f"{name}.csv"), "-fd", "1"],
        cwd=workdir, stdout=open(workdir / f"{name}.out", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def sipp_result(proc: subprocess.Popen, workdir: Path, name: str, timeout_s: float) -> SippResult:
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        stop_process(proc, signal.SIGTERM, 5)
        rc = -1
    ok = failed = 0
    path = workdir / f"{name}.csv"
    if path.exists():
        rows = list(csv.reader(path.read_text().splitlines(), delimiter=";"))
        if len(rows) >= 2:
            head, last = rows[0], rows[-1]
            ok = int(last[head.index("SuccessfulCall(C)")])
            failed = int(last[head.index("FailedCall(C)")])
    log = (workdir / f"{name}.out").read_text(errors="replace")[-2000:]
    for err in workdir.glob("*_errors.log"):
        log += "\n" + err.read_text(errors="replace")[-2000:]
    return SippResult(rc, ok, failed, f"-{proc.pid}@", log)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- baresip as a headless test peer -----------------------------------------------------------

#: Where Debian's baresip keeps its modules.
BARESIP_MODULES = Path("/usr/lib/baresip/modules")


def baresip_available() -> bool:
    """Whether Debian's ``baresip`` and the modules :class:`Baresip` loads are installed."""
    return shutil.which("baresip") is not None and all(
        (BARESIP_MODULES / f"{m}.so").exists() for m in Baresip.MODULES + Baresip.APP_MODULES
    )


class Baresip:
    """baresip (1.0, Debian) as a headless SIP UA in its own config directory, driven
    over its ``ctrl_tcp`` JSON/netstring interface.

    No sound card is needed: the microphone is ``ausine`` (a 48 kHz stereo sine,
    resampled by baresip) and the speaker ``aubridge`` (an in-process bridge whose
    unconnected device discards what it is given). No ``stdio`` UI (it needs a
    terminal). :meth:`write_config` writes ``config``, ``accounts`` and an empty
    ``contacts`` into ``confdir``; :meth:`start` runs ``baresip -f confdir -t
    max_seconds`` in its own session (``-t`` makes baresip quit by itself even if
    this process dies; ``args`` are added, e.g. ``["-s"]`` for a SIP trace or
    ``["-v"]``), output in ``confdir/baresip.out``; :meth:`command` sends a long
    command (``dial``, ``hangup``, ``callstat``, …) and returns the response;
    :meth:`wait_event` waits for a ``ua`` event (``CALL_ESTABLISHED``, …);
    :meth:`call_summary` reads the per-call packet table baresip prints when a call
    ends; :meth:`stop` quits it (SIGINT, then SIGKILL) by PID.

    baresip 1.0 / libre 1.1 behaviour to know about:

    * ``sip_cafile`` is loaded ("ua: adding SIP CA") but the server certificate is
      *not enforced*: libre accepts any certificate, and baresip 1.0 has no
      ``sip_verify_server`` setting. Check the peer's certificate separately.
    * ``net_interface <ip>`` puts ``ip`` in SDP, but the RTP/RTCP sockets are bound
      to the wildcard address (ports from ``rtp_ports``) and TLS/TCP client
      connections are not bound either, so on loopback packets leave from
      127.0.0.1. ``sip_listen`` sockets (TLS on port + 1) are bound to ``ip``.
    * With SRTP it still sends two RTCP packets per call in clear: an RTCP APP
      "PING" at media start (besides its SRTCP copy) and the RTCP BYE + SDES at
      hangup.
    """

    MODULES = ("g711", "ausine", "aubridge", "srtp")
    APP_MODULES = ("menu", "ctrl_tcp")

    def __init__(self, confdir: Path, *, account: str, listen: str, ca_file: Path | None = None,
                 ctrl: tuple[str, int] | None = None, rtp_ports: tuple[int, int] = (61000, 61099),
                 max_seconds: int = 60, extra_config: dict[str, str] | None = None,
                 args: list[str] | None = None):
        self.confdir = Path(confdir)
        self.account = account
        self.listen = listen
        self.ip = listen.rsplit(":", 1)[0]
        self.ca_file = ca_file
        self.ctrl = ctrl or (self.ip, 4444)
        self.rtp_ports = rtp_ports
        self.max_seconds = max_seconds
        self.extra_config = extra_config or {}
        self.args = list(args or [])
        self.proc: subprocess.Popen | None = None
        self.out = self.confdir / "baresip.out"
        self.events: list[dict] = []
        self._responses: list[dict] = []
        self._sock = None
        self._buf = b""
        self._token = 0

    def config_text(self) -> str:
        lines = {
            "poll_method": "epoll",
            "sip_listen": self.listen,
            **({"sip_cafile": str(self.ca_file)} if self.ca_file else {}),
            "call_local_timeout": "20",
            "call_max_calls": "2",
            "audio_player": "aubridge,edgeway-null",
            "audio_alert": "aubridge,edgeway-null",
            "audio_source": "ausine,440",
            "ausrc_srate": "48000",
            "ausrc_channels": "2",
            "audio_buffer": "20-160",
            "rtp_ports": f"{self.rtp_ports[0]}-{self.rtp_ports[1]}",
            "rtcp_mux": "no",
            "jitter_buffer_delay": "1-10",
            "rtp_stats": "yes",
            # RTP/SDP on this address, not the host's default interface.
            "net_interface": self.ip,
            "module_path": str(BARESIP_MODULES),
            "ctrl_tcp_listen": f"{self.ctrl[0]}:{self.ctrl[1]}",
            **self.extra_config,
        }
        out = [f"{k}\t\t{v}" for k, v in lines.items()]
        out += [f"module\t\t{m}.so" for m in self.MODULES]
        out += ["module_tmp\t\tuuid.so", "module_tmp\t\taccount.so"]
        out += [f"module_app\t\t{m}.so" for m in self.APP_MODULES]
        return "\n".join(out) + "\n"

    def write_config(self) -> None:
        self.confdir.mkdir(parents=True, exist_ok=True)
        (self.confdir / "config").write_text(self.config_text())
        (self.confdir / "accounts").write_text(self.account + "\n")
        (self.confdir / "contacts").write_text("")

    def start(self, timeout_s: float = 10.0) -> None:
        """Start baresip and connect to its ctrl_tcp port (raises RuntimeError, having
        stopped it, when it does not come up)."""
        import socket

        self.write_config()
        with open(self.out, "w") as out:
            self.proc = subprocess.Popen(
                ["baresip", "-f", str(self.confdir), "-t", str(self.max_seconds), *self.args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.confdir,
            )
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            if "baresip is ready" in self.log():
                try:
                    self._sock = socket.create_connection(self.ctrl, timeout=1.0)
                    return
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"baresip did not come up:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def _read_messages(self, timeout_s: float) -> None:
        """Read what arrives within ``timeout_s``; complete netstrings go to
        ``events`` (``"event": true``) or to the pending command responses."""
        assert self._sock is not None
        self._sock.settimeout(max(timeout_s, 0.01))
        try:
            data = self._sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return
        if not data:
            raise RuntimeError(f"baresip closed its ctrl_tcp connection:\n{self.log()[-2000:]}")
        self._buf += data
        while True:
            head, sep, rest = self._buf.partition(b":")
            n = ascii_uint(head, 2**31) if sep else None
            if n is None:
                return
            if len(rest) < n + 1:
                return
            msg = json.loads(rest[:n].decode("utf-8", "replace"))
            self._buf = rest[n + 1:]
            if msg.get("event"):
                self.events.append(msg)
            else:
                self._responses.append(msg)

    def command(self, command: str, params: str | None = None, timeout_s: float = 5.0) -> dict:
        """Run a long command (e.g. ``dial <uri>``, ``hangup``) and return its response."""
        if self._sock is None:
            raise RuntimeError("baresip is not running")
        self._responses = []
        self._token += 1
        token = str(self._token)
        msg = {"command": command, "token": token, **({"params": params} if params is not None else {})}
        raw = json.dumps(msg).encode()
        self._sock.sendall(str(len(raw)).encode() + b":" + raw + b",")
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for r in self._responses:
                if r.get("token") == token:
                    return r
            self._read_messages(end - time.monotonic())
        raise TimeoutError(f"baresip: no response to {command!r}:\n{self.log()[-2000:]}")

    def wait_event(self, types: str | tuple[str, ...], timeout_s: float) -> dict | None:
        """The first ``ua`` event of one of ``types`` seen so far or within ``timeout_s``."""
        want = (types,) if isinstance(types, str) else types
        end = time.monotonic() + timeout_s
        while True:
            for ev in self.events:
                if ev.get("type") in want:
                    return ev
            left = end - time.monotonic()
            if left <= 0 or self._sock is None:
                return None
            self._read_messages(min(left, 0.5))

    def call_summary(self) -> dict[str, dict[str, int]] | None:
        """The last per-call table baresip printed on hangup (``rtp_stats``)::

            audio           Transmit:     Receive:
            packets:            151          150
            errors:               0            0

        as ``{"audio": {"tx_packets", "rx_packets", "tx_errors", "rx_errors"}}``, or
        None when there is none. Received packets are those that passed SRTP
        authentication (the srtp module drops the others before the stream sees them).
        """
        import re

        found = None
        for m in re.finditer(r"^(\w+)\s+Transmit:\s+Receive:\s*\n\s*packets:\s+(\d+)\s+(\d+)\s*\n"
                             r"(?:.*\n)*?\s*errors:\s+(-?\d+)\s+(-?\d+)", self.log(), re.MULTILINE):
            found = {m.group(1): {"tx_packets": int(m.group(2)), "rx_packets": int(m.group(3)),
                                  "tx_errors": int(m.group(4)), "rx_errors": int(m.group(5))}}
        return found

    def stop(self, grace_s: float = 5.0) -> None:
        """Close the control connection and stop baresip (its session) by PID."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT, grace_s)


# ---- Kamailio (the cloud calling service's SBC stand-in) -----------------------------------

#: Kamailio configurations shipped with the lab (templates with ``@@NAME@@`` tokens).
KAMAILIO_DIR = Path(__file__).resolve().parent / "kamailio"


def kamailio_module_dir() -> Path | None:
    """Kamailio's module directory (the one holding ``tls.so``), or None."""
    candidates = [Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")]
    candidates += sorted(Path("/usr/lib").glob("*/kamailio/modules"))
    candidates += [Path("/usr/lib/kamailio/modules"), Path("/usr/lib64/kamailio/modules"),
                   Path("/usr/local/lib/kamailio/modules"), Path("/usr/local/lib64/kamailio/modules")]
    for d in candidates:
        if (d / "tls.so").exists() and (d / "tm.so").exists():
            return d
    return None


def kamailio_available() -> bool:
    """True when the ``kamailio`` binary and its TLS module are installed."""
    return shutil.which("kamailio") is not None and kamailio_module_dir() is not None


def _listening(proto: str, ip: str, port: int) -> bool:
    """True when a socket is bound (UDP) / listening (TCP) on ip:port (IPv4, /proc/net)."""
    want = f"{int.from_bytes(bytes(int(x) for x in ip.split('.')), 'little'):08X}:{port:04X}"
    try:
        lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        f = line.split()
        if len(f) > 3 and f[1] == want and (proto == "udp" or f[3] == "0A"):
            return True
    return False


class Kamailio:
    """Kamailio in the foreground with a templated configuration, for interop tests.

    ``workdir`` receives the rendered configuration (``<name>.cfg``, ``<name>-tls.cfg``),
    the runtime directory, the PID file and the log (``<name>.log``). ``values`` fills
    the ``@@NAME@@`` tokens of ``cfg`` and ``tls_cfg``; every token must be given.
    ``listen`` lists the ``(proto, ip, port)`` sockets ("udp"/"tcp") that must be
    bound before :meth:`start` returns. Started with ``-DD -E`` (no daemon, log on
    stderr), its own ``-Y`` runtime dir and ``-P`` PID file, ``-L`` module path;
    stopped by PID (its process group: SIGTERM, SIGKILL after a grace period).
    """

    def __init__(self, workdir: Path, values: dict[str, str], *, name: str = "kamailio",
                 cfg: Path = KAMAILIO_DIR / "cloud-sbc.cfg", tls_cfg: Path | None = KAMAILIO_DIR / "tls.cfg",
                 listen: list[tuple[str, str, int]] = (), shm_mb: int = 64, pkg_mb: int = 8):
        self.workdir = Path(workdir)
        self.name = name
        self.values = dict(values)
        self.template = cfg
        self.tls_template = tls_cfg
        self.listen = list(listen)
        self.shm_mb, self.pkg_mb = shm_mb, pkg_mb
        self.cfg = self.workdir / f"{name}.cfg"
        self.tls_cfg = self.workdir / f"{name}-tls.cfg"
        self.rundir = self.workdir / f"{name}-run"
        self.pidfile = self.rundir / f"{name}.pid"
        self.log = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._logf = None

    @staticmethod
    def _render(text: str, values: dict[str, str], source: Path) -> str:
        import re

        out = re.sub(r"@@([A-Z0-9_]+)@@", lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), text)
        left = sorted(set(re.findall(r"@@([A-Z0-9_]+)@@", out)))
        if left:
            raise ValueError(f"{source}: no value for {', '.join(left)}")
        return out

    def render(self) -> Path:
        """Write the configuration (and tls.cfg) into ``workdir``; return the cfg path."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rundir.mkdir(parents=True, exist_ok=True)
        values = dict(self.values)
        if self.tls_template is not None:
            values.setdefault("TLS_CFG", str(self.tls_cfg))
            self.tls_cfg.write_text(self._render(self.tls_template.read_text(), values, self.tls_template))
        self.cfg.write_text(self._render(self.template.read_text(), values, self.template))
        return self.cfg

    def command(self, *extra: str) -> list[str]:
        mpath = kamailio_module_dir()
        if mpath is None:
            raise RuntimeError("kamailio modules (with tls.so) not found")
        return ["kamailio", "-f", str(self.cfg), "-L", str(mpath), "-Y", str(self.rundir), "-P", str(self.pidfile),
                "-m", str(self.shm_mb), "-M", str(self.pkg_mb), *extra]

    def check(self) -> None:
        """``kamailio -c``: raise RuntimeError with its output when the config is invalid."""
        self.render()
        res = subprocess.run(self.command("-c"), capture_output=True, text=True, timeout=30, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"kamailio -c {self.cfg} failed:\n{(res.stdout + res.stderr)[-3000:]}")

    def start(self, timeout_s: float = 15.0) -> None:
        self.render()
        self._logf = open(self.log, "w")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            self.command("-DD", "-E"), cwd=self.workdir, stdin=subprocess.DEVNULL,
            stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True,
        )
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            if all(_listening(p, ip, port) for p, ip, port in self.listen) and self.pidfile.exists():
                time.sleep(0.3)  # let the workers finish their start-up
                return
            time.sleep(0.1)
        text = self.log_text()
        self.stop()
        raise RuntimeError(f"kamailio did not come up:\n{text[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 10.0)
        if self._logf is not None:
            self._logf.close()
            self._logf = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# ---- dialog interop: SIPp message traces, the kernel's TCP table, canary listeners ----------

#: The separator line SIPp's ``-trace_msg`` log puts before every message, with its local time.
_SIPP_TRACE_SEP = re.compile(r"^-{10,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)\s*$", re.MULTILINE)
_SIPP_TRACE_HEAD = re.compile(r"^(UDP|TCP|TLS|SCTP) message (sent|received)\b")


@dataclass
class SippMessage:
    """One message of a SIPp ``-trace_msg`` log: when (epoch seconds, from SIPp's local-time
    stamp), ``direction`` ("sent"/"received"), ``transport`` ("UDP"/"TCP"/…) and the text
    (CRLF normalised to LF; the body cut to its Content-Length)."""

    ts: float
    direction: str
    transport: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        """The request method, or the CSeq method of a response."""
        return self.first_line.split(" ", 1)[0] if self.is_request else self.cseq[1]

    @property
    def status(self) -> int | None:
        return None if self.is_request else int(self.first_line.split()[1])

    @property
    def header_lines(self) -> list[tuple[str, str]]:
        """``(name, value)`` of every header line, in order (folded lines joined)."""
        out: list[tuple[str, str]] = []
        for line in self.text.split("\n\n", 1)[0].split("\n")[1:]:
            if line[:1] in (" ", "\t") and out:
                out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
            elif ":" in line:
                name, _, value = line.partition(":")
                out.append((name.strip(), value.strip()))
        return out

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        for n, v in self.header_lines:
            if n.lower() == name.lower():
                return v
        return None

    @property
    def call_id(self) -> str:
        return self.header("Call-ID") or self.header("i") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        num, _, method = (self.header("CSeq") or "0 ?").partition(" ")
        return int(num), method.strip()

    @property
    def body(self) -> str:
        return self.text.split("\n\n", 1)[1] if "\n\n" in self.text else ""


def sipp_messages(path: Path) -> list[SippMessage]:
    """Parse a SIPp ``-trace_msg`` log (``-message_file``) into :class:`SippMessage` s, in order.

    Lines SIPp writes there that are no message (e.g. "Problem EAGAIN on socket …") are
    skipped; a body is cut to the message's Content-Length."""
    from datetime import datetime

    text = Path(path).read_text(errors="replace").replace("\r\n", "\n") if Path(path).exists() else ""
    marks = list(_SIPP_TRACE_SEP.finditer(text))
    out: list[SippMessage] = []
    for i, m in enumerate(marks):
        block = text[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(text)].lstrip("\n")
        head, _, rest = block.partition("\n")
        h = _SIPP_TRACE_HEAD.match(head)
        if h is None:
            continue
        msg_text = rest.lstrip("\n")
        headers, sep, body = msg_text.partition("\n\n")
        length = None
        for line in headers.split("\n"):
            name, colon, value = line.partition(":")
            n = ascii_uint(value.strip(), 2**31) if colon and name.strip().lower() in ("content-length", "l") else None
            if n is not None:
                length = n
        if length is not None:
            body = body.replace("\n", "\r\n")[:length].replace("\r\n", "\n")
        else:
            body = body.rstrip("\n")
        ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f" if "." in m.group(1) else "%Y-%m-%d %H:%M:%S").timestamp()
        out.append(SippMessage(ts, h.group(2), h.group(1), headers + (sep + body if sep else "")))
    return out


@dataclass(frozen=True)
class TcpSocket:
    """One row of the kernel's TCP table: ``local`` and ``remote`` as ``(ip, port)``,
    ``state`` as its name (``ESTABLISHED``, ``LISTEN``, ``TIME_WAIT``, …)."""

    local: tuple[str, int]
    remote: tuple[str, int]
    state: str


_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
               "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
               "0B": "CLOSING"}


def tcp_sockets() -> list[TcpSocket]:
    """The IPv4 TCP sockets of this network namespace now (``/proc/net/tcp``), TIME_WAIT included."""

    def addr(s: str) -> tuple[str, int]:
        ip, port = s.split(":")
        return ".".join(str(b) for b in bytes.fromhex(ip)[::-1]), int(port, 16)

    out = []
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        if len(f) > 3:
            out.append(TcpSocket(addr(f[1]), addr(f[2]), _TCP_STATES.get(f[3], f[3])))
    return out


class TcpWatch:
    """Samples the kernel's TCP table (:func:`tcp_sockets`) every ``interval_s`` in a thread
    and remembers every connection and listening socket it saw, so a test can ask afterwards
    who connected to whom. Connections leave TIME_WAIT rows for a minute after they close, so
    even one shorter than the interval is usually seen; :meth:`stop` takes a last sample.

    Connections already in the table when the watch starts (TIME_WAIT rows of earlier
    tests included) are not counted. A connection's *initiator* is the end whose address is
    not a listening socket seen (a wildcard listener counts for every address):
    :meth:`opened` lists ``(client, server)`` pairs, filtered by the client's and the
    server's IP."""

    def __init__(self, interval_s: float = 0.02):
        import threading

        self.interval_s = interval_s
        self.listeners: set[tuple[str, int]] = set()
        self.pairs: dict[frozenset, tuple[tuple[str, int], tuple[str, int]]] = {}
        self.baseline: set[frozenset] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-watch", daemon=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.baseline = {frozenset((s.local, s.remote)) for s in tcp_sockets() if s.state != "LISTEN"}
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        for s in tcp_sockets():
            if s.state == "LISTEN":
                self.listeners.add(s.local)
            elif s.remote[1] != 0 and frozenset((s.local, s.remote)) not in self.baseline:
                self.pairs.setdefault(frozenset((s.local, s.remote)), (s.local, s.remote))

    def _is_listener(self, end: tuple[str, int]) -> bool:
        return end in self.listeners or ("0.0.0.0", end[1]) in self.listeners

    def opened(self, client_ip: str | None = None, server_ips: tuple[str, ...] | None = None) -> list[tuple[tuple[str, int], tuple[str, int]]]:
        """``(client, server)`` of every connection seen whose client (initiator) is at
        ``client_ip`` and server in ``server_ips`` (None: any)."""
        out = []
        for a, b in self.pairs.values():
            if self._is_listener(b) and not self._is_listener(a):
                client, server = a, b
            elif self._is_listener(a) and not self._is_listener(b):
                client, server = b, a
            else:  # both or neither listen: the lower port is taken to be the server's
                client, server = (a, b) if a[1] > b[1] else (b, a)
            if (client_ip is None or client[0] == client_ip) and (server_ips is None or server[0] in server_ips):
                out.append((client, server))
        return sorted(set(out))


class Canary:
    """A TCP listener and a UDP socket on ``ip:port`` (either may be left out) that record
    who reached them and the first bytes they sent, in a thread, without answering.

    A TCP connection is closed as soon as its first data arrived (or after ``hold_s``), so
    a sender waiting for an answer fails fast. ``hits`` lists ``(proto, "ip:port", data)``."""

    def __init__(self, ip: str, port: int, *, tcp: bool = True, udp: bool = True, hold_s: float = 0.5):
        import socket
        import threading

        self.ip, self.port, self.hold_s = ip, port, hold_s
        self.hits: list[tuple[str, str, bytes]] = []
        self._socks = []
        if tcp:
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind((ip, port))
            t.listen(16)
            self._socks.append(("tcp", t))
        if udp:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind((ip, port))
            self._socks.append(("udp", u))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"canary-{ip}:{port}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        conns: dict[object, tuple[str, float]] = {}
        while not self._stop.is_set():
            socks = [s for _, s in self._socks] + list(conns)
            ready, _, _ = select.select(socks, [], [], 0.05)
            for s in ready:
                kind = next((k for k, x in self._socks if x is s), None)
                if kind == "tcp":
                    c, peer = s.accept()
                    conns[c] = (f"{peer[0]}:{peer[1]}", time.monotonic())
                elif kind == "udp":
                    data, peer = s.recvfrom(65536)
                    self.hits.append(("udp", f"{peer[0]}:{peer[1]}", data))
                else:
                    peer, _ = conns.pop(s)
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    self.hits.append(("tcp", peer, data))
                    s.close()
            now = time.monotonic()
            for c, (peer, t0) in list(conns.items()):
                if now - t0 > self.hold_s:
                    self.hits.append(("tcp", peer, b""))
                    del conns[c]
                    c.close()
        for c in conns:
            c.close()

    def summary(self) -> str:
        return "; ".join(f"{p} from {peer}: {data.decode(errors='replace').splitlines()[0] if data else '(connected, sent nothing)'}"
                         for p, peer, data in self.hits)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for _, s in self._socks:
            s.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def free_port(ip: str) -> int:
    """A port on ``ip`` that is free for TCP and UDP right now."""
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((ip, 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind((ip, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {ip}")


def _wait_socket(proto: str, ip: str, port: int, timeout_s: float, proc: subprocess.Popen | None) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if _listening(proto, ip, port):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return _listening(proto, ip, port)


def wait_tcp_listening(ip: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
    """Wait (bounded) until a TCP socket listens on ``ip:port``; False on timeout or when
    ``proc`` exited first."""
    return _wait_socket("tcp", ip, port, timeout_s, proc)


def wait_udp_bound(ip: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
    """Wait (bounded) until a UDP socket is bound on ``ip:port``; False on timeout or when
    ``proc`` exited first."""
    return _wait_socket("udp", ip, port, timeout_s, proc)
