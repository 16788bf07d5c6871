"""
A person at a browser, for the web client's tests: Debian's Chromium,
headless, driven through Selenium with Debian's chromedriver (the paths
are given, so Selenium Manager never runs, nor downloads anything), and
axe-core (tests/web/package.json, installed with C{npm ci}) run in the page.
"""

from __future__ import annotations

import os
from typing import Any

from ..support import missing

__all__ = ["AXE", "CHROMEDRIVER", "CHROMIUM", "Person", "requireBrowser"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
AXE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "node_modules", "axe-core", "axe.min.js"
)
#: Seconds a page may take to show what is waited for.
PATIENCE = 15


def browserProblem() -> str | None:
    """
    Why the browser tests cannot run here, or None.
    """
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


def requireBrowser() -> None:
    """
    Skip the test without Chromium, its driver or Selenium, except in CI,
    where they are part of the job (.ci/run installs them).
    """
    problem = browserProblem()
    if problem is None:
        return
    missing(problem, "; CI must run the browser tests")


class Person:
    """
    One person's browser (a browser of its own: nothing shared with
    another person's), on the web client at C{base}.
    """

    def __init__(self, base: str, width: int = 1024, height: int = 768) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait

        options = Options()
        options.binary_location = CHROMIUM
        for argument in [
            "--headless=new",
            "--no-sandbox",  # as root, in a container
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--lang=en-US",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
        ]:
            options.add_argument(argument)
        self.driver = webdriver.Chrome(
            service=Service(executable_path=CHROMEDRIVER), options=options
        )
        if width < 500:
            # A window is never narrower than 500 pixels: a phone's screen
            # is emulated instead.
            self.driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True},
            )
        self.base = base
        self.wait = WebDriverWait(self.driver, PATIENCE, poll_frequency=0.1)

    def quit(self) -> None:
        self.driver.quit()

    def script(self, source: str, *arguments: Any) -> Any:
        return self.driver.execute_script(source, *arguments)

    def open(self, route: str, page: str | None = None) -> None:
        """
        Load the client at C{#/route} (a page load), and wait for C{page}.
        """
        self.driver.get(f"{self.base}/#/{route}")
        if page is not None:
            self.waitForPage(page)

    def go(self, route: str, page: str) -> None:
        """
        Follow C{#/route} within the page (no reload), and wait for C{page}.
        """
        self.script("location.hash = arguments[0]", f"#/{route}")
        self.waitForPage(page)

    def waitForPage(self, page: str) -> None:
        self.wait.until(
            lambda d: d.execute_script("return document.documentElement.dataset.page") == page,
            f"the page {page!r} never showed",
        )

    def find(self, xpath: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.wait.until(lambda d: d.find_element(By.XPATH, xpath), f"nothing at {xpath}")

    def findAll(self, xpath: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.XPATH, xpath)

    def waitFor(self, condition: Any, message: str) -> Any:
        return self.wait.until(lambda d: condition(), message)

    def form(self, name: str) -> str:
        return f"//form[@aria-label={_quoted(name)}]"

    def field(self, form: str, label: str) -> Any:
        """
        The control a form's label names (found through the label, as a
        screen reader finds it).
        """
        from selenium.webdriver.common.by import By

        found = self.find(f"{self.form(form)}//label[normalize-space()={_quoted(label)}]")
        return self.driver.find_element(By.ID, found.get_attribute("for"))

    def fill(self, form: str, **values: str) -> None:
        for label, value in values.items():
            control = self.field(form, label.replace("_", " "))
            control.clear()
            control.send_keys(value)

    def submit(self, form: str) -> None:
        self.find(f"{self.form(form)}//button[@type='submit']").click()

    def fieldError(self, form: str, name: str) -> str:
        """
        The error shown beside a form's field C{name} (as the API names it),
        once there is one.
        """
        xpath = f"{self.form(form)}//div[@data-field={_quoted(name)}]/p[@class='field-error']"
        line = self.find(xpath)
        self.waitFor(lambda: line.text.strip(), f"no error beside {name} in {form}")
        return str(line.text)

    def formError(self, form: str) -> str:
        line = self.find(f"{self.form(form)}/p[@class='form-error']")
        self.waitFor(lambda: line.text.strip(), f"no error in the form {form}")
        return str(line.text)

    def signUp(self, username: str, password: str, display: str = "") -> None:
        self.open("signup", "signup")
        self.fill(
            "Sign up",
            Username=username,
            Display_name=display,
            Email=f"{username}@example.com",
            Password=password,
        )
        self.submit("Sign up")
        self.waitForPage("home")

    def follow(self, href: str, page: str) -> None:
        """
        Click the main navigation's link to C{href}, and wait for C{page}.
        """
        self.find(f"//nav//a[@href={_quoted(href)}]").click()
        self.waitForPage(page)

    def screenshot(self, directory: str, name: str) -> str:
        path = os.path.join(directory, f"{name}.png")
        # The page settles (fonts, focus ring) before it is taken.
        self.script("document.activeElement && document.activeElement.blur()")
        self.driver.save_screenshot(path)
        return path

    def accessibilityViolations(self) -> list[dict[str, Any]]:
        """
        What axe-core finds in the page as it is, of serious or critical
        impact (injected through WebDriver, which the page's CSP does not
        govern: the page itself still loads no script but its own).
        """
        if not os.path.exists(AXE):
            raise AssertionError(
                f"{AXE} is missing: install axe-core with (cd tests/web && npm ci)"
            )
        if not self.script("return typeof window.axe === 'object'"):
            with open(AXE, encoding="utf-8") as f:
                self.script(f.read())
        found = self.driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            axe.run(document, {resultTypes: ["violations"]}).then(
              (results) => done(results.violations.map((v) => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map((n) => n.html).slice(0, 3)}))),
              (error) => done([{id: "axe-error", impact: "critical", help: String(error)}]));
            """
        )
        return [v for v in found if v["impact"] in ("serious", "critical")]


def _quoted(text: str) -> str:
    """
    C{text} as an XPath string literal.
    """
    if "'" not in text:
        return f"'{text}'"
    return '"' + text + '"'


class Line:
    """
    A TCP forwarder to a local port that a test can cut, as a person's
    connection drops: L{cut} ends every connection through it and refuses
    new ones until L{restore}.  (Runs in the reactor: call it from a
    scenario's thread with C{blockingCallFromThread}.)
    """

    def __init__(self, reactor: Any, port: int) -> None:
        from twisted.protocols.portforward import ProxyFactory, ProxyServer

        line = self
        self.connections: set[Any] = set()
        self.down = False

        class Server(ProxyServer):
            def connectionMade(self) -> None:
                if line.down:
                    self.transport.abortConnection()
                    return
                line.connections.add(self)
                super().connectionMade()

            def connectionLost(self, reason: Any) -> None:
                line.connections.discard(self)
                super().connectionLost(reason)

        factory = ProxyFactory("127.0.0.1", port)
        factory.protocol = Server
        self.listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port

    def cut(self) -> None:
        self.down = True
        for connection in list(self.connections):
            connection.transport.abortConnection()

    def restore(self) -> None:
        self.down = False
