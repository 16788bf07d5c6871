"""
The platform's services.  Each package declares itself in its
C{__init__} (C{declaration}, named by an entry point of the group
C{txplatform.services}), keeps its contract in an C{api} module (its
identifier, messages and events: all a caller needs) and its implementation
beside it.
"""
