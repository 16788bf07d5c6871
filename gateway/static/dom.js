// Building the page from data: every piece of user text goes in as a text
// node (never as HTML), so nothing a user writes can become markup.

/**
 * An element: h("a", {href: "#/"}, "Home"). Attributes named on... are
 * listeners; null or false attributes are left out; children are nodes or
 * strings (made text nodes), nested arrays flattened, null skipped.
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// As the Notify service finds mentions: '@' and a run of username
// characters; a run of 3 to 32 of them names a profile.
const MENTION = /@([A-Za-z0-9_]+)/g;

/** The text of a post, its @mentions links to the profiles they name. */
export function withMentions(text) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(MENTION)) {
    const name = match[1];
    if (name.length < 3 || name.length > 32) continue;
    nodes.push(document.createTextNode(text.slice(last, match.index)));
    nodes.push(h("a", {href: `#/profile/${name.toLowerCase()}`, class: "mention"}, `@${name}`));
    last = match.index + match[0].length;
  }
  nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

/** A timestamp as a <time> element, shown in the reader's locale. */
export function when(timestamp) {
  const date = new Date(timestamp);
  const shown = Number.isNaN(date.getTime()) ? timestamp : date.toLocaleString();
  return h("time", {datetime: timestamp}, shown);
}

/** How many characters the API counts in a string (code points). */
export function characters(text) {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}
