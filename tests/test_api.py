"""
docs/api.md names only what exists: every public name it lists imports.
"""

from __future__ import annotations

import importlib
import os
import re

from twisted.trial.unittest import SynchronousTestCase

from .processes import CHECKOUT


class PublicAPITests(SynchronousTestCase):
    def test_namesExist(self) -> None:
        """
        Each module of the tables imports, and has each name listed beside
        it; none of them is private.
        """
        with open(os.path.join(CHECKOUT, "docs", "api.md"), encoding="utf-8") as f:
            text = f.read()
        checked = 0
        for modules, names in re.findall(r"^\| (`txplatform[^|]*) \| ([^|]*) \|$", text, re.M):
            modules = re.findall(r"`([a-z_.]+)`", modules)
            names = re.findall(r"`([A-Za-z_]+)`", names.split("(")[0] + names)
            for name in names:
                self.assertFalse(name.startswith("_"), name)
                owners = [m for m in modules if hasattr(importlib.import_module(m), name)]
                self.assertTrue(owners, f"{name} is in none of {modules}")
                checked += 1
        self.assertGreater(checked, 60)
