"""What this worker can hold: its device, total and free memory, written to the `workers` table at start and every
heartbeat interval (by the liveness thread, worker/alive.py) for `create`'s pre-flight check (service/preflight.py).

On CUDA: `torch.cuda.mem_get_info` of the training device. On a CPU: physical RAM and available memory from
/proc/meminfo, capped by the cgroup's memory limit when the worker runs in a container that sets one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from drlora_core.autoconfig import known_model_facts
from drlora_core.config import RunConfig
from drlora_core.estimate import GIB, estimate, run_shape
from service.ids import now
from service.preflight import HEADROOM
from service.tables import Worker

log = logging.getLogger("drlora.worker")
MEMINFO = Path("/proc/meminfo")
CPUINFO = Path("/proc/cpuinfo")
CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")


@dataclass(frozen=True)
class DeviceMemory:
    device: str  # the GPU's or the CPU's name
    kind: str  # cpu | cuda
    total_bytes: int
    free_bytes: int


def probe(device: str) -> DeviceMemory:
    """The memory of the device a worker with `DRLORA_DEVICE=device` trains on."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        free, total = torch.cuda.mem_get_info(index)
        return DeviceMemory(torch.cuda.get_device_name(index), "cuda", int(total), int(free))
    total, available = host_memory()
    return DeviceMemory(cpu_name(), "cpu", total, available)


def host_memory(meminfo: Path = MEMINFO, cgroup_limit: Path = CGROUP_LIMIT) -> tuple[int, int]:
    """(total, available) bytes of host memory, capped by a cgroup v2 limit."""
    fields = {}
    for line in meminfo.read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    total, available = fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
    try:
        limit = cgroup_limit.read_text().strip()
    except OSError:
        return total, available
    if limit.isdigit() and int(limit) < total:
        return int(limit), min(available, int(limit))
    return total, available


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU ({line.partition(':')[2].strip()})"
    except OSError:
        pass
    return "CPU"


class Reporter:
    """Upserts this worker's row; called by the liveness thread. A failed write (the database away, the schema not
    yet migrated) is logged and retried at the next tick."""

    def __init__(self, factory: sessionmaker[Session], worker_id: str, device: str) -> None:
        self.factory, self.worker_id, self.device = factory, worker_id, device
        self.started_at = now()

    def report(self) -> None:
        try:
            memory = probe(self.device)
            with self.factory() as session:
                row = session.get(Worker, self.worker_id)
                if row is None:
                    row = Worker(id=self.worker_id, started_at=self.started_at)
                    session.add(row)
                row.device, row.kind = memory.device, memory.kind
                row.total_bytes, row.free_bytes, row.last_seen_at = memory.total_bytes, memory.free_bytes, now()
                session.commit()
        except Exception as e:  # the thread must live on: the next tick tries again
            log.warning("could not report this worker's memory: %s", e)


def estimate_here(model_dir: Path, config: RunConfig, memory: DeviceMemory) -> str | None:
    """One line for the worker's log before it loads a job's model: the estimate on this device against its memory
    (the same `run_shape` as the API's pre-flight); None for a model the estimator cannot read."""
    facts = known_model_facts(model_dir)
    if facts is None:
        return None
    peak = estimate(facts, run_shape(config, memory.kind)).peak_bytes
    verdict = "fits" if peak <= HEADROOM * memory.total_bytes else "may NOT fit"
    return (f"estimated peak {peak / GIB:.2f} GiB on {memory.device} ({memory.total_bytes / GIB:.1f} GiB total, "
            f"{memory.free_bytes / GIB:.1f} GiB free): {verdict}")
