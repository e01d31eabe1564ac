"""Developer tooling over the schema: introspection, drift check and generator, freezing,
the ER diagram and safe row browsing for the CLI. Batch jobs and services never import it.
"""

__all__ = ["drift", "erd", "freeze", "introspect", "rows"]
