"""Helpers under Prefect's module names (``nbflow.utilities.annotations``)."""
