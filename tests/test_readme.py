"""
The README's promises: its two commands, and its walk-through, which runs
here against a real twistd process.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet.defer import inlineCallbacks

from .processes import CHECKOUT, TwistdTestCase, runShell


def readme() -> str:
    with open(os.path.join(CHECKOUT, "README.md"), encoding="utf-8") as f:
        return f.read()


def blockAfter(heading: str) -> str:
    text = readme()
    section = text[text.index(heading) :]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


class CommandTests(TwistdTestCase):
    def test_runCommand(self) -> None:
        """
        The run command installs and runs the all-in-one twistd plugin; the
        README says how to serve other machines.
        """
        command = blockAfter("## Run it").strip()
        self.assertIn("pip install .", command)
        self.assertTrue(command.endswith("twistd -n txplatform"), command)
        # It serves this machine only (tests.plugins.test_options checks the
        # default), and the README says how to open it.
        self.assertIn("`--listen tcp:8080` opens the port to every interface", readme())

    def test_ciRunsTheTestCommand(self) -> None:
        """
        .ci/run runs the README's test command, as it is written.
        """
        command = blockAfter("## Test it").strip()
        self.assertIn("twisted.trial tests", command)
        with open(os.path.join(CHECKOUT, ".ci", "run"), encoding="utf-8") as f:
            script = f.read()
        self.assertIn("\n" + command + "\n", script)

    @inlineCallbacks
    def test_walkThrough(self) -> Any:
        """
        Every command of the walk-through works against a fresh platform.
        """
        block = blockAfter("## Walk-through")
        process = self.spawn(
            "txplatform",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--data-dir",
            os.path.abspath(self.mktemp()),
        )
        port = yield process.ready
        script = block.replace("API=http://localhost:8080", f"API=http://127.0.0.1:{port}")
        self.assertNotEqual(script, block)
        result = yield runShell(script)
        self.assertEqual(result.returncode, 0, result.stderr + result.stdout)
        output = result.stdout
        for expected in [
            '"username":"alice"',
            '"display_name":"Bob"',
            '"body":"Hello @Bob, welcome!"',
            '"kind":"mention"',
            '"status":400',
            '"status":403',
            '"email":"alice@example.com"',
            '"status":401',
            "/v1/notifications/{notification_id}/read",
        ]:
            self.assertIn(expected, output)
        self.assertNotIn("Traceback", output)
