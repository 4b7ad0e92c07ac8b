/**
 * URL normalisation, rule for rule the JS twin of formats/urls.py (read its docstring).
 *
 * Python and JS disagree on details that matter here, so they are spelled out: Python's
 * "\s" / str.strip() whitespace set (it includes U+001C..U+001F and U+0085, not U+FEFF),
 * re.IGNORECASE folding "ſ" to "s" (the `u` flag does the same), "$" also matching before a
 * final "\n", and len() counting code points rather than UTF-16 units.
 */

export const MAX_URL_CHARS = 200;
const SPACE = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const WHITESPACE_RUN = new RegExp(`[${SPACE}]+`, "gu");
const STRIP = new RegExp(`^[${SPACE}]+|[${SPACE}]+$`, "gu");
const WEB_SCHEME = /^https?:\/\//iu;
const OTHER_SCHEME = /^[a-zA-Z][a-zA-Z0-9+.-]*:(?!\d)/u; // 'host:8080' is a port, not a scheme
const HOST_END = /[/?#]/u;
const ANY_SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i; // "ftp://", which splitTyped keeps
const SCHEME_IN_PROGRESS = /^https?:\/{0,2}\n?$/iu;

/** Length in code points, as Python's len() (a string iterates by code point). */
function codePoints(text) {
  return [...text].length;
}

/** Drop leading U+FEFF characters (Python's lstrip("\ufeff")). */
function stripBom(text) {
  return text.replace(/^\ufeff+/u, "");
}

/** Split at the first "/", "?" or "#": [host, rest]. */
function splitHost(text) {
  const end = text.search(HOST_END);
  return end === -1 ? [text, ""] : [text.slice(0, end), text.slice(end)];
}

/** Lower-case the host and drop user-info, default ports, a trailing dot and "www.". */
function cleanHost(host) {
  let clean = host.slice(host.lastIndexOf("@") + 1).toLowerCase();
  for (const port of [":80", ":443"]) {
    if (clean.endsWith(port)) clean = clean.slice(0, -port.length);
  }
  clean = clean.replace(/\.+$/u, "");
  return clean.startsWith("www.") ? clean.slice(4) : clean;
}

/** Canonical form of one URL, or null if it is not usable (formats/urls.py normalize_url). */
export function normalizeUrl(raw) {
  let text = stripBom(raw).replace(STRIP, "");
  if (!text) return null;
  text = text.normalize("NFC").replace(WHITESPACE_RUN, "%20");
  const web = text.match(WEB_SCHEME);
  if (web) text = text.slice(web[0].length);
  else if (OTHER_SCHEME.test(text)) return null;
  const [rawHost, rawRest] = splitHost(text);
  const host = cleanHost(rawHost);
  if (!host) return null;
  let rest = rawRest.split("#", 1)[0];
  if (rest === "/") rest = "";
  const url = host + rest;
  return codePoints(url) <= MAX_URL_CHARS ? url : null;
}

/**
 * Whether text (typed, or its canonical form) is past its host: a "/" or "?" after any scheme. The
 * page completes its top suggestion inline only before it (main.js), and offers the words a URL
 * already holds only after it (ngram.js repeatedWords; runtime/ngram.py).
 */
export function pastHost(text) {
  return /[/?]/.test(text.replace(ANY_SCHEME, ""));
}

/**
 * Map text typed in the URL bar to {fill, canonical} (formats/urls.py split_typed).
 * A suggestion is typed + fill + completion, so it always starts with exactly what was typed.
 */
export function splitTyped(typed) {
  if (SCHEME_IN_PROGRESS.test(typed)) {
    const scheme = typed.toLowerCase().startsWith("https") ? "https://" : "http://";
    return { fill: scheme.slice(typed.length), canonical: "" }; // typed is ASCII here
  }
  let text = stripBom(typed);
  const scheme = text.match(WEB_SCHEME);
  if (scheme) text = text.slice(scheme[0].length);
  if (text.slice(0, 4).toLowerCase() === "www.") text = text.slice(4);
  const [host, rest] = splitHost(text);
  return { fill: "", canonical: (host.toLowerCase() + rest).normalize("NFC").replace(WHITESPACE_RUN, "%20") };
}
