"""Dramatiq actors of the pipeline: verify → parse → fetch_media → reply, one per module.

Importing this package does nothing; :func:`actors.broker.setup` builds the broker from the
settings and declares the actors on it (in each worker process).
"""
