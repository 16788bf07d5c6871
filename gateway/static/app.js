// The web client: a page per hash route (#/profile/alice), drawn from the
// public HTTP API only.

import {
  ApiError,
  call,
  currentSession,
  forgetSession,
  keepSession,
  onSessionEnded,
  pagePath,
} from "./api.js";
import {characters, h, when, withMentions} from "./dom.js";
import {NotificationStream} from "./stream.js";

const POST_MAX = 5000;
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const alertBox = document.getElementById("alert");
const announcer = document.getElementById("announce");

const state = {
  unread: 0,
  seen: new Set(), // notification ids counted or shown
  onNotification: null, // the notifications page, while it is shown
  view: 0, // which rendering is current: late answers of an old one are dropped
  streamState: "stopped",
};

const stream = new NotificationStream({
  onNotification: (notification) => arrived(notification),
  // Opened with no notification to resume from: one made between the
  // session's first look and the stream's start is found by looking again.
  onCatchUp: async () => {
    const unread = await call("GET", pagePath("/v1/notifications", null, {unread: "true", limit: 100}));
    for (const notification of unread.items.slice().reverse()) arrived(notification);
  },
  onState: (value) => {
    state.streamState = value;
    document.documentElement.dataset.stream = value;
    const indicator = document.getElementById("stream-state");
    if (indicator) indicator.textContent = streamText(value);
  },
});

function streamText(value) {
  return {
    live: "Live: new notifications appear here as they come.",
    connecting: "Connecting…",
    reconnecting: "Connection lost: reconnecting…",
    stopped: "",
  }[value];
}

// Messages for everyone: a visible banner for errors, a polite status for news.

function showAlert(message) {
  alertBox.replaceChildren(
    h("span", {}, message),
    h("button", {type: "button", class: "link", onclick: () => (alertBox.hidden = true)}, "Dismiss"),
  );
  alertBox.hidden = false;
}

function announce(message) {
  announcer.textContent = "";
  // A change the screen reader notices even when the text repeats.
  setTimeout(() => (announcer.textContent = message), 50);
}

window.addEventListener("error", () => showAlert("Something went wrong on this page: reload it."));
window.addEventListener("unhandledrejection", (event) => {
  const error = event.reason;
  showAlert(error instanceof ApiError ? describe(error) : "Something went wrong: reload the page.");
});

/** What an error says to a person: its detail, and the wait of a 429. */
function describe(error) {
  if (!(error instanceof ApiError)) return String(error.message || error);
  let text = error.problem.detail || error.problem.title || `HTTP ${error.status}`;
  text = text.charAt(0).toUpperCase() + text.slice(1);
  if (error.status === 429 && !/\d+ s\b/.test(text)) {
    text = `Too many requests: wait ${error.retryAfter || 1} s and try again (${text}).`;
  }
  return text;
}

// Forms: labelled fields, each with its own error line.

let fieldCount = 0;

function field({name, label, type = "text", autocomplete, hint, required = true, value, multiline}) {
  fieldCount += 1;
  const id = `f${fieldCount}-${name}`;
  const errorId = `${id}-error`;
  const hintId = hint ? `${id}-hint` : null;
  const attributes = {
    id,
    name,
    autocomplete,
    required,
    "aria-describedby": [hintId, errorId].filter(Boolean).join(" "),
  };
  const control = multiline
    ? h("textarea", {...attributes, rows: 4})
    : h("input", {...attributes, type});
  if (value !== undefined && value !== null) control.value = value;
  return h(
    "div",
    {class: "field", "data-field": name},
    h("label", {for: id}, label),
    hint ? h("p", {class: "hint", id: hintId}, hint) : null,
    control,
    h("p", {class: "field-error", id: errorId}),
  );
}

function form(name, children, submitLabel, onSubmit) {
  const formError = h("p", {class: "form-error", role: "alert"});
  const button = h("button", {type: "submit"}, submitLabel);
  const element = h("form", {"aria-label": name, novalidate: true}, children, formError, button);
  element.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(element);
    button.disabled = true;
    let wait = 0;
    try {
      await onSubmit(values(element), element);
    } catch (error) {
      wait = showErrors(element, error);
    } finally {
      if (wait > 0) holdButton(button, submitLabel, wait);
      else button.disabled = false;
    }
  });
  return element;
}

function values(element) {
  const found = {};
  for (const control of element.querySelectorAll("input, textarea")) {
    found[control.name] = control.value;
  }
  return found;
}

function clearErrors(element) {
  for (const line of element.querySelectorAll(".field-error, .form-error")) line.textContent = "";
  for (const control of element.querySelectorAll("[aria-invalid]")) {
    control.removeAttribute("aria-invalid");
  }
}

/** Put each error beside its field (the rest above the button); the wait of a 429. */
function showErrors(element, error) {
  if (!(error instanceof ApiError)) throw error;
  const rest = [];
  let first = null;
  const place = (name, reason) => {
    const box = element.querySelector(`[data-field="${CSS.escape(name)}"]`);
    if (!box) return false;
    box.querySelector(".field-error").textContent = reason;
    const control = box.querySelector("input, textarea");
    control.setAttribute("aria-invalid", "true");
    first = first || control;
    return true;
  };
  for (const {field: name, reason} of error.fieldErrors) {
    if (!place(name, reason)) rest.push(name ? `${name}: ${reason}` : reason);
  }
  if (error.fieldErrors.length === 0) {
    // A conflict names its field in words ("that username is taken").
    const detail = error.problem.detail || "";
    const named = error.status === 409 && ["username", "email"].find((n) => detail.includes(n));
    if (!(named && place(named, detail))) rest.push(describe(error));
  }
  element.querySelector(".form-error").textContent = rest.join(" ");
  if (first) first.focus();
  return error.status === 429 ? error.retryAfter || 1 : 0;
}

function holdButton(button, label, seconds) {
  let left = Math.ceil(seconds);
  button.disabled = true;
  const tick = () => {
    if (left <= 0 || !button.isConnected) {
      button.disabled = false;
      button.textContent = label;
      return;
    }
    button.textContent = `${label} (wait ${left} s)`;
    left -= 1;
    setTimeout(tick, 1000);
  };
  tick();
}

// Posts and lists.

function postItem(post, {onDeleted} = {}) {
  const me = currentSession()?.username;
  const actions = h("div", {class: "actions"});
  const item = h(
    "article",
    {class: "post", "aria-label": `Post by ${post.author}`},
    h(
      "p",
      {class: "meta"},
      h("a", {href: `#/profile/${post.author}`}, `@${post.author}`),
      " · ",
      h("a", {href: `#/post/${post.id}`, class: "muted"}, when(post.created_at)),
    ),
    h("p", {class: "body"}, withMentions(post.body)),
    actions,
  );
  if (me && me === post.author) {
    const ask = () => {
      const yes = h("button", {type: "button", class: "danger"}, "Yes, delete it");
      const no = h("button", {type: "button", class: "secondary"}, "Keep it");
      yes.addEventListener("click", async () => {
        yes.disabled = true;
        try {
          await call("DELETE", `/v1/posts/${post.id}`);
          item.remove();
          announce("Post deleted.");
          onDeleted?.();
        } catch (error) {
          showAlert(describe(error));
          yes.disabled = false;
        }
      });
      no.addEventListener("click", () => {
        actions.replaceChildren(remove);
        remove.focus();
      });
      actions.replaceChildren(h("span", {}, "Delete this post? "), yes, no);
      no.focus();
    };
    const remove = h("button", {type: "button", class: "secondary", onclick: ask}, "Delete");
    actions.append(remove);
  }
  return item;
}

/**
 * A list read page by page: the first page now, the next on "More".
 * load(cursor) gives {items, next}; render(item) an element, or null to skip it.
 */
function pagedList({label, load, render, empty, tag = "div"}) {
  const list = h(tag, {class: "list", "aria-label": label});
  const more = h("button", {type: "button", class: "secondary more", hidden: true}, "More");
  const box = h("section", {"aria-label": label}, list, more);
  let cursor = null;
  const view = state.view;
  const next = async () => {
    more.disabled = true;
    try {
      const page = await load(cursor);
      if (view !== state.view) return;
      for (const item of page.items) {
        const element = render(item);
        if (element) list.append(element); // null: shown already
      }
      cursor = page.next;
      more.hidden = !cursor;
      if (!list.firstChild) list.append(h("p", {class: "muted empty"}, empty));
    } catch (error) {
      list.append(h("p", {class: "form-error", role: "alert"}, describe(error)));
    } finally {
      more.disabled = false;
    }
  };
  more.addEventListener("click", async () => {
    const count = list.children.length;
    await next();
    // Keyboard users go on from the first new item.
    const first = list.children[count];
    first?.querySelector("a, button")?.focus();
  });
  box.ready = next();
  box.list = list;
  return box;
}

function heading(text) {
  return h("h1", {tabindex: "-1"}, text);
}

// The pages.

function signInPage() {
  const signIn = form(
    "Sign in",
    [
      field({name: "username", label: "Username", autocomplete: "username"}),
      field({name: "password", label: "Password", type: "password", autocomplete: "current-password"}),
    ],
    "Sign in",
    async ({username, password}) => {
      await logIn(username, password);
    },
  );
  return [
    heading("Sign in"),
    signIn,
    h("p", {}, "No account yet? ", h("a", {href: "#/signup"}, "Sign up")),
  ];
}

function signUpPage() {
  const signUp = form(
    "Sign up",
    [
      field({
        name: "username",
        label: "Username",
        autocomplete: "username",
        hint: "3 to 32 letters, digits or _.",
      }),
      field({name: "display_name", label: "Display name", autocomplete: "name", required: false}),
      field({name: "email", label: "Email", type: "email", autocomplete: "email"}),
      field({
        name: "password",
        label: "Password",
        type: "password",
        autocomplete: "new-password",
        hint: "At least 10 characters.",
      }),
    ],
    "Sign up",
    async (given) => {
      const body = {username: given.username, email: given.email, password: given.password};
      if (given.display_name.trim()) body.display_name = given.display_name;
      await call("POST", "/v1/accounts", body, {anonymous: true});
      await logIn(given.username, given.password);
    },
  );
  return [
    heading("Sign up"),
    signUp,
    h("p", {}, "Already have an account? ", h("a", {href: "#/login"}, "Sign in")),
  ];
}

async function logIn(username, password) {
  const created = await call("POST", "/v1/sessions", {username, password}, {anonymous: true});
  keepSession({token: created.token, expires_at: created.expires_at, username: null});
  const me = await call("GET", "/v1/me");
  keepSession({...currentSession(), username: me.username});
  startSession();
  location.hash = "#/";
}

function composer(onPosted) {
  const counter = h("p", {class: "counter", id: "compose-count"}, `0 / ${POST_MAX}`);
  const box = field({name: "body", label: "New post", multiline: true, hint: "Mention someone with @username."});
  const textarea = box.querySelector("textarea");
  textarea.setAttribute("aria-describedby", `${textarea.getAttribute("aria-describedby")} compose-count`);
  box.insertBefore(counter, box.querySelector(".field-error"));
  const composed = form("New post", [box], "Post", async ({body}, element) => {
    if (characters(body) > POST_MAX) {
      throw new ApiError(400, {errors: [{field: "body", reason: `at most ${POST_MAX} characters`}]});
    }
    const post = await call("POST", "/v1/posts", {body}, {idempotent: true});
    element.reset();
    update();
    announce("Posted.");
    onPosted(post);
  });
  const button = composed.querySelector("button[type=submit]");
  const update = () => {
    const count = characters(textarea.value);
    counter.textContent = `${count} / ${POST_MAX}`;
    const over = count > POST_MAX;
    counter.classList.toggle("over", over);
    button.disabled = over;
    if (over) counter.textContent += ` (${count - POST_MAX} too many)`;
  };
  textarea.addEventListener("input", update);
  return composed;
}

function homePage() {
  const me = currentSession().username;
  let posts;
  const compose = composer((post) => {
    posts.list.querySelector(".empty")?.remove();
    posts.list.prepend(postItem(post));
  });
  posts = pagedList({
    label: "Your posts",
    load: (cursor) => call("GET", pagePath(`/v1/accounts/${me}/posts`, cursor)),
    render: (post) => postItem(post),
    empty: "You have not posted yet.",
  });
  return [heading("Home"), compose, h("h2", {}, "Your posts"), posts];
}

async function followsOf() {
  // Whom I follow, to say Follow or Unfollow (the first pages suffice for a person).
  const names = new Set();
  let cursor = null;
  for (let i = 0; i < 10; i += 1) {
    const page = await call("GET", pagePath("/v1/me/following", cursor, {limit: 100}));
    for (const account of page.items) names.add(account.username);
    cursor = page.next;
    if (!cursor) break;
  }
  return names;
}

async function profilePage(username) {
  const view = state.view;
  let account;
  try {
    account = await call("GET", `/v1/accounts/${encodeURIComponent(username)}`);
  } catch (error) {
    if (error.status === 404 || error.status === 400) {
      return [heading("No such profile"), h("p", {}, `There is no one called @${username} here.`)];
    }
    throw error;
  }
  const session = currentSession();
  const parts = [
    heading(account.display_name || account.username),
    h("p", {class: "muted"}, `@${account.username} · joined `, when(account.created_at)),
  ];
  if (session && session.username !== account.username) {
    const following = await followsOf();
    if (view !== state.view) return [];
    const button = h("button", {type: "button", "aria-pressed": String(following.has(account.username))});
    const label = () => {
      const on = button.getAttribute("aria-pressed") === "true";
      button.textContent = on ? "Unfollow" : "Follow";
      button.className = on ? "secondary" : "";
    };
    label();
    button.addEventListener("click", async () => {
      const on = button.getAttribute("aria-pressed") === "true";
      button.disabled = true;
      try {
        await call(on ? "DELETE" : "PUT", `/v1/me/following/${account.username}`);
        button.setAttribute("aria-pressed", String(!on));
        label();
        announce(on ? `You no longer follow @${account.username}.` : `You follow @${account.username}.`);
      } catch (error) {
        showAlert(describe(error));
      } finally {
        button.disabled = false;
      }
    });
    parts.push(h("p", {}, button));
  }
  parts.push(
    h("h2", {}, "Posts"),
    pagedList({
      label: `Posts by ${account.username}`,
      load: (cursor) => call("GET", pagePath(`/v1/accounts/${account.username}/posts`, cursor)),
      render: (post) => postItem(post),
      empty: "No posts yet.",
    }),
  );
  return parts;
}

function followingPage() {
  return [
    heading("Following"),
    pagedList({
      label: "Accounts you follow",
      tag: "ul",
      load: (cursor) => call("GET", pagePath("/v1/me/following", cursor)),
      render: (account) =>
        h(
          "li",
          {},
          h("a", {href: `#/profile/${account.username}`}, account.display_name || account.username),
          h("span", {class: "muted"}, ` @${account.username}`),
        ),
      empty: "You follow no one yet: open a profile and choose Follow.",
    }),
  ];
}

function notificationText(notification) {
  const actor = notification.actor;
  const what = {
    mention: "mentioned you",
    followed_post: "posted",
    liked: "liked your post",
  }[notification.kind];
  return `@${actor} ${what || notification.kind.replaceAll("_", " ")}`;
}

/**
 * The badge's count as the service has it.  The stream only brings new
 * notifications: those the service removed since (their post or their
 * author deleted) stay counted until this looks again.
 */
async function recountUnread() {
  const unread = await call("GET", pagePath("/v1/notifications", null, {unread: "true", limit: 100}));
  for (const n of unread.items) state.seen.add(n.id);
  setUnread(unread.items.length);
}

function setUnread(count) {
  state.unread = Math.max(0, count);
  const badge = document.getElementById("unread");
  if (!badge) return;
  badge.querySelector(".count").textContent = state.unread > 99 ? "99+" : String(state.unread);
  badge.hidden = state.unread === 0;
}

function notificationItem(notification) {
  const item = h(
    "li",
    {class: notification.read ? "notification" : "notification unread", "data-id": notification.id, "data-kind": notification.kind},
    h("p", {}, h("a", {href: `#/profile/${notification.actor}`}, notificationText(notification))),
    h("p", {class: "muted"}, when(notification.created_at), " · ", h("a", {href: `#/post/${notification.post_id}`}, "View post")),
  );
  if (!notification.read) {
    const mark = h("button", {type: "button", class: "secondary"}, "Mark read");
    mark.addEventListener("click", async () => {
      mark.disabled = true;
      try {
        await markRead(notification);
        mark.remove();
        item.classList.remove("unread");
      } catch (error) {
        showAlert(describe(error));
        mark.disabled = false;
      }
    });
    item.append(mark);
  }
  return item;
}

async function markRead(notification) {
  await call("POST", `/v1/notifications/${notification.id}/read`);
  if (!notification.read) {
    notification.read = true;
    setUnread(state.unread - 1);
  }
}

function notificationsPage() {
  const indicator = h("p", {id: "stream-state", class: "muted"}, streamText(state.streamState));
  const list = pagedList({
    label: "Your notifications",
    tag: "ul",
    load: (cursor) => call("GET", pagePath("/v1/notifications", cursor)),
    render: (notification) => {
      state.seen.add(notification.id);
      // One that the stream brought while this page loaded is shown once.
      if (list.list.querySelector(`li[data-id="${CSS.escape(notification.id)}"]`)) return null;
      return notificationItem(notification);
    },
    empty: "Nothing yet: mentions of you and posts of those you follow show up here.",
  });
  const markAll = h("button", {type: "button", class: "secondary"}, "Mark all read");
  markAll.addEventListener("click", async () => {
    markAll.disabled = true;
    try {
      for (const item of list.list.querySelectorAll("li.unread")) item.querySelector("button")?.click();
      announce("All shown notifications marked read.");
    } finally {
      markAll.disabled = false;
    }
  });
  state.onNotification = (notification) => {
    list.list.querySelector(".empty")?.remove();
    list.list.prepend(notificationItem(notification));
  };
  // What this page lists, the badge counts (a failure shows in the list).
  recountUnread().catch(() => {});
  return [heading("Notifications"), indicator, h("p", {}, markAll), list];
}

function arrived(notification) {
  if (state.seen.has(notification.id)) return;
  state.seen.add(notification.id);
  if (!notification.read) setUnread(state.unread + 1);
  announce(`New notification: ${notificationText(notification)}.`);
  state.onNotification?.(notification);
}

async function postPage(postId) {
  try {
    const post = await call("GET", `/v1/posts/${encodeURIComponent(postId)}`);
    return [heading(`Post by @${post.author}`), postItem(post, {onDeleted: () => (location.hash = "#/")})];
  } catch (error) {
    if (error.status === 404 || error.status === 400) {
      return [heading("No such post"), h("p", {}, "It may have been deleted.")];
    }
    throw error;
  }
}

async function settingsPage() {
  const me = await call("GET", "/v1/me");
  const profile = form(
    "Profile",
    [
      field({name: "display_name", label: "Display name", autocomplete: "name", value: me.display_name}),
      field({name: "email", label: "Email", type: "email", autocomplete: "email", value: me.email}),
    ],
    "Save profile",
    async ({display_name, email}) => {
      const body = {};
      if (display_name !== me.display_name) body.display_name = display_name;
      if (email !== me.email) body.email = email;
      if (Object.keys(body).length === 0) {
        announce("Nothing changed.");
        return;
      }
      Object.assign(me, await call("PATCH", "/v1/me", body));
      announce("Profile saved.");
      showSaved(profile, "Saved.");
    },
  );
  const password = form(
    "Password",
    [
      field({name: "current_password", label: "Current password", type: "password", autocomplete: "current-password"}),
      field({name: "password", label: "New password", type: "password", autocomplete: "new-password", hint: "At least 10 characters. Your other sessions end."}),
    ],
    "Change password",
    async (given, element) => {
      await call("PATCH", "/v1/me", given);
      element.reset();
      announce("Password changed.");
      showSaved(password, "Password changed; your other sessions ended.");
    },
  );
  const remove = form(
    "Delete account",
    [field({name: "password", label: "Password", type: "password", autocomplete: "current-password", hint: "Your account, posts and notifications are deleted for good."})],
    "Delete my account",
    async (given) => {
      await call("DELETE", "/v1/me", given);
      endSession();
      showAlert("Your account is deleted.");
      location.hash = "#/signup";
    },
  );
  remove.querySelector("button[type=submit]").className = "danger";
  return [
    heading("Settings"),
    h("p", {class: "muted"}, `Signed in as @${me.username}.`),
    h("h2", {}, "Profile"),
    profile,
    h("h2", {}, "Password"),
    password,
    h("h2", {}, "Delete account"),
    remove,
  ];
}

function showSaved(element, message) {
  element.querySelector(".form-error").textContent = "";
  let saved = element.querySelector(".saved");
  if (!saved) {
    saved = h("p", {class: "saved", role: "status"});
    element.append(saved);
  }
  saved.textContent = message;
}

// Session, navigation and routing.

async function startSession() {
  try {
    const newest = await call("GET", pagePath("/v1/notifications", null, {limit: 1}));
    await recountUnread();
    // From the newest one known: what comes after it is caught up first.
    stream.start(newest.items[0]?.id || null);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) showAlert(describe(error));
  }
}

function endSession() {
  stream.stop();
  forgetSession();
  state.seen.clear();
  setUnread(0);
  drawNav();
}

async function logOut() {
  try {
    await call("DELETE", "/v1/sessions/current");
  } catch {
    // Forgotten here either way: the token is gone from this tab.
  }
  endSession();
  announce("Signed out.");
  location.hash = "#/login";
}

function drawNav() {
  const session = currentSession();
  const link = (href, text, attributes = {}) => h("a", {href, ...attributes}, text);
  if (!session) {
    nav.replaceChildren(h("ul", {}, h("li", {}, link("#/login", "Sign in")), h("li", {}, link("#/signup", "Sign up"))));
  } else {
    const badge = h(
      "span",
      {id: "unread", class: "badge", hidden: state.unread === 0},
      h("span", {class: "count"}, String(state.unread)),
      h("span", {class: "visually-hidden"}, " unread"),
    );
    nav.replaceChildren(
      h(
        "ul",
        {},
        h("li", {}, link("#/", "Home")),
        h("li", {}, link(`#/profile/${session.username}`, "Profile")),
        h("li", {}, link("#/following", "Following")),
        h("li", {}, link("#/notifications", ["Notifications ", badge], {id: "nav-notifications"})),
        h("li", {}, link("#/settings", "Settings")),
        h("li", {}, h("button", {type: "button", class: "link", onclick: logOut}, "Sign out")),
      ),
    );
    setUnread(state.unread);
  }
  markCurrent();
}

function markCurrent() {
  for (const a of nav.querySelectorAll("a")) {
    if (a.getAttribute("href") === (location.hash || "#/")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

const PUBLIC = new Set(["login", "signup", "profile", "post"]);

async function route(focus = true) {
  const hash = location.hash || "#/";
  if (!hash.startsWith("#/")) return; // an in-page link (the skip link)
  const [name, ...rest] = hash.slice(2).split("/");
  const argument = decodeURIComponent(rest.join("/"));
  const session = currentSession();
  if (!session && !PUBLIC.has(name)) {
    location.replace("#/login");
    return;
  }
  if (session && (name === "login" || name === "signup")) {
    location.replace("#/");
    return;
  }
  state.view += 1;
  state.onNotification = null;
  const view = state.view;
  drawNav();
  const pages = {
    "": homePage,
    login: signInPage,
    signup: signUpPage,
    profile: () => profilePage(argument),
    following: followingPage,
    notifications: notificationsPage,
    settings: settingsPage,
    post: () => postPage(argument),
  };
  const page = pages[name];
  document.documentElement.dataset.page = "loading";
  let content;
  try {
    content = page ? await page() : [heading("Not found"), h("p", {}, h("a", {href: "#/"}, "Home"))];
  } catch (error) {
    content = [heading("Something went wrong"), h("p", {class: "form-error"}, describe(error)), h("p", {}, h("a", {href: "#/"}, "Home"))];
  }
  if (view !== state.view) return;
  main.replaceChildren(...content.flat());
  const title = main.querySelector("h1");
  document.title = title ? `${title.textContent} · txplatform` : "txplatform";
  document.documentElement.dataset.page = name || "home";
  if (focus) title?.focus();
}

onSessionEnded(() => {
  endSession();
  showAlert("Your session has ended: sign in again.");
  location.hash = "#/login";
});

document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", () => route(true));
if (currentSession()) startSession();
route(false);
