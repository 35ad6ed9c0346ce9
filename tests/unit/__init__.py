"""Unit tests: pure code, no sockets, servers or child processes."""
