"""Helpers shared by the test suites: synthetic audio, a real service process, word error rate."""
