"""Adapters: the only modules that import aio_pika, aioftp or docker.

Library errors become ulos-py errors at this edge, most specific first, chained.
"""
