"""
The HTTP baseline for the AMQP path: a bare Klein app that makes one RPC
per request with pika's Twisted adapter (to bench/amqp_echo.py's pika echo
server), and answers with the reply.

    python bench/klein_pika.py PORT amqp://guest:guest@127.0.0.1:5672/vhost
"""

import os
import sys

from klein import Klein
from twisted.internet import defer, reactor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from amqp_echo import pikaClient  # noqa: E402

app = Klein()
call = None


@app.route("/")
@defer.inlineCallbacks
def echo(request):
    reply = yield call()
    request.setHeader("Content-Type", "application/json")
    return repr(reply).encode()


@defer.inlineCallbacks
def start(url):
    global call
    call = yield pikaClient(url)
    print("ready", flush=True)


if __name__ == "__main__":
    reactor.callWhenRunning(start, sys.argv[2])
    app.run("127.0.0.1", int(sys.argv[1]))
