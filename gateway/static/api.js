// The public HTTP API, and the session this tab holds.
//
// The token lives in this module's memory and in sessionStorage (this tab
// only; it survives a reload, not the tab): never in a cookie, so the
// browser never sends it on its own and no other site can make requests
// with it (no CSRF), and never in localStorage, so it is not shared with
// other tabs nor left behind after the tab. See docs/security.md.

const KEY = "txplatform.session";

/** A problem the API answered (RFC 9457), or a failure to reach it. */
export class ApiError extends Error {
  constructor(status, problem, retryAfter = 0) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.retryAfter = retryAfter;
  }

  /** The field errors of a 400: [{field, reason}]. */
  get fieldErrors() {
    return Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }
}

let session = null;
try {
  session = JSON.parse(sessionStorage.getItem(KEY) || "null");
} catch {
  session = null;
}
const sessionEnded = new Set();

export function currentSession() {
  return session;
}

export function keepSession(value) {
  session = value;
  sessionStorage.setItem(KEY, JSON.stringify(value));
}

export function forgetSession() {
  session = null;
  sessionStorage.removeItem(KEY);
}

/** Call listener when the API says the session is over (a 401). */
export function onSessionEnded(listener) {
  sessionEnded.add(listener);
}

function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Call the API: the JSON answer (null for 204), or an ApiError.
 * options.idempotent sends an Idempotency-Key, so a retried POST is done once.
 */
export async function call(method, path, body = undefined, options = {}) {
  const headers = {Accept: "application/json, application/problem+json"};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const held = session;
  if (held && !options.anonymous) headers.Authorization = `Bearer ${held.token}`;
  if (options.idempotent) headers["Idempotency-Key"] = randomKey();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, {
      title: "Network error",
      detail: "the server could not be reached: check the connection and try again",
    });
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (response.ok) return data;
  const problem =
    data && typeof data === "object"
      ? data
      : {title: response.statusText, detail: `the server answered ${response.status}`};
  const retryAfter = Number(response.headers.get("Retry-After") || problem.retry_after || 0);
  if (response.status === 401 && held && headers.Authorization && session === held) {
    forgetSession();
    for (const listener of sessionEnded) listener(problem);
  }
  throw new ApiError(response.status, problem, retryAfter);
}

/** The path of a page of a listing: ?limit=&cursor= (and more query). */
export function pagePath(path, cursor, query = {}) {
  const parameters = new URLSearchParams(query);
  if (cursor) parameters.set("cursor", cursor);
  const search = parameters.toString();
  return search ? `${path}?${search}` : path;
}
