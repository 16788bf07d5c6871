"""
txplatform: the framework the services stand on.

  - L{txplatform.serviceid}: 3-byte service identifiers and their registry.
  - L{txplatform.interfaces}: the seams (bus, payload codec, database, stored
    field codec).
  - L{txplatform.localbus}: the in-process bus.
  - L{txplatform.service}: the service model (L{rpc}, L{handles}).
  - L{txplatform.messages}: messages as attrs classes with checked fields.
  - L{txplatform.database}, L{txplatform.outbox}: storage and the
    transactional outbox.
"""

__version__ = "0.1.0"
