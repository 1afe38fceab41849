"""Diagnostic capture (issue 11 item 4; seed 003 §12.2 "Diagnostic logging": start, mark,
reproduce, stop, download): ``edgeway diag start | mark TEXT | stop`` on a running node.

While a capture runs the node writes every SIP message it receives (after TLS decryption)
and sends (before TLS encryption) into ``sip.pcap`` (``dpkt``), each as one UDP datagram
between the real addresses and ports — so tshark/Wireshark decode the TLS legs in clear
(``-d udp.port==5061,sip`` and the like for the non-5060 ports). Marks go into the event log
(``diag mark``) and ``marks.txt``. With ``tcpdump`` it also runs ``tcpdump -w`` on the node's
SIP ports (when tcpdump is installed and allowed). Stop closes everything and packs it,
with the event log written since start, into ``edgeway-diag-<node>-<time>.tar.gz``.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import dpkt

__all__ = ["Capture"]

#: Largest SIP message written whole (bytes); longer ones are cut (an IPv4 datagram's limit).
MAX_PAYLOAD = 65000


def _frame(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An Ethernet frame carrying ``payload`` as UDP from ``src`` to ``dst`` (IPv4 or IPv6)."""
    payload = payload[:MAX_PAYLOAD]
    udp = dpkt.udp.UDP(sport=src[1], dport=dst[1], data=payload)
    udp.ulen = len(udp)
    s_ip, d_ip = ipaddress.ip_address(src[0].strip("[]")), ipaddress.ip_address(dst[0].strip("[]"))
    if s_ip.version == 6 or d_ip.version == 6:
        s_ip6 = s_ip if s_ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{s_ip}")
        d_ip6 = d_ip if d_ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{d_ip}")
        ip = dpkt.ip6.IP6(src=s_ip6.packed, dst=d_ip6.packed, nxt=dpkt.ip.IP_PROTO_UDP, hlim=64, data=udp)
        ip.plen = len(udp)
        eth_type = dpkt.ethernet.ETH_TYPE_IP6
    else:
        ip = dpkt.ip.IP(src=s_ip.packed, dst=d_ip.packed, p=dpkt.ip.IP_PROTO_UDP, ttl=64, data=udp)
        ip.len = len(ip)
        eth_type = dpkt.ethernet.ETH_TYPE_IP
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x02",
                                        type=eth_type, data=ip))


class Capture:
    """One diagnostic capture of node ``node`` into directory ``workdir`` (created).
    ``log_path``: the node's event log file (its lines written after :meth:`start` go into
    the archive); ``tcpdump_ports``: ports for a tcpdump alongside, or None for none."""

    def __init__(self, node: str, workdir: str | os.PathLike, log_path: str | None = None,
                 tcpdump_ports: list[int] | None = None):
        self.node = node
        self.dir = Path(workdir)
        self.log_path = log_path
        self.tcpdump_ports = tcpdump_ports
        self.messages = 0
        self.marks = 0
        self.started = time.time()
        self._pcap_file = None
        self._writer = None
        self._log_offset = 0
        self._tcpdump: subprocess.Popen | None = None
        self.tcpdump_note = ""

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._pcap_file = open(self.dir / "sip.pcap", "wb")  # noqa: SIM115 - closed by stop()
        self._writer = dpkt.pcap.Writer(self._pcap_file, linktype=dpkt.pcap.DLT_EN10MB)
        if self.log_path and os.path.exists(self.log_path):
            self._log_offset = os.path.getsize(self.log_path)
        if self.tcpdump_ports:
            exe = shutil.which("tcpdump")
            if exe is None:
                self.tcpdump_note = "tcpdump is not installed: no packet capture of the wire"
            else:
                expr = " or ".join(f"port {p}" for p in sorted(set(self.tcpdump_ports)))
                self._tcpdump = subprocess.Popen([exe, "-i", "any", "-U", "-w", str(self.dir / "wire.pcap"), expr],
                                                 stdout=subprocess.DEVNULL, stderr=open(self.dir / "tcpdump.log", "w"),
                                                 start_new_session=True)
                self.tcpdump_note = f"tcpdump on {expr}"

    def message(self, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        """One SIP message as the node saw it (clear text), from ``src`` to ``dst``."""
        if self._writer is None:
            return
        try:
            self._writer.writepkt(_frame(src, dst, data), ts=time.time())
            self.messages += 1
        except (ValueError, OSError):
            pass

    def mark(self, text: str) -> None:
        self.marks += 1
        with open(self.dir / "marks.txt", "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")

    def stop(self) -> Path:
        """Close the capture and return the archive's path."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._pcap_file = None
        if self._tcpdump is not None:
            try:
                os.killpg(self._tcpdump.pid, signal.SIGINT)
                self._tcpdump.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self._tcpdump.pid, signal.SIGKILL)
                self._tcpdump.wait(5)
            self._tcpdump = None
        if self.log_path and os.path.exists(self.log_path):
            with open(self.log_path, "rb") as src, open(self.dir / "events.jsonl", "wb") as dst:
                size = os.path.getsize(self.log_path)
                src.seek(self._log_offset if self._log_offset <= size else 0)  # rotated meanwhile: all of it
                shutil.copyfileobj(src, dst)
        (self.dir / "README.txt").write_text(
            f"Edgeway diagnostic capture of {self.node} on {socket.gethostname()}, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))} for {time.time() - self.started:.1f} s\n"
            f"sip.pcap: {self.messages} SIP messages in clear (UDP frames between the real addresses; decode other "
            f"ports as SIP, e.g. tshark -d udp.port==5061,sip -d udp.port==7001,sip)\n"
            f"events.jsonl: the event log since start; marks.txt: {self.marks} marks\n{self.tcpdump_note}\n")
        archive = self.dir.parent / f"edgeway-diag-{self.node}-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(self.dir, arcname=archive.name.removesuffix(".tar.gz"))
        return archive
