"""Sweeps of APF forgetting schedules on synthetic streams: runner, executors, results store."""
