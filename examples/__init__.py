"""Runnable examples built on within_db; the test suite runs them."""
