"""``brims reproduce`` and ``brims report``: named suites of runs with seeds, their committed results,
and reports with intervals (suites.py: the definitions; runner.py: running them; report.py: tables,
claims and figures from the results alone)."""
