"""
The web client, used in a real browser (Debian's Chromium, through
Selenium) against a real C{twistd txplatform} process: two people, each in
a browser of their own, sign up, post, mention, follow, and see their
notifications arrive live; errors show beside their fields; each main page
passes axe-core's accessibility check (nothing serious or critical) and
fits a phone's screen.

The tests take a screenshot of each main page: into a temporary directory,
or into the directory C{TXPLATFORM_SCREENSHOTS} names (docs/web.md gives
the command that refreshes docs/screenshots/).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import blockingCallFromThread
from twisted.trial.unittest import SynchronousTestCase

from ..processes import CHECKOUT, TwistdTestCase
from .browser import Line, Person, requireBrowser

#: Where the tests write their screenshots, when set.
SCREENSHOTS = "TXPLATFORM_SCREENSHOTS"
PASSWORD = "correct horse battery"


class BrowserTestCase(TwistdTestCase):
    timeout = 180

    @inlineCallbacks
    def setUp(self) -> Any:
        requireBrowser()
        process = self.allInOne()
        port = yield process.ready
        self.base = f"http://127.0.0.1:{port}"
        self.line = Line(reactor, port)
        self.addCleanup(self.line.listening.stopListening)
        given = os.environ.get(SCREENSHOTS)
        # A relative directory is the checkout's (trial runs in _trial_temp).
        self.shots = os.path.join(CHECKOUT, given) if given else os.path.abspath(self.mktemp())
        os.makedirs(self.shots, exist_ok=True)

    def person(self, width: int = 1024, height: int = 768, through: Line | None = None) -> Person:
        """
        A new person at a browser of their own (closed after the test),
        connected directly or C{through} a line the test may cut.
        """
        base = self.base if through is None else f"http://127.0.0.1:{through.port}"
        someone = Person(base, width, height)
        self.addCleanup(someone.quit)
        return someone

    def inThread(self, scenario: Any) -> Any:
        """
        Run the blocking Selenium C{scenario} in a thread: the reactor goes
        on reading the twistd process's output meanwhile.
        """
        return threads.deferToThread(scenario)

    def checkPage(self, someone: Person, name: str) -> None:
        """
        The page shown passes axe-core (nothing serious or critical) and is
        kept as the screenshot C{name}.
        """
        violations = someone.accessibilityViolations()
        self.assertEqual(violations, [], f"accessibility of {name}")
        someone.screenshot(self.shots, name)


class TwoPeopleTests(BrowserTestCase):
    def whileCut(self, person: Person, meanwhile: Any) -> None:
        """
        Cut C{person}'s connection (once their stream has noticed), call
        C{meanwhile()}, and restore it.
        """
        blockingCallFromThread(reactor, self.line.cut)
        person.waitFor(
            lambda: (
                person.script("return document.documentElement.dataset.stream") == "reconnecting"
            ),
            "the stream did not notice the connection drop",
        )
        meanwhile()
        blockingCallFromThread(reactor, self.line.restore)

    def post(self, author: Person, text: str, shown: str) -> None:
        """
        C{author} posts C{text} and waits until her post shows C{shown}.
        """
        author.field("New post", "New post").send_keys(text)
        author.submit("New post")
        author.find("//article" + shown)

    def test_mentionsAndFollows(self) -> Any:
        """
        Alice signs up (after fixing what the API refused, shown beside each
        field) and posts mentioning Bob; Bob, his notifications page open,
        sees the mention arrive without a reload; he follows Alice from her
        profile, she posts again, and he sees a followed_post notification,
        then one that came while his connection was down (the stream opened
        again with a new ticket and last_event_id).  Alice deletes a post;
        her profile shows her posts newest first, twenty, then "More".
        """
        return self.inThread(self.mentionsAndFollows)

    def mentionsAndFollows(self) -> None:
        alice, bob = self.person(), self.person(through=self.line)

        # Bob signs in: first the sign-in page as anyone sees it.
        bob.open("login", "login")
        self.checkPage(bob, "sign-in")
        bob.signUp("bob", PASSWORD, "Bob")

        # Alice's first try is refused: each reason beside its field.
        alice.open("signup", "signup")
        alice.fill("Sign up", Username="a!", Email="alice@example.com", Password="short")
        alice.submit("Sign up")
        self.assertIn("3", alice.fieldError("Sign up", "username"))
        self.assertIn("10", alice.fieldError("Sign up", "password"))
        self.assertEqual(alice.field("Sign up", "Password").get_attribute("aria-invalid"), "true")
        alice.fill("Sign up", Username="alice", Display_name="Alice Liddell", Password=PASSWORD)
        alice.submit("Sign up")
        alice.waitForPage("home")

        # Bob opens his notifications, and stays there.
        bob.follow("#/notifications", "notifications")
        bob.script("window.stillTheSamePage = true")
        bob.waitFor(
            lambda: bob.script("return document.documentElement.dataset.stream") == "live",
            "Bob's stream never opened",
        )

        # Alice writes, with the count of characters as she types.
        text = alice.field("New post", "New post")
        text.send_keys("Hello @Bob, welcome!")
        self.assertEqual(alice.find("//p[@id='compose-count']").text, "20 / 5000")
        alice.submit("New post")
        mention = alice.find("//article[contains(@class, 'post')]//a[@class='mention']")
        self.assertEqual(mention.get_attribute("href").split("#")[1], "/profile/bob")
        self.checkPage(alice, "home")

        # Bob sees it come, without a reload.
        bob.find("//li[@data-kind='mention']")
        self.assertTrue(bob.script("return window.stillTheSamePage === true"))
        self.assertEqual(bob.find("//span[@id='unread']/span[@class='count']").text, "1")
        self.checkPage(bob, "notifications")

        # He follows Alice from her profile (the mention's actor links there).
        bob.find("//li[@data-kind='mention']//a[contains(., 'mentioned you')]").click()
        bob.waitForPage("profile")
        self.assertEqual(bob.find("//main/h1").text, "Alice Liddell")
        bob.find("//main//button[normalize-space()='Follow']").click()
        bob.find("//main//button[normalize-space()='Unfollow'][@aria-pressed='true']")
        bob.find("//article//a[@class='mention']")
        self.checkPage(bob, "profile")
        bob.follow("#/following", "following")
        bob.find("//main//li/a[normalize-space()='Alice Liddell']")

        # Alice posts again: a followed_post for Bob, live.
        bob.follow("#/notifications", "notifications")
        bob.waitForPage("notifications")
        alice.field("New post", "New post").send_keys("A second post, for my followers")
        alice.submit("New post")
        bob.find("//li[@data-kind='followed_post']")
        self.assertEqual(bob.find("//span[@id='unread']/span[@class='count']").text, "2")
        self.assertTrue(bob.script("return window.stillTheSamePage === true"))

        # Bob marks the mention read.
        bob.find("//li[@data-kind='mention']//button[normalize-space()='Mark read']").click()
        bob.waitFor(
            lambda: bob.find("//span[@id='unread']/span[@class='count']").text == "1",
            "the unread count did not go down",
        )

        # Bob's connection drops; Alice posts meanwhile; the stream opens
        # again (a new ticket, last_event_id) and what came is shown.
        self.whileCut(
            bob,
            lambda: self.post(
                alice,
                "Posted while Bob was away",
                "//p[@class='body'][.='Posted while Bob was away']",
            ),
        )
        bob.waitFor(
            lambda: len(bob.findAll("//li[@data-kind='followed_post']")) == 2,
            "what came while offline never arrived",
        )
        self.assertTrue(bob.script("return window.stillTheSamePage === true"))

        # Alice deletes her first post.
        first = "//article[.//p[@class='body'][starts-with(., 'Hello')]]"
        alice.find(first + "//button[normalize-space()='Delete']").click()
        alice.find(first + "//button[normalize-space()='Yes, delete it']").click()
        alice.waitFor(lambda: not alice.findAll(first), "the post was not deleted")

        # Twenty more posts (through the API, with her session): her
        # profile shows twenty, newest first, and the rest on "More".
        alice.driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            const {token} = JSON.parse(sessionStorage.getItem("txplatform.session"));
            (async () => {
              for (let i = 1; i <= 20; i += 1) {
                await fetch("/v1/posts", {method: "POST", body: JSON.stringify({body: `Post ${i}`}),
                  headers: {"Content-Type": "application/json", Authorization: `Bearer ${token}`}});
              }
            })().then(done, done);
            """
        )
        bob.go("profile/alice", "profile")
        posts = "//main//article[contains(@class, 'post')]"
        bob.waitFor(lambda: len(bob.findAll(posts)) == 20, "not a page of twenty posts")
        self.assertEqual(bob.findAll(posts + "//p[@class='body']")[0].text, "Post 20")
        bob.find("//main//button[normalize-space()='More']").click()
        bob.waitFor(lambda: len(bob.findAll(posts)) == 22, "More did not show the rest")
        self.assertEqual(
            bob.findAll(posts + "//p[@class='body']")[-1].text, "A second post, for my followers"
        )
        self.assertFalse(bob.find("//main//button[normalize-space()='More']").is_displayed())

    def test_droppedBeforeAny(self) -> Any:
        """
        Bob, with no notification yet (so nothing to resume from), loses
        his connection; Alice mentions him meanwhile; once the stream opens
        again the client looks again, and the mention shows.
        """
        return self.inThread(self.droppedBeforeAny)

    def droppedBeforeAny(self) -> None:
        alice, bob = self.person(), self.person(through=self.line)
        bob.signUp("bob", PASSWORD, "Bob")
        alice.signUp("alice", PASSWORD, "Alice")
        bob.follow("#/notifications", "notifications")
        bob.waitFor(
            lambda: bob.script("return document.documentElement.dataset.stream") == "live",
            "Bob's stream never opened",
        )
        self.whileCut(
            bob, lambda: self.post(alice, "While you were away, @bob", "//a[@class='mention']")
        )
        bob.find("//li[@data-kind='mention']")
        self.assertEqual(bob.find("//span[@id='unread']/span[@class='count']").text, "1")


class OwnAccountTests(BrowserTestCase):
    def test_settingsAndErrors(self) -> None:
        """
        A person signs in with the keyboard alone, on a phone-sized screen
        (nothing wider than it); changes display name and email; is told
        beside each field what is wrong; sees a 429's wait; keeps the token
        in this tab only (not in localStorage, not in a cookie), forgotten
        at sign-out; and deletes the account with the password.
        """
        return self.inThread(self.settingsAndErrors)

    def settingsAndErrors(self) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        carol = self.person()
        carol.signUp("carol", PASSWORD, "Carol")
        # Signing up again with her name: the conflict is shown beside it.
        other = self.person()
        other.open("signup", "signup")
        other.fill("Sign up", Username="carol", Email="c2@example.com", Password=PASSWORD)
        other.submit("Sign up")
        self.assertIn("taken", other.fieldError("Sign up", "username"))

        # The token is in this tab's sessionStorage only, never in a cookie.
        stored = carol.script(
            "return [localStorage.length, document.cookie, sessionStorage.getItem('txplatform.session')]"
        )
        self.assertEqual(stored[:2], [0, ""])
        self.assertIn('"token":', stored[2])
        self.assertEqual(carol.driver.get_cookies(), [])

        # Settings: display name and email; errors beside their fields.
        carol.follow("#/settings", "settings")
        self.checkPage(carol, "settings")
        carol.fill("Profile", Display_name="Carol Danvers", Email="not an email")
        carol.submit("Profile")
        self.assertIn("email", carol.fieldError("Profile", "email").lower())
        carol.fill("Profile", Email="carol.danvers@example.com")
        carol.submit("Profile")
        carol.find("//form[@aria-label='Profile']/p[@class='saved'][.='Saved.']")
        carol.open("settings", "settings")
        self.assertEqual(
            carol.field("Profile", "Email").get_attribute("value"), "carol.danvers@example.com"
        )
        self.assertEqual(
            carol.field("Profile", "Display name").get_attribute("value"), "Carol Danvers"
        )

        # A wrong current password, then a right one.
        carol.fill(
            "Password", Current_password="wrong password", New_password="another horse battery"
        )
        carol.submit("Password")
        self.assertIn("password", carol.formError("Password").lower())
        carol.fill("Password", Current_password=PASSWORD, New_password="another horse battery")
        carol.submit("Password")
        carol.find("//form[@aria-label='Password']/p[@class='saved']")

        # A post of HTML is its text: no element is made from it.
        html = '<img src="x" id="injected"> <b>bold</b> @carol'
        carol.follow("#/", "home")
        carol.field("New post", "New post").send_keys(html)
        carol.submit("New post")
        body = carol.find("//article//p[@class='body']")
        self.assertEqual(body.text, html)
        self.assertEqual(
            [e.tag_name for e in body.find_elements("xpath", "./*")], ["a"]
        )  # the mention only
        self.assertIsNone(carol.script("return document.getElementById('injected')"))

        # A post of too many characters cannot be sent.
        text = carol.field("New post", "New post")
        carol.script(
            "arguments[0].value = 'x'.repeat(5001); arguments[0].dispatchEvent(new Event('input'))",
            text,
        )
        self.assertIn("5001 / 5000", carol.find("//p[@id='compose-count']").text)
        self.assertFalse(
            carol.find("//form[@aria-label='New post']//button[@type='submit']").is_enabled()
        )

        # Signing out forgets the token.
        carol.find("//nav//button[normalize-space()='Sign out']").click()
        carol.waitForPage("login")
        self.assertEqual(carol.script("return sessionStorage.length + localStorage.length"), 0)

        # On a phone, with the keyboard alone.
        phone = self.person(375, 812)
        phone.open("login", "login")
        self.assertEqual(phone.script("return window.innerWidth"), 375)
        self.assertLessEqual(
            phone.script("return document.documentElement.scrollWidth"),
            phone.script("return window.innerWidth"),
        )
        username = phone.field("Sign in", "Username")
        keys = ActionChains(phone.driver)
        for _ in range(12):
            if phone.script("return document.activeElement") == username:
                break
            keys.send_keys(Keys.TAB).perform()
        self.assertEqual(phone.script("return document.activeElement"), username)
        ActionChains(phone.driver).send_keys("other", Keys.TAB, "wrong").perform()
        ActionChains(phone.driver).send_keys(Keys.ENTER).perform()
        self.assertTrue(phone.formError("Sign in"))
        phone.signUp("dave", PASSWORD, "Dave")
        for route, page in [
            ("", "home"),
            ("notifications", "notifications"),
            ("settings", "settings"),
        ]:
            phone.go(route, page)
            self.assertLessEqual(
                phone.script("return document.documentElement.scrollWidth"),
                phone.script("return window.innerWidth"),
                page,
            )
        phone.go("", "home")
        self.checkPage(phone, "phone-home")

        # Dave deletes his account: a wrong password is refused, then done.
        phone.go("settings", "settings")
        phone.fill("Delete account", Password="wrong password")
        phone.submit("Delete account")
        self.assertTrue(phone.formError("Delete account"))
        phone.fill("Delete account", Password=PASSWORD)
        phone.submit("Delete account")
        phone.waitForPage("signup")
        self.assertEqual(phone.script("return sessionStorage.length"), 0)
        phone.open("login", "login")
        phone.fill("Sign in", Username="dave", Password=PASSWORD)
        phone.submit("Sign in")
        self.assertTrue(phone.formError("Sign in"))

        # Too many failed sign-ins (last: the address is held back after
        # them): the wait is shown, the button held.
        # What the button says, each time it changes (its hold is short).
        carol.script(
            """
            window.buttonTexts = [];
            const button = document.querySelector("form[aria-label='Sign in'] button");
            new MutationObserver(() => window.buttonTexts.push(button.textContent))
              .observe(button, {childList: true, characterData: true, subtree: true});
            """
        )
        for _ in range(8):
            carol.fill("Sign in", Username="carol", Password="not her password")
            carol.submit("Sign in")
            message = carol.formError("Sign in")
            if "try again in" in message:
                break
            carol.waitFor(
                lambda: carol.find(
                    "//form[@aria-label='Sign in']//button[@type='submit']"
                ).is_enabled(),
                "the button stayed disabled",
            )
        self.assertRegex(message, r"^Too many failed logins: try again in \d+ s")
        self.assertIn("Sign in (wait", " ".join(carol.script("return window.buttonTexts")))
        self.checkPage(carol, "sign-in-error")


class FollowingTests(BrowserTestCase):
    def test_moreAndDeleted(self) -> Any:
        """
        Erin follows twenty-one people: her Following page lists twenty, the
        most recently followed first, and the last on "More", which takes
        the keyboard's focus to it.  The one she followed first mentions
        her, then deletes the account: it leaves her Following page, its
        profile is no one's, and its mention leaves her notifications and
        their unread count.
        """
        return self.inThread(self.moreAndDeleted)

    def moreAndDeleted(self) -> None:
        erin = self.person()
        erin.signUp("erin", PASSWORD, "Erin")
        # The others, her follows and the mention, through the API.
        made = erin.driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            const password = arguments[0];
            const {token} = JSON.parse(sessionStorage.getItem("txplatform.session"));
            const send = (method, path, body, bearer) => fetch(path, {
              method, body: body && JSON.stringify(body),
              headers: {"Content-Type": "application/json",
                        ...(bearer ? {Authorization: `Bearer ${bearer}`} : {})}});
            (async () => {
              const statuses = [];
              for (let i = 0; i < 21; i += 1) {
                const username = `friend${String(i).padStart(2, "0")}`;
                const account = {username, email: `${username}@example.com`, password,
                                 display_name: `Friend ${i}`};
                statuses.push((await send("POST", "/v1/accounts", account)).status);
                statuses.push((await send("PUT", `/v1/me/following/${username}`, null, token)).status);
              }
              const login = await send("POST", "/v1/sessions", {username: "friend00", password});
              const session = await login.json();
              statuses.push(login.status);
              statuses.push((await send("POST", "/v1/posts", {body: "Hello @erin"}, session.token)).status);
              return {statuses, token: session.token};
            })().then(done, (error) => done({error: String(error)}));
            """,
            PASSWORD,
        )
        self.assertEqual(made["statuses"], [201, 204] * 21 + [201, 201], made)

        # Twenty, newest first; "More" shows the twenty-first and focuses it.
        erin.follow("#/following", "following")
        followed = "//main//ul[@aria-label='Accounts you follow']/li/a"
        erin.waitFor(lambda: len(erin.findAll(followed)) == 20, "not a page of twenty follows")
        self.assertEqual(erin.findAll(followed)[0].text, "Friend 20")
        self.assertEqual(erin.findAll(followed)[-1].text, "Friend 1")
        self.checkPage(erin, "following")
        more = erin.find("//main//button[normalize-space()='More']")
        self.assertTrue(more.is_displayed())
        more.click()
        erin.waitFor(lambda: len(erin.findAll(followed)) == 21, "More did not show the rest")
        last = erin.findAll(followed)[-1]
        self.assertEqual(last.text, "Friend 0")
        self.assertEqual(erin.script("return document.activeElement"), last)
        self.assertFalse(more.is_displayed())

        # The mention came.
        erin.follow("#/notifications", "notifications")
        mention = "//li[@data-kind='mention'][contains(., '@friend00 mentioned you')]"
        erin.find(mention)

        # friend00 deletes the account.
        status = erin.driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            fetch("/v1/me", {method: "DELETE", body: JSON.stringify({password: arguments[1]}),
                             headers: {"Content-Type": "application/json",
                                       Authorization: `Bearer ${arguments[0]}`}})
              .then((response) => done(response.status), (error) => done(String(error)));
            """,
            made["token"],
            PASSWORD,
        )
        self.assertEqual(status, 204)

        # Its mention goes (the Notify service hears of it by an event).
        def mentionGone() -> bool:
            # The page again (the same address would not load it again).
            erin.go("", "home")
            erin.go("notifications", "notifications")
            # Its list read: an item, or the line saying there is none.
            erin.find("//main//*[contains(@class, 'list')]/*")
            return not erin.findAll(mention)

        erin.waitFor(mentionGone, "the deleted account's mention stayed")
        # The unread badge no longer counts it.
        erin.waitFor(
            lambda: not erin.find("//span[@id='unread']").is_displayed(),
            "the unread badge still counts the deleted account's mention",
        )
        # Gone from her follows: twenty now, all on one page.
        erin.go("following", "following")
        erin.waitFor(lambda: len(erin.findAll(followed)) == 20, "the deleted account stayed")
        self.assertNotIn("Friend 0", [a.text for a in erin.findAll(followed)])
        self.assertFalse(erin.find("//main//button[normalize-space()='More']").is_displayed())
        # Its profile is no one's.
        erin.go("profile/friend00", "profile")
        self.assertEqual(erin.find("//main/h1").text, "No such profile")


class SetUpTests(SynchronousTestCase):
    def test_ciInstalls(self) -> None:
        """
        .ci/run installs what the browser tests need when it is missing:
        Debian's Chromium and its driver, and axe-core from the lock file.
        """
        with open(os.path.join(CHECKOUT, ".ci", "run"), encoding="utf-8") as f:
            script = f.read()
        self.assertRegex(script, r"need_packages [^\n]*(\\\n[^\n]*)*chromium=chromium")
        self.assertRegex(script, r"need_packages [^\n]*(\\\n[^\n]*)*chromedriver=chromium-driver")
        self.assertIn("(cd tests/web && npm ci", script)
        with open(os.path.join(CHECKOUT, "tests", "web", "package-lock.json")) as f:
            locked = json.load(f)
        self.assertRegex(locked["packages"]["node_modules/axe-core"]["version"], r"^\d+\.\d+\.\d+$")

    def test_givenPaths(self) -> None:
        """
        The browser and its driver are Debian's, by path: Selenium Manager
        (which would download them) is never asked.
        """
        from . import browser

        self.assertEqual(
            (browser.CHROMIUM, browser.CHROMEDRIVER), ("/usr/bin/chromium", "/usr/bin/chromedriver")
        )
        with open(browser.__file__, encoding="utf-8") as f:
            source = f.read()
        self.assertIn("Service(executable_path=CHROMEDRIVER)", source)
        self.assertIn("options.binary_location = CHROMIUM", source)


class DocumentTests(SynchronousTestCase):
    """
    docs/web.md and the README show the screenshots these tests take, and
    the command that refreshes them runs these tests as written.
    """

    def read(self, *path: str) -> str:
        with open(os.path.join(CHECKOUT, *path), encoding="utf-8") as f:
            return f.read()

    def test_command(self) -> None:
        """
        The one shell block of docs/web.md sets the variable the tests read
        to the folder the documents show, and runs this module.
        """
        [block] = re.findall(r"```sh\n(.*?)```", self.read("docs", "web.md"), re.S)
        self.assertEqual(
            shlex.split(block),
            [
                f"{SCREENSHOTS}=docs/screenshots",
                ".venv/bin/python",
                "-m",
                "twisted.trial",
                __name__,
            ],
        )

    def test_screenshots(self) -> None:
        """
        Each screenshot the tests take is in docs/screenshots and shown in
        docs/web.md, and nothing else is; the README shows some of them.
        """
        with open(__file__, encoding="utf-8") as f:
            taken = set(re.findall(r'self\.checkPage\(\w+, "([\w-]+)"\)', f.read()))
        self.assertGreaterEqual(taken, {"sign-in", "home", "profile", "notifications", "settings"})
        folder = os.path.join(CHECKOUT, "docs", "screenshots")
        self.assertEqual({n[: -len(".png")] for n in os.listdir(folder)}, taken)
        shown = set(re.findall(r"\]\(screenshots/([\w-]+)\.png\)", self.read("docs", "web.md")))
        self.assertEqual(shown, taken)
        inReadme = re.findall(r"\]\(docs/screenshots/([\w-]+)\.png\)", self.read("README.md"))
        self.assertTrue(inReadme)
        self.assertLessEqual(set(inReadme), taken)

    def test_policyDocumented(self) -> None:
        """
        docs/web.md gives the policy as it is sent, and --no-web.
        """
        from txplatform_gateway.webclient import CONTENT_SECURITY_POLICY

        document = self.read("docs", "web.md")
        self.assertIn(CONTENT_SECURITY_POLICY, document)
        self.assertIn("--no-web", document)
