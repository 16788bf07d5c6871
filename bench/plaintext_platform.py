"""
The all-in-one platform with encryption taken out: JSON payloads on the
bus and UTF-8 fields in SQLite, in the clear.  It exists only as the
baseline against which bench/embedded.py measures what encryption costs;
no twistd command offers it.

    python bench/plaintext_platform.py [twistd txplatform options]
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main() -> None:
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.python.usage import UsageError

    from txplatform.codec import JSONCodec
    from txplatform.fields import PlainFieldCodec
    from txplatform_plugins import allinone
    from txplatform_plugins._lifecycle import StopInOrder

    options = allinone.Options()
    # No key files: ensureKeys would make them for nothing.
    options.ensureKeys = lambda: None  # type: ignore[method-assign]
    try:
        options.parseOptions(sys.argv[1:])
    except UsageError as e:
        raise SystemExit(f"{sys.argv[0]}: {e}") from None
    from twisted.internet import reactor

    if options["db"] is None:
        os.makedirs(options["data-dir"], exist_ok=True)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    top = StopInOrder()
    allinone.assemble(
        top,
        options,
        reactor,
        JSONCodec(),
        {purpose: PlainFieldCodec() for purpose in options.purposes() if purpose != "bus"},
    )
    top.privilegedStartService()
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
