"""The engine: the one place that drives task and flow runs (see ``task_engine`` and ``flow_engine``)."""
