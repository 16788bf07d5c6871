"""
The layers hold: the framework (C{txplatform}) below the services, below
the gateway, below the processes (the twistd commands), each importing
nothing above it; and Klein only in the gateway.  Checked with
import-linter against the contracts in pyproject.toml.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from twisted.trial.unittest import TestCase

from .support import missing

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {
    "txplatform": "txplatform",
    "txplatform_services": "services",
    "txplatform_gateway": "gateway",
    "txplatform_plugins": "plugins",
}


class LayersTests(TestCase):
    timeout = 120

    def lint(self, where: str) -> subprocess.CompletedProcess:
        """
        Run import-linter with the project's contracts on the packages in
        C{where}.
        """
        linter = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
        if linter is None:
            missing("import-linter is not installed (pip install '.[test]')")
        env = dict(os.environ, PYTHONPATH=where)
        return subprocess.run(
            [linter, "--config", os.path.join(CHECKOUT, "pyproject.toml"), "--no-cache"],
            cwd=where,
            env=env,
            capture_output=True,
            text=True,
            timeout=100,
        )

    def copy(self) -> str:
        """
        A copy of the project's packages, under their import names.
        """
        where = os.path.abspath(self.mktemp())
        for name, folder in PACKAGES.items():
            shutil.copytree(
                os.path.join(CHECKOUT, folder),
                os.path.join(where, name),
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        return where

    def test_kept(self) -> None:
        """
        Every contract holds in the code as it is.
        """
        result = self.lint(self.copy())
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("2 kept, 0 broken", result.stdout)

    def test_upward(self) -> None:
        """
        A framework module importing a service, or a service importing the
        gateway or Klein, breaks a contract.
        """
        for module, line in [
            ("txplatform/upward.py", "import txplatform_services.post.api\n"),
            ("txplatform_services/post/upward.py", "from txplatform_gateway import Gateway\n"),
            ("txplatform_services/post/web.py", "import klein\n"),
        ]:
            where = self.copy()
            with open(os.path.join(where, module), "w") as f:
                f.write(line)
            result = self.lint(where)
            self.assertNotEqual(result.returncode, 0, module)
            self.assertIn("BROKEN", result.stdout, module)


class TestCaseNameTests(TestCase):
    """
    Every module's C{test-case-name} header names test modules that exist
    (trial runs them for the module; a wrong name runs nothing).
    """

    def test_exist(self) -> None:
        header = re.compile(r"^# -\*- test-case-name: (.+?) -\*-", re.M)
        wrong = []
        for top in ["txplatform", *PACKAGES.values(), os.path.join("examples", "likes")]:
            for directory, _, files in os.walk(os.path.join(CHECKOUT, top)):
                for name in files:
                    if not name.endswith(".py"):
                        continue
                    path = os.path.join(directory, name)
                    with open(path, encoding="utf-8") as f:
                        match = header.search(f.read(2000))
                    if match is None:
                        continue
                    root = (
                        os.path.join(CHECKOUT, "examples", "likes")
                        if "examples" in path
                        else CHECKOUT
                    )
                    for module in (n.strip() for n in match.group(1).split(",")):
                        where = os.path.join(root, *module.split("."))
                        if not (os.path.isfile(where + ".py") or os.path.isdir(where)):
                            wrong.append(f"{os.path.relpath(path, CHECKOUT)}: {module}")
        self.assertEqual(wrong, [])
