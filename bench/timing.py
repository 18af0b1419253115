"""Timing shared by the benchmark scripts: the median of repeated runs, a figure beside its reference measured in
the same run (with its ratio and a markdown table row), and the machine line printed above every table.

A measurement is a function that does its own setup (a fresh database) off the clock and returns
(seconds, result), usually through `timed`; `medians` runs several measurements in turns and keeps every run.
"""
import os
import platform
import sqlite3
import statistics
import time
from dataclasses import asdict, dataclass

from sqlalchemy import create_engine, text

SERVER_NAMES = {"mysql": "MySQL", "postgresql": "PostgreSQL"}


@dataclass(frozen=True)
class Median:
    """The median seconds of repeated runs of one measurement, with every run's seconds and result, in order."""
    seconds: float
    runs: tuple
    results: tuple = ()


@dataclass(frozen=True)
class Figure:
    """A figure beside its reference, both measured in the same run of a benchmark."""
    name: str
    seconds: float
    reference: str
    reference_seconds: float
    runs: tuple = ()
    reference_runs: tuple = ()

    @classmethod
    def of(cls, name, median, reference, reference_median):
        """The figure of two Medians."""
        return cls(name, median.seconds, reference, reference_median.seconds, median.runs, reference_median.runs)

    @property
    def time_ratio(self):
        """seconds / reference_seconds: 1.20 takes 20% longer than the reference."""
        return self.seconds / self.reference_seconds

    @property
    def speed_share(self):
        """reference_seconds / seconds: the figure's speed as a share of the reference's (1.00 = as fast)."""
        return self.reference_seconds / self.seconds

    def as_dict(self):
        """The fields and both ratios, for JSON."""
        return asdict(self) | {"time_ratio": round(self.time_ratio, 4), "speed_share": round(self.speed_share, 4)}


def timed(function, *args, **kwargs):
    """(wall-clock seconds, result) of one call."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def medians(measures, runs):
    """Run each measurement of {name: measure} `runs` times, in turns (a, b, a, b, ...) so that a slow spell of a
    shared machine falls on all of them alike; each measure() returns (seconds, result). Returns {name: Median}."""
    seconds, results = {name: [] for name in measures}, {name: [] for name in measures}
    for _ in range(runs):
        for name, measure in measures.items():
            run_seconds, result = measure()
            seconds[name].append(run_seconds)
            results[name].append(result)
    return {name: Median(statistics.median(seconds[name]), tuple(seconds[name]), tuple(results[name]))
            for name in measures}


def median_of(measure, runs):
    """The Median of `runs` calls of measure() (see medians)."""
    return medians({"only": measure}, runs)["only"]


def markdown_row(cells):
    """A markdown table row of the cells."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown_header(names):
    """The header row and the separator row of a markdown table."""
    return markdown_row(names) + "\n" + markdown_row(["---"] * len(names))


def figure_row(lead, figure, ratio="time_ratio"):
    """The lead cells, then the figure's seconds, its reference's seconds and the ratio named (time_ratio or
    speed_share), as a markdown row."""
    return markdown_row([*lead, f"{figure.seconds:.2f} s", f"{figure.reference_seconds:.2f} s",
                         f"{getattr(figure, ratio):.2f}"])


def machine_line(server_urls=()):
    """'machine: CPU model, cores, RAM, OS, Python, SQLite and the version of each server URL given'."""
    parts = [cpu_model(), f"{os.cpu_count()} cores", f"{memory_bytes() / 2**30:.1f} GiB RAM", operating_system(),
             f"Python {platform.python_version()}", f"SQLite {sqlite3.sqlite_version}"]
    return "machine: " + ", ".join(parts + [server_version(url) for url in server_urls])


def cpu_model():
    """The first 'model name' of /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def memory_bytes():
    """Total RAM in bytes, from the page size and count."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def operating_system():
    """The OS's pretty name (/etc/os-release), else platform's description."""
    try:
        return platform.freedesktop_os_release()["PRETTY_NAME"]
    except (OSError, KeyError):
        return platform.platform()


def server_version(url):
    """'MariaDB 10.11.19' or 'PostgreSQL 15.20': the server's name and version, from SELECT VERSION()."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            version = connection.execute(text("SELECT VERSION()")).scalar()
    finally:
        engine.dispose()
    if "MariaDB" in version:
        return f"MariaDB {version.split('-')[0]}"
    name = SERVER_NAMES.get(engine.dialect.name, engine.dialect.name)
    return " ".join(version.split()[:2]) if version.startswith(name) else f"{name} {version}"
