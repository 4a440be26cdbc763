"""Fault-injection tests: the capture contract under crashes, tampering and failing servers."""
