"""Optional integrations with other libraries. Each one imports its library on first use and, when it is
missing, says which ``pip install "nbflow[extra]"`` line brings it; nothing in the core imports them.

- :mod:`nbflow.integrations.pydantic_ai` — durable pydantic-ai agents (``nbflow[ai]``).
"""
