"""
Test helpers for services and buses built on txplatform, shipped with it
(as C{treq.testing} is with treq): import them in your own tests.

  - L{ServiceHarness}: your services (and others') on the in-process bus,
    on a clock that moves only when the test says, their database work
    run in the test's thread: tests are synchronous and deterministic.
  - L{EventRecorder}: every event published.
  - L{ServiceHarness.fake}: other services' methods answered by functions.
  - L{testKeyFiles}: key files, as C{txplatform-keys init} makes them.
  - L{BusContract}: the behaviour every bus must have, as test methods
    any bus implementation (the platform's three, or yours) runs.
  - L{recordSpans}: the OpenTelemetry spans made during a test, in memory.

The gateway's own helper, a client over a gateway without a port, is
L{txplatform_gateway.testing.GatewayClient}.
"""

from .buscontract import BusContract, BusPair
from .harness import (
    EventRecorder,
    HarnessReactor,
    InlineThreadPool,
    NeverFired,
    ServiceHarness,
    testKeyFiles,
)
from .traces import parentOf, recordSpans, spanNamed

__all__ = [
    "BusContract",
    "BusPair",
    "EventRecorder",
    "HarnessReactor",
    "InlineThreadPool",
    "NeverFired",
    "ServiceHarness",
    "testKeyFiles",
    "recordSpans",
    "spanNamed",
    "parentOf",
]
