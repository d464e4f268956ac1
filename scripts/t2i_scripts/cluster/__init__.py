"""Replicas on this machine: `make cluster`, `make cluster-down`, and the harness of `make test-cluster`."""
