"""Fault and load tests: crashes, concurrency, idempotency, outages, bad input, full disks."""
