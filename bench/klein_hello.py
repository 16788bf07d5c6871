"""
The baseline: Klein's hello world, run the way Klein's documentation runs
it (Klein.run: a Twisted Site on a TCP endpoint, logging to stdout).

    python bench/klein_hello.py PORT
"""

import sys

from klein import Klein

app = Klein()


@app.route("/")
def hello(request):
    return b"Hello, world!"


if __name__ == "__main__":
    app.run("127.0.0.1", int(sys.argv[1]))
