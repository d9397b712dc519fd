"""Shared test configuration. Test folders own their own conftest.py files."""
