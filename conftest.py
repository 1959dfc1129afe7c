"""pytest configuration shared by tests/ and the nbval notebook run."""

from pathlib import Path

import pytest

FAILED_NOTEBOOKS: set[str] = set()  # notebook names with a failing cell in this session


def pytest_collectstart(collector):
    # nbval compares stderr too; progress bars and warnings there are not results (nbval PR #169).
    if collector.fspath and str(collector.fspath).endswith(".ipynb"):
        collector.skip_compare += ("text/html", "application/javascript", "stderr")


def pytest_collection_modifyitems(session, config, items):
    # tests/test_stage_files.py compares the notebooks' outputs with the modules': after the notebooks
    items.sort(key=lambda item: "test_stage_files.py" in item.nodeid)  # stable: the rest keep their order


def pytest_runtest_logreport(report):
    if report.failed and ".ipynb" in report.nodeid:
        FAILED_NOTEBOOKS.add(Path(report.nodeid.split("::")[0]).stem)


@pytest.fixture
def failed_notebooks() -> set[str]:
    """Notebooks with a failing cell so far in this session (nbval)."""
    return FAILED_NOTEBOOKS
