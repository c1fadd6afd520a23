"""Ceph's RADOS Gateway for tests: a one-node Ceph cluster in a temporary directory.

A monitor, one OSD on the in-memory object store (memstore) and ``radosgw`` with its
beast frontend, all on 127.0.0.1, all in the foreground and in one process group that
``stop`` kills at once. No manager daemon: the gateway does not need one. No cephx
either: the cluster trusts whoever reaches its loopback ports, and the gateway checks
S3 signatures against a user made with ``radosgw-admin``.

Debian 12 ships Ceph 16 (Pacific) as the packages ceph-mon, ceph-osd, radosgw and
ceph-common; a cold start takes some 15 seconds on two cores, and the daemons
hold some 140 MiB, plus what the buckets hold (memstore keeps every object in memory).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx

from tests.s3.moto_server import ACCESS_KEY, SECRET_KEY, MiB, S3Endpoint
from tests.support.servers import free_port

# Settings a test cluster needs:
# - ms mon client mode: radosgw asks for "secure" connections to the monitor by
#   default, which needs cephx; without "crc" it never gets past authentication.
# - mon data avail: the monitor warns below 30% free disk and stops below 5%; the
#   cluster's data is in memory and throwaway.
# - pg num 8: the gateway's seven pools on one OSD, each placement group peered quickly.
# - admin socket, pid file: none, so that no path length limit or stale file matters.
# - rgw gc: the gateway keeps the tail of a large object (past its first 4 MiB) until
#   garbage collection; collecting at once keeps the OSD's memory (memstore holds every
#   object) to what the live buckets hold.
CONFIG = """\
[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
ms mon client mode = crc secure
mon data avail warn = 1
mon data avail crit = 0
mon allow pool size one = true
mon allow pool delete = true
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = {device_bytes}
run dir = {root}/run
admin socket =
log to stderr = false
err to stderr = true
log file = {root}/log/$name.log
mon cluster log file = {root}/log/cluster.log
pid file =
keyring = {root}/keyring
mon data = {root}/mon/$id
osd data = {root}/osd/$id
rgw data = {root}/rgw
rgw dynamic resharding = false
rgw enable lc threads = false
rgw gc obj min wait = 0
rgw gc processor period = 10
"""

DAEMONS = ("ceph-mon", "ceph-osd", "radosgw")


class RgwServer(S3Endpoint):
    """``radosgw`` on a free loopback port, over its own one-OSD Ceph cluster."""

    def __init__(self, root: Path, device_bytes: int = 4096 * MiB) -> None:
        self.root = root
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.conf = root / "ceph.conf"
        self.device_bytes = device_bytes
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.group: int | None = None
        self.startup_seconds: float | None = None

    # --- the cluster's processes ---------------------------------------------------------

    @staticmethod
    def _env() -> dict[str, str]:
        # Without the variables that would point Ceph's tools at another cluster.
        return {k: v for k, v in os.environ.items() if k not in ("CEPH_ARGS", "CEPH_CONF")}

    def _run(self, *command: str, timeout: float = 30.0) -> str:
        """A short-lived Ceph command, in the cluster's process group once there is one."""
        result = subprocess.run(
            [command[0], "-c", str(self.conf), *command[1:]],
            capture_output=True,
            check=False,
            timeout=timeout,
            env=self._env(),
            process_group=self.group or 0,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
                f"\n{self.log()}"
            )
        return result.stdout.decode()

    def _daemon(self, name: str, *arguments: str) -> None:
        with open(self.root / "log" / f"{name}.out", "ab") as out:
            process = subprocess.Popen(
                [name, "-c", str(self.conf), "-f", *arguments],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                # The first daemon leads a new process group; the others join it (which
                # needs the group in this session, hence not start_new_session).
                process_group=self.group or 0,
            )
        self.processes[name] = process
        if self.group is None:
            self.group = process.pid

    def start(self, timeout: float = 90.0) -> None:
        began = time.monotonic()
        deadline = began + timeout
        for directory in ("run", "log", "mon", "osd", "rgw"):
            (self.root / directory).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        mon_v2, mon_v1 = free_port(), free_port()
        self.conf.write_text(
            CONFIG.format(
                fsid=fsid,
                mon_v2=mon_v2,
                mon_v1=mon_v1,
                root=self.root,
                device_bytes=self.device_bytes,
            )
        )
        try:
            monmap = self.root / "monmap"
            self._run(
                "monmaptool", "--create", "--fsid", fsid,
                "--addv", "a", f"[v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}]", str(monmap),
            )
            self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap))
            self._daemon("ceph-mon", "-i", "a")
            osd_uuid = str(uuid.uuid4())
            # The ceph client waits for the monitor to come up.
            osd_id = self._run("ceph", "--connect-timeout", "30", "osd", "new", osd_uuid).strip()
            (self.root / "osd" / osd_id).mkdir()
            self._run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
            self._daemon("ceph-osd", "-i", osd_id)
            # The gateway creates its pools and waits for the OSD to serve them.
            self._daemon(
                "radosgw", "-n", "client.rgw.a",
                "--rgw-frontends", f"beast endpoint=127.0.0.1:{self.port}",
            )
            self._wait_for_gateway(deadline)
            self._run(
                "radosgw-admin", "user", "create", "--uid", "dockyard", "--display-name", "Dockyard",
                "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY,
            )
            # The first bucket creates the index and data pools, a few seconds more.
            self.remove_bucket(self.new_bucket())
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def _wait_for_gateway(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited early ({process.returncode}):\n{self.log()}")
            try:
                if httpx.get(self.endpoint + "/", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"radosgw did not answer in time:\n{self.log()}")

    def log(self, lines: int = 40) -> str:
        """The end of each daemon's log, for failure messages."""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGKILL the whole cluster: its data is thrown away anyway."""
        if self.group is None:
            return
        try:
            os.killpg(self.group, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for process in self.processes.values():
            process.wait(10)
        self.processes.clear()
        self.group = None

    def memory_bytes(self) -> int:
        """Resident memory of the cluster's daemons."""
        total = 0
        for process in self.processes.values():
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except FileNotFoundError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total

    # --- S3 --------------------------------------------------------------------------------

    def remove_bucket(self, bucket: str) -> None:
        """Abort the bucket's multipart uploads, delete its objects, then the bucket."""
        client = self.client()
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for upload in page.get("Uploads", []):
                client.abort_multipart_upload(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=bucket)

