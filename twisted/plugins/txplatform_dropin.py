"""
txplatform's twistd commands.  Only names here: each maker module is
imported when its command runs, so C{twistd --help} stays fast and a broken
service cannot hide the others.
"""

from twisted.application.service import ServiceMaker

txplatform = ServiceMaker(
    "txplatform",
    "txplatform_plugins.allinone",
    "The whole platform (gateway, account, post, notify) in one process.",
    "txplatform",
)
gateway = ServiceMaker(
    "txplatform gateway", "txplatform_plugins.gateway", "The HTTP gateway of txplatform.", "gateway"
)
account = ServiceMaker(
    "txplatform account", "txplatform_plugins.account", "The Account service of txplatform.", "account"
)
post = ServiceMaker("txplatform post", "txplatform_plugins.post", "The Post service of txplatform.", "post")
notify = ServiceMaker(
    "txplatform notify", "txplatform_plugins.notify", "The Notify service of txplatform.", "notify"
)
parser = ServiceMaker(
    "txplatform parser",
    "txplatform_plugins.parser",
    "Decodes and checks request bodies for gateways (a pool of replicas).",
    "parser",
)
sidecar = ServiceMaker(
    "txplatform sidecar",
    "txplatform_plugins.sidecar",
    "Beside a service replica: secure-channel ingress, health and Prometheus metrics.",
    "sidecar",
)
