"""Fixtures shared with the judge tests: the loopback OpenAI-compatible server, one torch thread."""

from fineharbor_tests.core.judge.conftest import fake_server, single_torch_thread  # noqa: F401
