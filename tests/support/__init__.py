"""Shared harness for tests that talk to the real broker and run the real worker process."""
