"""Operational checks written to RELIABILITY.md and README.md: api_fuzz (schemathesis), crash_safety
(SIGKILL rounds), limits_table, soak, ops_check (Prometheus and Grafana) and advisories (cargo audit)."""
