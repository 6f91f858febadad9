"""What every study shares: its record written atomically with command, versions and date, in a folder outside
the installed package; a worker pool."""

from __future__ import annotations

import contextlib
import datetime
import json
import multiprocessing
import os
import platform
from pathlib import Path

import torch

from coatlib.train import versions

PACKAGE = Path(__file__).resolve().parent.parent  # the installed coatlib: no study writes into it


def save(result: dict, path: str | Path, command: str) -> Path:
    """Write ``result`` as JSON with the command that made it, the library versions and the date."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": command,
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **result,
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(path)  # atomic: an interrupted write never leaves a broken file behind
    return path


@contextlib.contextmanager
def pool(workers: int, ordered: bool = False):
    """``imap(fn, jobs)`` over ``workers`` processes (results in the order they finish, or in the jobs'
    order when ``ordered``), or in this process."""
    check_workers(workers)
    if workers == 1:
        yield lambda fn, jobs: map(fn, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as p:
        yield lambda fn, jobs: (p.imap if ordered else p.imap_unordered)(fn, jobs)


def check_workers(workers: int) -> int:
    """``workers`` if it is a number of processes: an int >= 1; a ``ValueError`` otherwise."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers (--workers) must be an int >= 1 (processes training at once), got {workers!r}")
    return workers


def read_record(path: str | Path) -> dict:
    """The JSON record at ``path``; a ``ValueError`` naming the file when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not a readable JSON record ({e}): it was cut short or edited. Restore it (git checkout "
            f"of a shipped record, or your copy), or delete it and run the experiment again"
        ) from None


def results_folder(out: str | Path) -> Path:
    """``out`` as a folder for results, made if needed; refused when it lies inside the installed package
    (only ``--update-artefact`` copies a finished record there)."""
    out = Path(out)
    if out.resolve() == PACKAGE or PACKAGE in out.resolve().parents:
        raise ValueError(
            f"{out} is inside the coatlib package ({PACKAGE}): results go to a folder of your own "
            f"(--out; the default lies in the current folder); --update-artefact then copies a finished record into "
            f"the package"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def hardware(device: str | None, workers: int) -> dict:
    """The machine a study ran on, for its record: platform, CPU, cores, workers, threads and the GPU."""
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "")
    info = {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(), "workers": workers}
    info["threads"] = torch.get_num_threads()
    if device and device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
