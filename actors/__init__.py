"""Dramatiq actors of the pipeline: verify → parse → fetch_media → reply, one per module.

Importing this package does nothing; in each worker process :mod:`actors.supervisor` calls
:func:`actors.broker.build_broker`, which builds the broker from the settings and declares the
actors on it.
"""
