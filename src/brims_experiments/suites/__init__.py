"""The suites ``brims reproduce`` runs (YAML, one per suite; see brims_experiments.reproduce.suites)."""
