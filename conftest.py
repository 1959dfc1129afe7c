"""pytest configuration shared by tests/ and the nbval notebook run."""


def pytest_collectstart(collector):
    # nbval compares stderr too; progress bars and warnings there are not results (nbval PR #169).
    if collector.fspath and str(collector.fspath).endswith(".ipynb"):
        collector.skip_compare += ("text/html", "application/javascript", "stderr")
