"""The working budget: configured, cgroup, available memory and PSI, on fake /proc files."""

from __future__ import annotations

from pathlib import Path

from edged.portfolio.budget import SystemMemory, working_budget
from edged.settings import MemorySettings

MB = 10**6


def fake_system(
    tmp_path: Path,
    *,
    cgroup: dict[str, str] | None = None,
    psi: float | None = None,
    available: int = 8 * 2**30,
) -> SystemMemory:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("0::/system.slice/edged.service\n")
    if psi is not None:
        (proc / "pressure").mkdir()
        (proc / "pressure" / "memory").write_text(
            f"some avg10={psi:.2f} avg60=0.00 avg300=0.00 total=1\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        )
    root = tmp_path / "cgroup"
    unit = root / "system.slice" / "edged.service"
    unit.mkdir(parents=True)
    for name, value in (cgroup or {}).items():
        (unit / name).write_text(value + "\n")
    return SystemMemory(proc=proc, cgroup_root=root, available=lambda: available)


SETTINGS = MemorySettings(
    budget=1000 * MB, reserve=50 * MB, available_floor=200 * MB, psi_threshold=10.0
)


def test_budget_is_the_configured_one_without_limits(tmp_path: Path) -> None:
    reading = working_budget(
        SETTINGS,
        fake_system(tmp_path, cgroup={"memory.max": "max"}),
        accounted=0,
        process_baseline=100 * MB,
    )
    assert (reading.bytes, reading.limited_by) == (1000 * MB, "config")


def test_cgroup_limit_minus_reserve_and_baseline(tmp_path: Path) -> None:
    system = fake_system(
        tmp_path, cgroup={"memory.max": str(800 * MB), "memory.high": str(600 * MB)}
    )
    reading = working_budget(SETTINGS, system, accounted=0, process_baseline=100 * MB)
    assert (reading.bytes, reading.limited_by) == (450 * MB, "cgroup")


def test_low_available_memory_shrinks_the_budget(tmp_path: Path) -> None:
    system = fake_system(tmp_path, available=150 * MB)
    reading = working_budget(SETTINGS, system, accounted=300 * MB, process_baseline=0)
    assert (reading.bytes, reading.limited_by) == (250 * MB, "available")


def test_memory_pressure_shrinks_the_budget(tmp_path: Path) -> None:
    calm = working_budget(SETTINGS, fake_system(tmp_path / "a", psi=2.0), 300 * MB, 0)
    assert calm.limited_by == "config" and calm.psi_some_avg10 == 2.0
    stressed = working_budget(SETTINGS, fake_system(tmp_path / "b", psi=35.0), 300 * MB, 0)
    assert (stressed.bytes, stressed.limited_by) == (270 * MB, "pressure")


def test_real_system_readers_do_not_fail() -> None:
    system = SystemMemory()
    assert system.available() > 0
    limit = system.cgroup_limit()
    assert limit is None or limit > 0
