"""
Test hosts in network namespaces: several "machines" on one, for tests of
what crosses a real network (broadcast, DNS, partitions).

L{Network} makes one namespace holding a bridge (the switch), one namespace per
host, each with an C{eth0} on the bridge, and a veth from the test's own
namespace onto the bridge, so the test reaches every host directly, like a
compose network seen from its host.  Addresses come from 198.18.0.0/15, the
range set aside for network tests: traffic never leaves the namespaces.

Needs root and iproute2.  L{require_netns} fails when C{CI} is set (CI is
root: the tests must run there) and skips elsewhere.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

ETC_NETNS = Path("/etc/netns")


def netns_available() -> str | None:
    """
    None if namespaces can be made here, else why not.
    """
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = f"dcprobe{os.getpid()}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def require_netns() -> None:
    why = netns_available()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"network-namespace tests must run in CI, but: {why}")
    pytest.skip(why)


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class Network:
    def __init__(self, hosts: int) -> None:
        tag = f"{random.randrange(16**4):04x}"
        self.subnet = random.randrange(256)
        self.prefix = f"198.18.{self.subnet}"
        self.switch = f"dc{tag}-sw"
        self.names = [f"dc{tag}-h{i + 1}" for i in range(hosts)]
        self.addresses = [f"{self.prefix}.{i + 11}" for i in range(hosts)]
        self.broadcast = f"{self.prefix}.255"
        self._outer = f"dc{tag}-t"
        self._made: list[str] = []
        self._etc: list[Path] = []

    def __enter__(self) -> Network:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        ip("netns", "add", self.switch)
        self._made.append(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for k, (name, address) in enumerate(zip(self.names, self.addresses, strict=True)):
            ip("netns", "add", name)
            self._made.append(name)
            port = f"p{k + 1}"
            ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name)
            ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            ip("-n", name, "addr", "add", f"{address}/24", "broadcast", self.broadcast, "dev", "eth0")
            ip("-n", name, "link", "set", "eth0", "up")
            ip("-n", name, "link", "set", "lo", "up")
        # The test's own way onto the bridge.
        ip("link", "add", self._outer, "type", "veth", "peer", "name", "pt", "netns", self.switch)
        ip("-n", self.switch, "link", "set", "pt", "master", "br0", "up")
        ip("addr", "add", f"{self.prefix}.1/24", "dev", self._outer)
        ip("link", "set", self._outer, "up")

    def exec_prefix(self, host: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[host]]

    def set_hosts_file(self, host: int, entries: list[tuple[str, str]]) -> None:
        """
        Give one host its own /etc/hosts (ip netns exec bind-mounts
        /etc/netns/NAME/hosts over it), e.g. a name with many addresses.
        """
        folder = ETC_NETNS / self.names[host]
        folder.mkdir(parents=True, exist_ok=True)
        self._etc.append(folder)
        lines = ["127.0.0.1 localhost"] + [f"{address} {name}" for address, name in entries]
        (folder / "hosts").write_text("\n".join(lines) + "\n")

    def cut(self, host: int) -> None:
        """
        Unplug a host from the switch: its own eth0 stays up (so it can still
        be asked from inside), but nothing crosses the bridge port.
        """
        ip("-n", self.switch, "link", "set", f"p{host + 1}", "down")

    def heal(self, host: int) -> None:
        ip("-n", self.switch, "link", "set", f"p{host + 1}", "up")

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self._outer], capture_output=True)
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._made.clear()
        for folder in self._etc:
            shutil.rmtree(folder, ignore_errors=True)
        self._etc.clear()
