"""Contracts every process agrees on: record schemas, the config, the capture format, instants, the run directory."""
