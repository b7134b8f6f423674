"""Fixtures shared by every test folder. Area-specific fixtures live in tests/<area>/conftest.py."""
