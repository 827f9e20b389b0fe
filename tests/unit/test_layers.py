"""The layers of docs/architecture.md hold: import-linter's contracts (pyproject.toml) pass, and
they would catch an adapter reaching into the core."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests import ROOT


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the ``edged`` package found in ``cwd``."""
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
    )


def test_the_import_contracts_hold() -> None:
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_an_adapter_importing_the_portfolio_breaks_them(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "edged", copy / "edged", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    servicer = copy / "edged" / "adapters" / "grpc" / "portfolio_service.py"
    servicer.write_text(
        servicer.read_text() + "\nfrom edged.portfolio.portfolio import Portfolio  # noqa\n"
    )
    done = _lint_imports(copy)
    assert done.returncode != 0
    assert "edged.adapters.grpc.portfolio_service -> edged.portfolio.portfolio" in done.stdout


def test_no_module_of_edged_imports_itself_back() -> None:
    """No import cycle anywhere in the package, inside a layer as well as across layers."""
    import grimp

    graph = grimp.build_graph("edged")
    cycles = [
        (importer, imported)
        for importer in sorted(graph.modules)
        for imported in sorted(graph.find_modules_directly_imported_by(importer))
        if importer < imported and graph.chain_exists(imported=importer, importer=imported)
    ]
    assert cycles == []
