"""Helpers shared by the test suites: speech and every other test audio, made without system
tools (`audio`), a real service process (`server`), word error rate (`wer`), outside services
that skip without them or fail in CI (`services`, `postgres`), events, a fake clock."""
