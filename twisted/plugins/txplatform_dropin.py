"""
txplatform's twistd commands: the all-in-one, the gateway, the sidecar, and
one per installed service (L{txplatform_plugins.commands}).  Each command's
code is imported only when it runs, so C{twistd --help} stays fast and a
broken service cannot hide the others.
"""

from txplatform_plugins.commands import commands, keepPluginCacheFresh

globals().update(commands())
keepPluginCacheFresh(__file__)
