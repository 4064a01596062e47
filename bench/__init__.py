"""segspark's benchmark harness: workloads run against their peers; see bench/README.md."""
