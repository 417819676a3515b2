"""The kernel as a service: ``aios serve`` (``server``, ``app``, ``openai_api``), the wire models
(``wire``) and the remote SDK (``client``: ``aios.connect``).

Importing this package imports only the client side (httpx); the server's dependencies (uvicorn,
starlette: the ``serve`` extra) load when a server is built.
"""

from aios.service.client import Connection, ServiceRefused, connect

__all__ = ["Connection", "ServiceRefused", "connect"]
