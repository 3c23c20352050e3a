"""Test harness shared by every Symbi package (loaded with ``-p symbi_testing.fixtures``)."""
