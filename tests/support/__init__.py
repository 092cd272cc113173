"""Helpers the test files share: data sets, workspaces, stand-ins, browser checks."""
