"""
The AMQP 0-9-1 specification txamqp builds its methods from, shipped in
this package (C{amqp0-9-1.xml}: the AMQP Working Group's XML, as Apache
Qpid's Python client distributes it, with RabbitMQ's basic.nack and confirm
class added; see C{README} beside it).
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from typing import Any

import txamqp.spec

__all__ = ["loadSpec"]


@lru_cache(maxsize=1)
def loadSpec() -> Any:
    resource = files(__package__).joinpath("amqp0-9-1.xml")
    return txamqp.spec.load_string(resource.read_text("utf-8"), specfilename="amqp0-9-1.xml")
