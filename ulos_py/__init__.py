"""ulos-py: a processing node for multistage lab workflows over RabbitMQ, FTP and Docker."""

__version__ = "0.1.0"
