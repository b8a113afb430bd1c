/* crmflow web console: vanilla ES2020, no dependencies, no build step.
 *
 * Everything that comes from the API is put in the page with textContent / createElement
 * (never innerHTML), every request carries the key as a Bearer token, and every error path
 * ends in a message in the page, never an uncaught exception.
 */
"use strict";

(() => {
  const KEY_STORE = "crmflow.key";
  const AUTHOR_STORE = "crmflow.author";
  const PAGE_SIZE = 50;
  const REFRESH_MS = 30000;
  const HISTORY_CONCURRENCY = 4;
  const TOUCH_POLL_MS = 1000;
  const TOUCH_POLL_TRIES = 15;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const ISO_RE = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$/;
  const NAIVE_RE = /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)$/;
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#5f6b7a"];
  const OTHER_COLOUR = "#bab0ac";
  const MONEY_LOW = [205, 218, 248];
  const MONEY_HIGH = [23, 55, 140];
  const NO_MONEY = "#d5d9df";
  const OCCASIONS = ["call", "meeting", "renewal_call", "feedback_request", "churn_winback"];
  const CHANNELS = ["phone", "email", "meeting", "sms", "other"];
  const STATUSES = ["done", "skipped"];

  const nf = new Intl.NumberFormat();
  const nf2 = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });

  const session = { key: null, me: null };
  const dom = {};
  const alertMessages = new Set();
  let page = null;
  let pageSeq = 0;

  // ---------------------------------------------------------------- errors

  class ApiError extends Error {
    constructor(status, message, field) {
      super(message);
      this.name = "ApiError";
      this.status = status;
      this.field = field || null;
    }
  }

  class StaleError extends Error {
    constructor() {
      super("stale");
      this.name = "StaleError";
    }
  }

  function isQuiet(err) {
    return !err || err.name === "AbortError" || err instanceof StaleError
      || (err instanceof ApiError && err.status === 401);
  }

  function messageOf(err) {
    if (err instanceof ApiError) return err.message;
    if (err && err.message) return `Unexpected error: ${err.message}`;
    return `Unexpected error: ${String(err)}`;
  }

  function reportError(err) {
    if (isQuiet(err)) return;
    showAlert(messageOf(err));
  }

  /** Wraps an event handler so that neither a throw nor a rejected promise escapes. */
  function guard(fn) {
    return function guarded(...args) {
      try {
        const result = fn.apply(this, args);
        if (result && typeof result.then === "function") result.then(undefined, reportError);
      } catch (err) {
        reportError(err);
      }
    };
  }

  function showAlert(message) {
    if (!message || alertMessages.has(message)) return;
    alertMessages.add(message);
    add(dom.alert, h("p", null, message));
    dom.alert.hidden = false;
  }

  function clearAlert() {
    alertMessages.clear();
    dom.alert.replaceChildren();
    dom.alert.hidden = true;
  }

  // ---------------------------------------------------------------- storage

  function storage(kind) {
    try {
      return window[kind] || null;
    } catch (_) {
      return null;
    }
  }

  function storeGet(kind, name) {
    try {
      const store = storage(kind);
      return store ? store.getItem(name) : null;
    } catch (_) {
      return null;
    }
  }

  function storeSet(kind, name, value) {
    try {
      const store = storage(kind);
      if (!store) return;
      if (value === null || value === undefined || value === "") store.removeItem(name);
      else store.setItem(name, value);
    } catch (_) {
      /* storage full or denied: the console works without it */
    }
  }

  // ---------------------------------------------------------------- DOM helpers

  function build(node, props, kids) {
    if (props) {
      for (const [name, value] of Object.entries(props)) {
        if (value === undefined || value === null || value === false) continue;
        if (name === "text") node.textContent = String(value);
        else if (name === "testid") node.setAttribute("data-testid", value);
        else if (name === "on") {
          for (const [type, fn] of Object.entries(value)) node.addEventListener(type, guard(fn));
        } else if (name === "style") {
          for (const [prop, v] of Object.entries(value)) node.style[prop] = v;
        } else node.setAttribute(name, value === true ? "" : String(value));
      }
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      node.append(kid instanceof Node ? kid : String(kid));
    }
    return node;
  }

  /** Appends kids (nodes, strings, nested arrays; null and false skipped) to node. */
  function add(node, ...kids) {
    return build(node, null, kids);
  }

  function fill(node, ...kids) {
    node.replaceChildren();
    return build(node, null, kids);
  }

  function h(tag, props, ...kids) {
    return build(document.createElement(tag), props, kids);
  }

  function s(tag, props, ...kids) {
    return build(document.createElementNS(SVG_NS, tag), props, kids);
  }

  function r2(v) {
    return Math.round(v * 100) / 100;
  }

  // ---------------------------------------------------------------- formatting

  function fmtInt(v) {
    const n = Number(v);
    return Number.isFinite(n) ? nf.format(n) : "—";
  }

  function fmtNum(v) {
    const n = Number(v);
    if (!Number.isFinite(n)) return String(v);
    return Number.isInteger(n) ? nf.format(n) : nf2.format(n);
  }

  function fmtBytes(n) {
    if (n < 1024) return `${nf.format(n)} B`;
    if (n < 1024 * 1024) return `${nf2.format(n / 1024)} KB`;
    return `${nf2.format(n / (1024 * 1024))} MB`;
  }

  /** An ISO time as crmflow reads it: without a zone it is UTC (a browser would take local). */
  function parseTime(iso) {
    if (typeof iso !== "string" || !iso) return null;
    const naive = NAIVE_RE.exec(iso);
    const d = new Date(naive ? `${naive[1]}T${naive[2]}Z` : iso);
    return Number.isNaN(d.getTime()) ? null : d;
  }

  function plural(n, unit) {
    return `${nf.format(n)} ${unit}${n === 1 ? "" : "s"}`;
  }

  function ago(date) {
    const seconds = (Date.now() - date.getTime()) / 1000;
    const future = seconds < 0;
    const abs = Math.abs(seconds);
    let text;
    if (abs < 60) return future ? "in less than a minute" : "less than a minute ago";
    if (abs < 3600) text = plural(Math.floor(abs / 60), "minute");
    else if (abs < 86400) text = plural(Math.floor(abs / 3600), "hour");
    else text = plural(Math.floor(abs / 86400), "day");
    return future ? `in ${text}` : `${text} ago`;
  }

  /** A <time> in the browser's locale, with the ISO string as its title. */
  function timeEl(iso, relative) {
    if (iso === null || iso === undefined || iso === "") return h("span", { class: "muted" }, "—");
    const d = parseTime(iso);
    if (!d) return document.createTextNode(String(iso));
    return h("time", { datetime: iso, title: iso }, relative ? ago(d) : d.toLocaleString());
  }

  function shortTime(iso) {
    const d = parseTime(iso);
    return d ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
  }

  function valueNode(v) {
    if (v === null || v === undefined) return h("span", { class: "muted" }, "—");
    if (typeof v === "number") return document.createTextNode(fmtNum(v));
    if (typeof v === "boolean") return document.createTextNode(v ? "yes" : "no");
    if (typeof v === "string") return ISO_RE.test(v) ? timeEl(v) : document.createTextNode(v);
    let text;
    try {
      text = JSON.stringify(v);
    } catch (_) {
      text = String(v);
    }
    return h("code", null, text);
  }

  function describeDetail(detail) {
    if (detail === null || detail === undefined) return "";
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((item) => {
        if (item && typeof item === "object") {
          const where = Array.isArray(item.loc) ? item.loc.join(".") : "";
          return [where, item.msg].filter(Boolean).join(": ") || JSON.stringify(item);
        }
        return String(item);
      }).join("; ");
    }
    try {
      return JSON.stringify(detail);
    } catch (_) {
      return String(detail);
    }
  }

  // ---------------------------------------------------------------- API

  async function request(path, options = {}) {
    const key = session.key;
    if (!key) throw new StaleError();
    const headers = { Authorization: `Bearer ${key}`, Accept: options.accept || "application/json" };
    const init = { method: options.method || "GET", headers, cache: "no-store", credentials: "same-origin" };
    if (options.signal) init.signal = options.signal;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.json);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError(0, `Cannot reach the API (${err && err.message ? err.message : err})`);
    }
    if (response.ok) return response;
    let detail = null;
    let field = null;
    try {
      const body = await response.json();
      if (body && typeof body === "object") {
        detail = body.detail;
        field = typeof body.field === "string" ? body.field : null;
      }
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
    }
    const message = describeDetail(detail)
      || `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
    if (response.status === 401 && session.key === key) signOut(message);
    throw new ApiError(response.status, message, field);
  }

  async function getJSON(path, options) {
    const response = await request(path, options);
    return response.json();
  }

  const enc = encodeURIComponent;
  const clientHash = (id) => `#/client/${enc(id)}`;
  const segmentHash = (name) => `#/segments/${enc(name)}`;

  // ---------------------------------------------------------------- session

  function describeMe(me) {
    const scope = me && me.scope ? String(me.scope) : "unknown";
    return me && me.point ? `${scope} key · ${me.point}` : `${scope} key`;
  }

  function showLogin(message) {
    dom.nav.hidden = true;
    dom.session.hidden = true;
    dom.main.hidden = true;
    dom.alert.hidden = true;
    dom.login.hidden = false;
    dom.loginError.textContent = message || "";
    dom.loginError.hidden = !message;
    dom.loginSubmit.disabled = false;
    document.title = "Sign in · crmflow console";
    dom.loginKey.focus();
  }

  function showApp() {
    dom.login.hidden = true;
    dom.loginError.hidden = true;
    dom.loginError.textContent = "";
    dom.nav.hidden = false;
    dom.session.hidden = false;
    dom.main.hidden = false;
    dom.whoami.textContent = describeMe(session.me);
    dom.whoami.title = session.me && session.me.can_record_touches
      ? "This key can record touches" : "This key cannot record touches";
  }

  function signOut(message) {
    session.key = null;
    session.me = null;
    storeSet("sessionStorage", KEY_STORE, null);
    stopPage();
    dom.main.replaceChildren();
    clearAlert();
    showLogin(message);
  }

  async function signIn(key) {
    session.key = key;
    let me;
    try {
      me = await getJSON("/v1/me");
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return; // signOut showed the form
      session.key = null;
      storeSet("sessionStorage", KEY_STORE, null);
      showLogin(messageOf(err));
      return;
    }
    if (session.key !== key) return;
    session.me = me && typeof me === "object" ? me : {};
    storeSet("sessionStorage", KEY_STORE, key);
    dom.loginKey.value = "";
    showApp();
    route(true);
  }

  async function onLogin(event) {
    event.preventDefault();
    const key = dom.loginKey.value.trim();
    if (!key) {
      dom.loginError.textContent = "Enter an API key";
      dom.loginError.hidden = false;
      dom.loginKey.focus();
      return;
    }
    dom.loginSubmit.disabled = true;
    dom.loginError.hidden = true;
    try {
      await signIn(key);
    } finally {
      dom.loginSubmit.disabled = false;
    }
  }

  // ---------------------------------------------------------------- pages and routing

  function stopPage() {
    if (!page) return;
    const old = page;
    page = null;
    for (const timer of old.timers) clearTimeout(timer);
    old.timers.clear();
    old.controller.abort();
  }

  function startPage(name, title, routeKey) {
    stopPage();
    clearAlert();
    const controller = new AbortController();
    const ctx = {
      id: ++pageSeq,
      routeKey,
      controller,
      signal: controller.signal,
      timers: new Set(),
      root: h("section", { class: `page page-${name}`, testid: `page-${name}`, "data-ready": "false" }),
    };
    ctx.alive = () => page === ctx;
    ctx.get = (path) => (ctx.alive() ? getJSON(path, { signal: ctx.signal }) : Promise.reject(new StaleError()));
    ctx.fail = (err) => {
      if (ctx.alive()) reportError(err);
    };
    ctx.ready = (flag = true) => {
      if (ctx.alive()) ctx.root.setAttribute("data-ready", flag ? "true" : "false");
    };
    ctx.later = (fn, ms) => {
      const timer = setTimeout(() => {
        ctx.timers.delete(timer);
        if (ctx.alive()) guard(fn)();
      }, ms);
      ctx.timers.add(timer);
    };
    page = ctx;
    fill(dom.main, ctx.root);
    document.title = `${title} · crmflow console`;
    return ctx;
  }

  function parseHash() {
    let raw = location.hash.replace(/^#/, "");
    if (raw.startsWith("/")) raw = raw.slice(1);
    const slash = raw.indexOf("/");
    const head = slash < 0 ? raw : raw.slice(0, slash);
    const rest = slash < 0 ? "" : raw.slice(slash + 1);
    let arg = null;
    if (rest) {
      try {
        arg = decodeURIComponent(rest);
      } catch (_) {
        arg = rest;
      }
    }
    return { head, arg };
  }

  function defaultPage() {
    return "overview";
  }

  function markNav(head) {
    const current = head === "segment" ? "segments" : head;
    for (const link of dom.nav.querySelectorAll("a[data-page]")) {
      if (link.dataset.page === current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  function route(force) {
    if (!session.key || !session.me) return;
    let { head, arg } = parseHash();
    const known = ["overview", "segments", "client", "rules"];
    if (!known.includes(head)) {
      head = defaultPage();
      arg = null;
      history.replaceState(null, "", `#/${head}`);
    }
    const routeKey = location.hash;
    if (!force && page && page.routeKey === routeKey) return;
    markNav(head);
    try {
      if (head === "overview") renderOverview(routeKey);
      else if (head === "segments" && arg) renderSegment(arg, routeKey);
      else if (head === "segments") renderSegments(routeKey);
      else if (head === "client") renderClient(arg, routeKey);
      else renderRules(routeKey);
    } catch (err) {
      reportError(err);
      if (page) page.ready();
    }
  }

  function go(hash) {
    if (location.hash === hash) route(true);
    else {
      location.hash = hash;
      route(false);
    }
  }

  // ---------------------------------------------------------------- shared widgets

  function pageHeader(title, subtitle, ...extra) {
    return h("div", { class: "page-head" },
      h("div", null, h("h1", null, title), subtitle ? h("p", { class: "muted" }, subtitle) : null),
      extra.length ? h("div", { class: "page-head-extra" }, extra) : null);
  }

  function card(title, body, options = {}) {
    const classes = ["card", options.wide ? "wide" : null, options.className || null].filter(Boolean).join(" ");
    return h("section", { class: classes, testid: options.testid },
      h("h2", { class: "card-title" }, title, options.aside ? h("span", { class: "card-aside" }, options.aside) : null),
      body);
  }

  function loading(text = "Loading…") {
    return h("p", { class: "muted loading" }, text);
  }

  function note(text, testid) {
    return h("p", { class: "muted empty", testid }, text);
  }

  function errorNote(err) {
    return h("p", { class: "error-note" }, isQuiet(err) ? "Not loaded" : `Not loaded: ${messageOf(err)}`);
  }

  /** columns: [{label, num}], rows: arrays of cells (Node, string or number). */
  function dataTable(columns, rows, options = {}) {
    const thead = h("thead", null, h("tr", null, columns.map((col) =>
      h("th", { scope: "col", class: col.num ? "num" : null }, col.label))));
    const tbody = h("tbody", null, rows.map((row) => h("tr", null, row.map((cell, i) => {
      const col = columns[i] || {};
      const content = typeof cell === "number" ? fmtNum(cell) : cell;
      return h("td", { class: col.num ? "num" : col.className || null }, content);
    }))));
    return h("div", { class: "table-wrap" },
      h("table", { class: `table${options.className ? ` ${options.className}` : ""}`, testid: options.testid },
        options.caption ? h("caption", { class: "visually-hidden" }, options.caption) : null,
        thead, tbody));
  }

  function clientLink(id, testid = "member-link") {
    return h("a", { href: clientHash(id), testid, class: "mono" }, id);
  }

  function badge(text, kind) {
    return h("span", { class: `badge${kind ? ` badge-${kind}` : ""}` }, text);
  }

  function sparkline(points, options = {}) {
    const width = options.width || 120;
    const height = options.height || 28;
    const list = (Array.isArray(points) ? points : [])
      .filter((p) => p && Number.isFinite(Number(p.size)));
    if (!list.length) return h("span", { class: "muted sparkline-none", testid: "sparkline" }, "no history");
    const pad = 3;
    const sizes = list.map((p) => Number(p.size));
    const times = list.map((p) => (parseTime(p.at) || { getTime: () => NaN }).getTime());
    const t0 = Math.min(...times);
    const t1 = Math.max(...times);
    const byTime = times.every(Number.isFinite) && t1 > t0;
    const lo = Math.min(...sizes);
    const hi = Math.max(...sizes);
    const x = (i) => {
      if (list.length === 1) return width / 2;
      const frac = byTime ? (times[i] - t0) / (t1 - t0) : i / (list.length - 1);
      return r2(pad + frac * (width - 2 * pad));
    };
    const y = (v) => (hi === lo ? height / 2 : r2(pad + (1 - (v - lo) / (hi - lo)) * (height - 2 * pad)));
    const first = list[0];
    const last = list[list.length - 1];
    const label = list.length === 1
      ? `${fmtInt(last.size)} at ${last.at}`
      : `${fmtInt(first.size)} → ${fmtInt(last.size)} over ${list.length} points (min ${fmtInt(lo)}, max ${fmtInt(hi)})`;
    const chart = s("svg", {
      class: "sparkline", testid: "sparkline", viewBox: `0 0 ${width} ${height}`,
      width, height, role: "img", "aria-label": `Size history: ${label}`,
    }, s("title", null, `Size history: ${label}`));
    if (list.length > 1) {
      const pts = sizes.map((v, i) => `${x(i)},${y(v)}`).join(" ");
      add(chart, s("polyline", { points: pts, class: "spark-line" }));
    }
    add(chart, s("circle", { cx: x(list.length - 1), cy: y(sizes[sizes.length - 1]), r: 2.5, class: "spark-dot" }));
    return chart;
  }

  async function eachLimited(items, limit, fn, alive) {
    let next = 0;
    const worker = async () => {
      while (next < items.length && alive()) {
        const i = next;
        next += 1;
        await fn(items[i], i);
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  }

  function segmentList(data) {
    return data && Array.isArray(data.segments) ? data.segments.filter((x) => x && typeof x.name === "string") : [];
  }

  // ---------------------------------------------------------------- overview

  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const e = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (m * e >= v) return m * e;
    return 10 * e;
  }

  function stackedChart({ testid, title, minutes, field, noun }) {
    const totals = new Map();
    const perMinute = minutes.map((m) => {
      const raw = m && m[field] && typeof m[field] === "object" ? m[field] : {};
      const counts = {};
      let sum = 0;
      for (const [type, value] of Object.entries(raw)) {
        const n = Number(value);
        if (!(n > 0)) continue;
        counts[type] = n;
        totals.set(type, (totals.get(type) || 0) + n);
        sum += n;
      }
      return { minute: m ? m.minute : null, counts, sum };
    });
    const types = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a) || a.localeCompare(b));
    const direct = types.length > PALETTE.length ? types.slice(0, PALETTE.length - 1) : types;
    const groups = direct.map((type, i) => ({ label: type, types: [type], colour: PALETTE[i] }));
    if (direct.length < types.length) {
      groups.push({ label: "other types", types: types.slice(direct.length), colour: OTHER_COLOUR });
    }
    for (const g of groups) g.total = g.types.reduce((acc, t) => acc + totals.get(t), 0);
    const grand = groups.reduce((acc, g) => acc + g.total, 0);
    const peak = perMinute.reduce((acc, p) => Math.max(acc, p.sum), 0);
    const top = niceCeil(peak);

    const W = 640;
    const H = 180;
    const L = 44;
    const R = 8;
    const T = 10;
    const B = 24;
    const pw = W - L - R;
    const ph = H - T - B;
    const bw = pw / Math.max(perMinute.length, 1);
    const gap = bw > 5 ? 1.5 : 0.5;
    const chart = s("svg", {
      viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
      "aria-label": `${title}: ${fmtInt(grand)} ${noun} in the last hour`,
    });
    for (const v of [0, top / 2, top]) {
      if (!Number.isInteger(v)) continue;
      const y = r2(T + ph - (v / top) * ph);
      add(chart, 
        s("line", { x1: L, x2: W - R, y1: y, y2: y, class: v ? "gridline" : "baseline" }),
        s("text", { x: L - 6, y: r2(y + 4), class: "tick", "text-anchor": "end" }, fmtInt(v)));
    }
    perMinute.forEach((p, i) => {
      const x = L + i * bw;
      const g = s("g", { class: "bar" });
      let y = T + ph;
      const parts = [];
      for (const grp of groups) {
        const v = grp.types.reduce((acc, t) => acc + (p.counts[t] || 0), 0);
        if (v <= 0) continue;
        parts.push(`${grp.label} ${fmtInt(v)}`);
        const height = (v / top) * ph;
        y -= height;
        add(g, s("rect", {
          x: r2(x + gap / 2), y: r2(y), width: r2(Math.max(bw - gap, 0.5)), height: r2(height), fill: grp.colour,
        }));
      }
      const when = shortTime(p.minute) || `minute ${i + 1}`;
      const tip = `${when}: ${fmtInt(p.sum)} ${noun}${parts.length ? ` (${parts.join(", ")})` : ""}`;
      add(g, s("rect", { x: r2(x), y: T, width: r2(bw), height: ph, class: "hit", fill: "transparent" }), s("title", null, tip));
      add(chart, g);
    });
    if (perMinute.length) {
      const marks = [0, Math.floor(perMinute.length / 2), perMinute.length - 1];
      const anchors = ["start", "middle", "end"];
      marks.forEach((idx, k) => {
        const xPos = k === 0 ? L : k === 2 ? W - R : L + (idx + 0.5) * bw;
        add(chart, s("text", { x: r2(xPos), y: H - 6, class: "tick", "text-anchor": anchors[k] },
          shortTime(perMinute[idx].minute)));
      });
    }
    if (!grand) {
      add(chart, s("text", { x: L + pw / 2, y: T + ph / 2, class: "chart-empty", "text-anchor": "middle" },
        `No ${noun} in the last hour`));
    }
    const legend = h("ul", { class: "legend" }, groups.map((g) => {
      const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.background = g.colour;
      return h("li", { title: g.types.join(", ") }, swatch, h("span", { class: "legend-label" }, g.label),
        h("span", { class: "num legend-count" }, fmtInt(g.total)));
    }));
    return h("figure", { class: "chart-figure", testid },
      h("figcaption", null, h("span", { class: "chart-title" }, title),
        h("span", { class: "chart-total", testid: `${field}-total` },
          `${fmtInt(grand)} ${noun} in the last hour`, peak ? ` · peak ${fmtInt(peak)}/min` : "")),
      chart, groups.length ? legend : null);
  }

  function renderActivity(body, data) {
    const minutes = data && Array.isArray(data.minutes) ? data.minutes : [];
    fill(body, h("div", { class: "charts" },
      stackedChart({ testid: "chart-events", title: "Events per minute", minutes, field: "events", noun: "events" }),
      stackedChart({ testid: "chart-triggers", title: "Triggers per minute", minutes, field: "triggers", noun: "triggers" })));
  }

  function stageLabel(name) {
    return name.startsWith("lifecycle:") ? name.slice("lifecycle:".length) : name;
  }

  function renderFunnel(body, data) {
    const stages = segmentList(data).filter((x) => x.kind === "lifecycle");
    const max = stages.reduce((acc, x) => Math.max(acc, Number(x.size) || 0), 0);
    const funnel = h("div", { class: "funnel", testid: "funnel" });
    if (!stages.length) add(funnel, note("No lifecycle segments"));
    for (const stage of stages) {
      const size = Number(stage.size) || 0;
      const bar = h("div", { class: "funnel-bar" });
      bar.style.width = `${max ? Math.max((size / max) * 100, size > 0 ? 0.6 : 0) : 0}%`;
      add(funnel, h("div", { class: "funnel-row", testid: "funnel-row", "data-segment": stage.name },
        h("a", { class: "funnel-label", href: segmentHash(stage.name), title: stage.description || stage.name },
          stage.title || stageLabel(stage.name)),
        h("div", { class: "funnel-track" }, bar),
        h("span", { class: "num funnel-count", testid: "count" }, fmtInt(size))));
    }
    fill(body, funnel);
  }

  function renderSizes(body, data) {
    const list = segmentList(data);
    if (!list.length) {
      fill(body, note("No segments", "segment-sizes"));
      return;
    }
    fill(body, dataTable(
      [{ label: "Segment" }, { label: "Kind" }, { label: "Size", num: true }],
      list.map((x) => [h("a", { href: segmentHash(x.name) }, x.name), x.kind || "", Number(x.size) || 0]),
      { testid: "segment-sizes", className: "compact", caption: "Segment sizes" }));
  }

  function moneyColour(value, lo, hi) {
    if (typeof value !== "number" || !Number.isFinite(value)) return NO_MONEY;
    const t = hi > lo ? (value - lo) / (hi - lo) : 0.5;
    const c = MONEY_LOW.map((a, i) => Math.round(a + (MONEY_HIGH[i] - a) * t));
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }

  function cellTooltip(cell) {
    const head = `R${cell.r} F${cell.f}: ${fmtInt(cell.clients)} clients`;
    if (typeof cell.average_money !== "number") return `${head}, average money unknown`;
    const how = cell.money_exact ? "exact" : `estimated from a sample of ${fmtInt(cell.money_sample)}`;
    return `${head}, average money ${nf2.format(cell.average_money)} (${how})`;
  }

  function renderRfm(body, data, rfm) {
    if (!data || !data.model) {
      fill(body, note("No RFM model yet (no buyers)", "rfm-empty"));
      return;
    }
    const cells = new Map();
    for (const c of Array.isArray(data.cells) ? data.cells : []) {
      if (c && Number.isInteger(Number(c.r)) && Number.isInteger(Number(c.f))) {
        cells.set(`${Number(c.r)}:${Number(c.f)}`, {
          r: Number(c.r), f: Number(c.f), clients: Math.max(0, Math.round(Number(c.clients) || 0)),
          average_money: typeof c.average_money === "number" ? c.average_money : null,
          money_sample: Number(c.money_sample) || 0, money_exact: Boolean(c.money_exact),
        });
      }
    }
    const max = Math.max(0, ...[...cells.values()].map((c) => c.clients));
    const monies = [...cells.values()].map((c) => c.average_money).filter((m) => m !== null);
    const lo = monies.length ? Math.min(...monies) : 0;
    const hi = monies.length ? Math.max(...monies) : 0;

    const C = 68;
    const L = 48;
    const T = 6;
    const B = 44;
    const R = 6;
    const W = L + 5 * C + R;
    const H = T + 5 * C + B;
    const map = s("svg", {
      viewBox: `0 0 ${W} ${H}`, class: "rfm-map", role: "group",
      "aria-label": "RFM map: recency score by frequency score; square area is the number of clients",
    });
    for (let r = 5; r >= 1; r -= 1) {
      const y0 = T + (5 - r) * C;
      add(map, s("text", { x: L - 8, y: y0 + C / 2 + 4, class: "tick", "text-anchor": "end" }, String(r)));
      for (let f = 1; f <= 5; f += 1) {
        const x0 = L + (f - 1) * C;
        const cell = cells.get(`${r}:${f}`) || {
          r, f, clients: 0, average_money: null, money_sample: 0, money_exact: false,
        };
        const clickable = cell.clients > 0;
        const tip = cellTooltip(cell);
        const selected = rfm.selected === `${r}:${f}`;
        const g = s("g", {
          class: `rfm-cell${clickable ? " clickable" : ""}${selected ? " selected" : ""}`,
          testid: "rfm-cell", "data-r": r, "data-f": f, "data-clients": cell.clients,
          tabindex: clickable ? 0 : null, role: clickable ? "button" : null,
          "aria-pressed": clickable ? String(selected) : null, "aria-label": tip,
        });
        const side = max > 0 ? (C - 10) * Math.sqrt(cell.clients / max) : 0;
        add(g, 
          s("title", null, tip),
          s("rect", { x: x0 + 2, y: y0 + 2, width: C - 4, height: C - 4, rx: 3, class: "rfm-slot" }),
          s("rect", {
            x: r2(x0 + (C - side) / 2), y: r2(y0 + (C - side) / 2), width: r2(side), height: r2(side),
            rx: 2, class: "rfm-square", fill: moneyColour(cell.average_money, lo, hi),
          }),
          s("text", { x: x0 + C / 2, y: y0 + C / 2 + 4, class: "rfm-count", "text-anchor": "middle" },
            fmtInt(cell.clients)));
        if (clickable) {
          g.addEventListener("click", guard(() => rfm.open(cell)));
          g.addEventListener("keydown", guard((event) => {
            if (event.key === "Enter" || event.key === " ") {
              event.preventDefault();
              rfm.open(cell);
            }
          }));
        }
        add(map, g);
      }
    }
    for (let f = 1; f <= 5; f += 1) {
      add(map, s("text", { x: L + (f - 1) * C + C / 2, y: T + 5 * C + 16, class: "tick", "text-anchor": "middle" }, String(f)));
    }
    add(map, 
      s("text", { x: L + (5 * C) / 2, y: H - 6, class: "axis-title", "text-anchor": "middle" }, "Frequency score"),
      s("text", {
        x: 0, y: 0, class: "axis-title", "text-anchor": "middle",
        transform: `translate(14 ${T + (5 * C) / 2}) rotate(-90)`,
      }, "Recency score"));

    const gradient = h("span", { class: "gradient", "aria-hidden": "true" });
    gradient.style.background = `linear-gradient(to right, ${moneyColour(lo, lo, hi > lo ? hi : lo + 1)}, ${moneyColour(hi > lo ? hi : lo + 1, lo, hi > lo ? hi : lo + 1)})`;
    const noMoney = h("span", { class: "swatch", "aria-hidden": "true" });
    noMoney.style.background = NO_MONEY;
    const legend = h("div", { class: "rfm-legend", testid: "rfm-legend" },
      h("span", null, "Average money"),
      monies.length ? [h("span", { class: "num" }, nf2.format(lo)), gradient, h("span", { class: "num" }, nf2.format(hi))]
        : h("span", { class: "muted" }, "no data"),
      h("span", { class: "legend-sep" }, noMoney, " unknown"),
      h("span", { class: "muted" }, "· square area ∝ clients"));
    const model = data.model;
    const meta = h("p", { class: "muted rfm-meta" },
      `${model.mode || "RFM"} model · computed `, timeEl(model.computed_at),
      model.population == null ? "" : ` · population ${fmtInt(model.population)}`,
      ` · ${fmtInt(data.clients)} clients scored`);
    fill(body, meta, h("div", { class: "rfm-wrap" }, map), legend);
  }

  function openRfmMembers(ctx, panel, rfm, cell) {
    rfm.selected = `${cell.r}:${cell.f}`;
    const token = ++rfm.token;
    for (const g of rfm.body.querySelectorAll(".rfm-cell")) {
      const on = g.getAttribute("data-r") === String(cell.r) && g.getAttribute("data-f") === String(cell.f);
      g.classList.toggle("selected", on);
      if (g.hasAttribute("aria-pressed")) g.setAttribute("aria-pressed", String(on));
    }
    const list = h("ol", { class: "member-list" });
    const more = h("button", { type: "button", class: "btn", testid: "more", hidden: true }, "More");
    const status = h("span", { class: "muted", role: "status" });
    const close = h("button", { type: "button", class: "btn btn-quiet", "aria-label": "Close the member list" }, "Close");
    let cursor = null;
    let shown = 0;
    const load = async () => {
      more.disabled = true;
      panel.setAttribute("data-ready", "false");
      status.textContent = "Loading…";
      const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (cursor) query.set("cursor", cursor);
      try {
        const data = await ctx.get(`/v1/rfm/map/cells/${cell.r}/${cell.f}/members?${query}`);
        if (token !== rfm.token) return;
        const members = data && Array.isArray(data.members) ? data.members : [];
        for (const id of members) add(list, h("li", null, clientLink(String(id))));
        shown += members.length;
        cursor = data && data.next_cursor ? String(data.next_cursor) : null;
        more.hidden = !cursor;
        status.textContent = shown ? `${fmtInt(shown)} of ${fmtInt(cell.clients)} shown` : "No clients";
      } catch (err) {
        if (token === rfm.token) status.textContent = "Could not load the members";
        ctx.fail(err);
      } finally {
        if (token === rfm.token) {
          more.disabled = false;
          panel.setAttribute("data-ready", "true");
        }
      }
    };
    more.addEventListener("click", guard(load));
    close.addEventListener("click", guard(() => {
      rfm.token += 1;
      rfm.selected = null;
      panel.hidden = true;
      panel.replaceChildren();
      for (const g of rfm.body.querySelectorAll(".rfm-cell.selected")) {
        g.classList.remove("selected");
        if (g.hasAttribute("aria-pressed")) g.setAttribute("aria-pressed", "false");
      }
    }));
    fill(panel, 
      h("div", { class: "panel-head" },
        h("h3", null, `Clients in R${cell.r} F${cell.f}`),
        h("span", { class: "muted" }, `${fmtInt(cell.clients)} clients`), close),
      list,
      h("div", { class: "panel-foot" }, more, status));
    panel.hidden = false;
    return load();
  }

  function renderOverview(routeKey) {
    const ctx = startPage("overview", "Overview", routeKey);
    const updated = h("span", { class: "muted", testid: "updated" });
    const activityBody = h("div", { class: "card-body" }, loading());
    const funnelBody = h("div", { class: "card-body" }, loading());
    const rfmBody = h("div", null, loading());
    const sizesBody = h("div", { class: "card-body" }, loading());
    const panel = h("div", { class: "rfm-members", testid: "rfm-members", "data-ready": "true", hidden: true });
    const rfm = { selected: null, token: 0, body: rfmBody, open: null };
    rfm.open = (cell) => openRfmMembers(ctx, panel, rfm, cell);
    add(ctx.root, 
      pageHeader("Overview", "The last hour of activity, the lifecycle funnel and the RFM map; refreshes every 30 s", updated),
      h("div", { class: "grid overview-grid" },
        card("Activity · last 60 minutes", activityBody, { wide: true }),
        card("RFM map", h("div", { class: "card-body" }, rfmBody, panel), { className: "rfm-card" }),
        card("Lifecycle funnel", funnelBody),
        card("Segment sizes", sizesBody)));

    const task = (promise, body, render) => promise.then(render, (err) => {
      fill(body, errorNote(err));
      ctx.fail(err);
    });
    const load = () => Promise.all([
      task(ctx.get("/v1/activity?minutes=60"), activityBody, (d) => renderActivity(activityBody, d)),
      ctx.get("/v1/segments").then((d) => {
        renderFunnel(funnelBody, d);
        renderSizes(sizesBody, d);
      }, (err) => {
        fill(funnelBody, errorNote(err));
        fill(sizesBody, errorNote(err));
        ctx.fail(err);
      }),
      task(ctx.get("/v1/rfm/map"), rfmBody, (d) => renderRfm(rfmBody, d, rfm)),
    ]);
    const cycle = async (first) => {
      if (!first) clearAlert();
      try {
        await load();
      } catch (err) {
        ctx.fail(err); // a render that met an unexpected shape
      }
      if (!ctx.alive()) return;
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      if (first) ctx.ready();
      ctx.later(() => cycle(false), REFRESH_MS);
    };
    cycle(true).catch(ctx.fail);
  }

  // ---------------------------------------------------------------- segments

  function renderSegments(routeKey) {
    const ctx = startPage("segments", "Segments", routeKey);
    const body = h("div", { class: "card-body" }, loading());
    add(ctx.root, pageHeader("Segments", "Every segment with its current size and its last 14 days"),
      h("div", { class: "card" }, body));
    const run = async () => {
      let data;
      try {
        data = await ctx.get("/v1/segments");
      } catch (err) {
        fill(body, errorNote(err));
        ctx.fail(err);
        return;
      }
      const list = segmentList(data);
      if (!list.length) {
        fill(body, note("No segments"), h("table", { class: "table", testid: "segments-table" }));
        return;
      }
      const sparkCells = list.map(() => h("span", { class: "muted" }, "…"));
      fill(body, dataTable(
        [{ label: "Segment" }, { label: "Kind" }, { label: "Description" }, { label: "Size", num: true },
          { label: "Last 14 days", className: "spark-cell" }],
        list.map((x, i) => [
          h("a", { href: segmentHash(x.name), class: "mono" }, x.name),
          badge(x.kind || "?", x.kind),
          h("div", { class: "describe" }, x.title ? h("strong", null, x.title) : null,
            x.description ? h("span", { class: "muted" }, x.description) : null,
            !x.title && !x.description ? h("span", { class: "muted" }, "—") : null),
          Number(x.size) || 0,
          sparkCells[i],
        ]),
        { testid: "segments-table", caption: "Segments" }));
      await eachLimited(list, HISTORY_CONCURRENCY, async (x, i) => {
        try {
          const hist = await ctx.get(`/v1/segments/${enc(x.name)}/history?days=14`);
          sparkCells[i].replaceWith(sparkline(hist && hist.points));
        } catch (err) {
          sparkCells[i].textContent = "—";
          ctx.fail(err);
        }
      }, ctx.alive);
    };
    run().catch(ctx.fail).finally(() => ctx.ready());
  }

  function renderSegment(name, routeKey) {
    const ctx = startPage("segment", `Segment ${name}`, routeKey);
    const info = h("div", { class: "segment-info" }, loading());
    const historyBox = h("div", { class: "segment-history" }, loading());
    const tableBox = h("div", { class: "members-box" }, loading());
    const pageLabel = h("span", { class: "muted", testid: "page-number" });
    const first = h("button", { type: "button", class: "btn", testid: "first-page", disabled: true }, "First page");
    const next = h("button", { type: "button", class: "btn", testid: "next-page", disabled: true }, "Next page");
    const download = h("button", { type: "button", class: "btn btn-primary", testid: "download-csv" }, "Download CSV");
    const progress = h("span", { class: "muted", role: "status", testid: "download-progress" });
    add(ctx.root, 
      pageHeader(name, null, h("a", { href: "#/segments", class: "back" }, "← All segments")),
      h("div", { class: "grid" },
        card("Segment", h("div", { class: "card-body" }, info, historyBox)),
        card("Export", h("div", { class: "card-body" },
          h("p", { class: "muted" }, "Every member as CSV, streamed from the API."),
          h("div", { class: "toolbar" }, download, progress)))),
      card("Members", h("div", { class: "card-body" },
        h("div", { class: "toolbar pager" }, first, next, pageLabel), tableBox), { testid: "segment-members" }));

    let pageNo = 1;
    let nextCursor = null;
    let token = 0;
    const loadMembers = async (cursor, number) => {
      const mine = ++token;
      first.disabled = true;
      next.disabled = true;
      const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (cursor) query.set("cursor", cursor);
      try {
        const data = await ctx.get(`/v1/segments/${enc(name)}/members?${query}`);
        if (mine !== token) return;
        const members = data && Array.isArray(data.members) ? data.members : [];
        pageNo = number;
        nextCursor = data && data.next_cursor ? String(data.next_cursor) : null;
        const offset = (number - 1) * PAGE_SIZE;
        fill(tableBox, members.length
          ? dataTable([{ label: "#", num: true }, { label: "Client" }],
            members.map((id, i) => [offset + i + 1, clientLink(String(id))]),
            { testid: "members", className: "compact members-table", caption: "Members" })
          : note(number === 1 ? "No members" : "No more members", "members"));
        pageLabel.textContent = members.length
          ? `Page ${fmtInt(number)} · members ${fmtInt(offset + 1)}–${fmtInt(offset + members.length)}`
          : `Page ${fmtInt(number)}`;
      } catch (err) {
        if (mine === token) fill(tableBox, errorNote(err));
        ctx.fail(err);
      } finally {
        if (mine === token) {
          first.disabled = pageNo <= 1;
          next.disabled = !nextCursor;
        }
      }
    };
    const pageTo = async (cursor, number) => {
      ctx.ready(false);
      try {
        await loadMembers(cursor, number);
      } finally {
        ctx.ready(true);
      }
    };
    first.addEventListener("click", guard(() => pageTo(null, 1)));
    next.addEventListener("click", guard(() => (nextCursor ? pageTo(nextCursor, pageNo + 1) : undefined)));
    download.addEventListener("click", guard(() => downloadCsv(ctx, name, download, progress)));

    const loadInfo = ctx.get("/v1/segments").then((data) => {
      const found = segmentList(data).find((x) => x.name === name);
      if (!found) {
        fill(info, note("This segment is not in the list of segments"));
        return;
      }
      fill(info, h("dl", { class: "facts" },
        h("dt", null, "Size"), h("dd", { class: "num-inline", testid: "segment-size" }, fmtInt(found.size)),
        h("dt", null, "Kind"), h("dd", null, badge(found.kind || "?", found.kind)),
        found.title ? [h("dt", null, "Title"), h("dd", null, found.title)] : null,
        found.description ? [h("dt", null, "Description"), h("dd", null, found.description)] : null));
    }, (err) => {
      fill(info, errorNote(err));
      ctx.fail(err);
    });
    const loadHistory = ctx.get(`/v1/segments/${enc(name)}/history?days=14`).then((data) => {
      const points = data && Array.isArray(data.points) ? data.points : [];
      fill(historyBox, h("p", { class: "muted small" }, "Size over the last 14 days"),
        sparkline(points, { width: 320, height: 64 }));
    }, (err) => {
      fill(historyBox, errorNote(err));
      ctx.fail(err);
    });
    Promise.all([loadInfo, loadHistory, loadMembers(null, 1)])
      .catch(ctx.fail)
      .finally(() => ctx.ready());
  }

  async function downloadCsv(ctx, name, button, progress) {
    button.disabled = true;
    progress.textContent = "Starting the download…";
    try {
      const response = await request(`/v1/segments/${enc(name)}/members.csv`, { accept: "text/csv" });
      const total = Number(response.headers.get("content-length")) || 0;
      const chunks = [];
      let bytes = 0;
      let lines = 0;
      let lastByte = 10;
      const count = (chunk) => {
        chunks.push(chunk);
        bytes += chunk.length;
        for (let i = 0; i < chunk.length; i += 1) if (chunk[i] === 10) lines += 1;
        if (chunk.length) lastByte = chunk[chunk.length - 1];
      };
      if (response.body && typeof response.body.getReader === "function") {
        const reader = response.body.getReader();
        let painted = 0;
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          count(value);
          const now = performance.now();
          if (now - painted > 200) {
            painted = now;
            progress.textContent = `Downloading… ${fmtInt(lines)} lines, ${fmtBytes(bytes)}${total ? ` of ${fmtBytes(total)}` : ""}`;
          }
        }
      } else {
        count(new Uint8Array(await response.arrayBuffer()));
      }
      const totalLines = lines + (bytes && lastByte !== 10 ? 1 : 0);
      const blob = new Blob(chunks, { type: "text/csv;charset=utf-8" });
      const url = URL.createObjectURL(blob);
      const link = h("a", { href: url, download: `${name}.csv`, hidden: true });
      add(document.body, link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      progress.textContent = `Downloaded ${name}.csv: ${fmtInt(totalLines)} lines, ${fmtBytes(bytes)}`;
    } catch (err) {
      progress.textContent = "The download failed";
      if (ctx.alive()) reportError(err);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- client

  function searchBox(ctx, initial) {
    const input = h("input", {
      id: "client-search", type: "search", testid: "client-search", autocomplete: "off", spellcheck: "false",
      placeholder: "client id, email or phone", value: initial || null,
    });
    const results = h("div", { class: "search-results", testid: "search-results", "aria-live": "polite" });
    const form = h("form", { class: "search", role: "search", novalidate: true },
      h("label", { for: "client-search" }, "Find a client"),
      h("div", { class: "search-row" }, input,
        h("button", { type: "submit", class: "btn btn-primary", testid: "client-search-submit" }, "Search")),
      results);
    form.addEventListener("submit", guard(async (event) => {
      event.preventDefault();
      const q = input.value.trim();
      if (!q) {
        fill(results, note("Enter a client id, an email or a phone number"));
        return;
      }
      ctx.ready(false);
      fill(results, loading("Searching…"));
      try {
        const data = await ctx.get(`/v1/lookup?${new URLSearchParams({ q, limit: "20" })}`);
        if (!ctx.alive()) return;
        const clients = data && Array.isArray(data.clients) ? data.clients.filter((c) => c && c.client_id != null) : [];
        // A point's key looks through part of the index only: more of its clients may match.
        const partial = data && data.complete === false
          ? note("Only part of the index was searched: type more of the email or phone to find the rest", "search-partial")
          : null;
        if (clients.length === 1 && !partial) {
          results.replaceChildren();
          go(clientHash(String(clients[0].client_id)));
          return;
        }
        if (!clients.length) {
          fill(results, note("No client matches", "no-match"), partial);
          return;
        }
        fill(results, 
          h("p", { class: "muted small" }, `${fmtInt(clients.length)} ${clients.length === 1 ? "client matches" : "clients match"}`),
          partial,
          h("ul", { class: "result-list" }, clients.map((c) => h("li", null,
            h("a", { href: clientHash(String(c.client_id)), testid: "search-result", class: "mono" }, String(c.client_id)),
            h("span", { class: "muted" }, ` matched ${c.matched || "?"}: `),
            h("span", null, c.value == null ? "" : String(c.value))))));
      } catch (err) {
        results.replaceChildren();
        ctx.fail(err);
      } finally {
        ctx.ready(true);
      }
    }));
    return { form, input };
  }

  function kvTable(entries, testid, caption, emptyText) {
    if (!entries.length) return note(emptyText, testid);
    const rows = entries.map(([k, v]) => h("tr", null, h("th", { scope: "row" }, k),
      h("td", { class: typeof v === "number" ? "num" : null }, valueNode(v))));
    return h("div", { class: "table-wrap" },
      h("table", { class: "table kv", testid },
        h("caption", { class: "visually-hidden" }, caption), h("tbody", null, rows)));
  }

  function renderProfile(box, p) {
    const features = p.features && typeof p.features === "object" ? p.features : {};
    const traits = p.traits && typeof p.traits === "object" ? p.traits : {};
    const aliases = Array.isArray(p.aliases) ? p.aliases : [];
    const rfm = p.rfm && typeof p.rfm === "object" ? p.rfm : null;
    const stage = features.lifecycle_stage;

    const head = h("div", { class: "client-head" },
      h("h2", { class: "client-id mono", testid: "client-id" }, String(p.client_id)),
      h("div", { class: "client-meta muted" },
        "Updated ", timeEl(p.updated_at),
        aliases.length ? [" · also known as ", aliases.map((a, i) => [i ? ", " : "", h("span", { class: "mono" }, String(a))])] : null),
      p.requested_id && p.requested_id !== p.client_id
        ? h("p", { class: "note", testid: "merged-note" }, "You asked for ", h("span", { class: "mono" }, String(p.requested_id)),
          ", which was merged into this client.")
        : null);

    const summary = h("dl", { class: "facts" },
      h("dt", null, "Lifecycle"),
      h("dd", null, h("span", { class: "badge badge-lifecycle", testid: "lifecycle" },
        stage === null || stage === undefined || stage === "" ? "—" : String(stage))),
      h("dt", null, "RFM"),
      h("dd", null, h("span", { testid: "rfm" }, rfm
        ? `R${rfm.r} F${rfm.f} M${rfm.m} · ${rfm.segment} (${rfm.segment_name})`
        : "No RFM score (no orders yet, or no model)"),
      rfm ? h("div", { class: "muted small" }, `${rfm.mode || ""} model of `, timeEl(rfm.model_at)) : null));

    const freshness = p.freshness && typeof p.freshness === "object" ? Object.entries(p.freshness) : [];
    const freshList = freshness.length
      ? h("ul", { class: "freshness", testid: "freshness" }, freshness.map(([group, at]) => h("li", null,
        h("span", { class: "fresh-group" }, group),
        at ? timeEl(at, true) : h("span", { class: "muted" }, "never"))))
      : note("No freshness data", "freshness");

    const segments = Array.isArray(p.segments) ? p.segments : [];
    const segList = segments.length
      ? h("ul", { class: "client-segments", testid: "client-segments" }, segments.map((x) => h("li", null,
        h("a", { href: segmentHash(String(x.segment)), class: "mono" }, String(x.segment)),
        h("span", { class: "muted" }, " since "), timeEl(x.entered_at))))
      : note("In no segment", "client-segments");

    const interests = Array.isArray(p.category_interest) ? p.category_interest.filter((x) => x && typeof x === "object") : [];
    let interestTable;
    if (interests.length) {
      const keys = [];
      for (const row of interests) for (const k of Object.keys(row)) if (!keys.includes(k)) keys.push(k);
      keys.sort((a, b) => (a === "category" ? -1 : b === "category" ? 1 : 0));
      const numeric = keys.map((k) => interests.every((row) => row[k] === null || row[k] === undefined || typeof row[k] === "number"));
      interestTable = h("div", { class: "table-wrap" }, h("table", { class: "table compact", testid: "category-interest" },
        h("thead", null, h("tr", null, keys.map((k, i) => h("th", { scope: "col", class: numeric[i] ? "num" : null }, k.replace(/_/g, " "))))),
        h("tbody", null, interests.map((row) => h("tr", null, keys.map((k, i) =>
          h("td", { class: numeric[i] ? "num" : null }, valueNode(row[k]))))))));
    } else {
      interestTable = note("No category interest yet", "category-interest");
    }

    fill(box, head, h("div", { class: "grid client-grid" },
      card("Summary", h("div", { class: "card-body" }, summary)),
      card("Traits", h("div", { class: "card-body" }, kvTable(Object.entries(traits), "traits", "Traits", "No traits"))),
      card("Features", h("div", { class: "card-body" },
        kvTable(Object.entries(features), "features", "Features", "No features"))),
      card("Freshness", h("div", { class: "card-body" },
        h("p", { class: "muted small" }, "When each feature group last changed"), freshList)),
      card("Segments", h("div", { class: "card-body" }, segList)),
      card("Category interest", h("div", { class: "card-body" }, interestTable))));
  }

  function timelineEntry(e) {
    const kind = e.kind === "touch" ? "touch" : "event";
    const li = h("li", {
      class: `tl-entry tl-${kind}`, testid: "timeline-entry", "data-kind": kind,
      "data-trigger-id": kind === "touch" && e.trigger_id ? String(e.trigger_id) : null,
    });
    const main = h("div", { class: "tl-main" },
      h("span", { class: "tl-type" }, e.type == null ? "?" : String(e.type)));
    if (e.alias) add(main, " ", h("span", { class: "tl-alias muted", testid: "timeline-alias",
      title: "Recorded under this anonymous id, before it was merged into the client" }, `as ${e.alias}`));
    if (kind === "touch") {
      const status = e.status == null ? "?" : String(e.status);
      add(main, " ", badge(status, `status-${status.replace(/[^a-z0-9_-]/gi, "")}`),
        " ", badge(e.source === "manual" ? "manual" : "trigger", "source"));
      const facts = [];
      if (e.channel) facts.push(`via ${e.channel}`);
      if (e.reason) facts.push(`reason: ${e.reason}`);
      if (e.source === "manual" && e.author) facts.push(`by ${e.author}`);
      if (facts.length) add(main, h("div", { class: "tl-facts muted" }, facts.join(" · ")));
      if (e.source === "manual" && e.comment) add(main, h("blockquote", { class: "tl-comment" }, String(e.comment)));
    } else if (e.summary) {
      add(main, h("div", { class: "tl-summary" }, String(e.summary)));
    }
    add(li, h("div", { class: "tl-time" }, timeEl(e.at)), main);
    return li;
  }

  function renderTimeline(box, data) {
    const entries = data && Array.isArray(data.entries) ? data.entries.filter((e) => e && typeof e === "object") : [];
    const list = h("ol", { class: "timeline", testid: "timeline" }, entries.map(timelineEntry));
    fill(box, entries.length ? list : [list, note("No events yet")]);
    return entries;
  }

  function touchForm(ctx, target, reloadTimeline) {
    const me = session.me || {};
    if (!me.can_record_touches) {
      return note("Recording touches needs an admin key or a point manager's key", "touch-disabled");
    }
    const field = (id, labelText, control) => h("div", { class: "field" }, h("label", { for: id }, labelText), control);
    const occasion = h("input", {
      id: "touch-occasion", type: "text", list: "touch-occasions", testid: "touch-occasion",
      autocomplete: "off", spellcheck: "false", placeholder: "e.g. renewal_call",
    });
    const datalist = h("datalist", { id: "touch-occasions" }, OCCASIONS.map((o) => h("option", { value: o })));
    const channel = h("select", { id: "touch-channel", testid: "touch-channel" }, CHANNELS.map((c) => h("option", { value: c }, c)));
    const status = h("select", { id: "touch-status", testid: "touch-status" }, STATUSES.map((c) => h("option", { value: c }, c)));
    const comment = h("textarea", { id: "touch-comment", testid: "touch-comment", rows: 3 });
    const author = h("input", {
      id: "touch-author", type: "text", testid: "touch-author", autocomplete: "off",
      value: storeGet("localStorage", AUTHOR_STORE) || null, placeholder: "you@example.com",
    });
    const submit = h("button", { type: "submit", class: "btn btn-primary", testid: "touch-submit" }, "Record touch");
    const error = h("p", { class: "form-error", testid: "touch-error", "aria-live": "assertive", hidden: true });
    const result = h("p", { class: "touch-result", testid: "touch-result", role: "status" });
    const inputs = { occasion, channel, status, comment, author };
    let poll = 0;

    const showError = (message, name) => {
      error.textContent = message;
      error.hidden = false;
      const input = inputs[name];
      if (input) {
        input.setAttribute("aria-invalid", "true");
        input.focus();
      }
    };
    const clearError = () => {
      error.textContent = "";
      error.hidden = true;
      for (const input of Object.values(inputs)) input.removeAttribute("aria-invalid");
    };

    const waitFor = (touchId, mine) => {
      let tries = 0;
      const pending = h("span", { class: "pending", testid: "touch-pending" }, " · pending…");
      add(result, pending);
      const step = async () => {
        if (mine !== poll) return;
        tries += 1;
        const entries = await reloadTimeline();
        if (mine !== poll || !ctx.alive()) return;
        if (entries === null) {
          pending.textContent = " · not confirmed (the timeline did not load)";
          return;
        }
        if (entries.some((e) => e.kind === "touch" && String(e.trigger_id) === String(touchId))) {
          pending.remove();
          add(result, h("span", { class: "muted" }, " · in the timeline"));
          return;
        }
        if (tries >= TOUCH_POLL_TRIES) {
          pending.textContent = " · not in the timeline yet: the dataflow applies touches asynchronously, reload later";
          return;
        }
        ctx.later(step, TOUCH_POLL_MS);
      };
      return step();
    };

    const form = h("form", { class: "touch-form", testid: "touch-form", novalidate: true },
      field("touch-occasion", "Occasion", [occasion, datalist]),
      h("div", { class: "field-row" }, field("touch-channel", "Channel", channel), field("touch-status", "Status", status)),
      field("touch-comment", "Comment", comment),
      field("touch-author", "Author", author),
      error,
      h("div", { class: "toolbar" }, submit),
      result);
    for (const input of Object.values(inputs)) input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
    form.addEventListener("submit", guard(async (event) => {
      event.preventDefault();
      clearError();
      result.replaceChildren();
      const occ = occasion.value.trim();
      if (!occ) {
        showError("occasion: enter an occasion", "occasion");
        return;
      }
      const body = { occasion: occ, channel: channel.value, status: status.value };
      const text = comment.value.trim();
      if (text) body.comment = text;
      const who = author.value.trim();
      if (who) body.author = who;
      storeSet("localStorage", AUTHOR_STORE, who || null);
      submit.disabled = true;
      const mine = ++poll;
      try {
        const response = await request(`/v1/profiles/${enc(target.id)}/touches`,
          { method: "POST", json: body, signal: ctx.signal });
        let data = {};
        try {
          data = await response.json();
        } catch (err) {
          if (err && err.name === "AbortError") throw err;
        }
        if (!ctx.alive()) return;
        fill(result, h("strong", null, "Recorded"),
          data && data.status === "duplicate" ? h("span", { class: "muted" }, " (a duplicate of an earlier touch)") : null);
        comment.value = "";
        if (data && data.touch_id) await waitFor(data.touch_id, mine);
        else await reloadTimeline();
      } catch (err) {
        if (err instanceof ApiError && (err.status === 400 || err.status === 422)) {
          showError(err.message, err.field);
        } else {
          ctx.fail(err);
        }
      } finally {
        submit.disabled = false;
      }
    }));
    return form;
  }

  function renderClient(id, routeKey) {
    const ctx = startPage("client", id ? `Client ${id}` : "Find a client", routeKey);
    const search = searchBox(ctx, "");
    add(ctx.root, pageHeader(id ? "Client" : "Find a client", null), h("div", { class: "card search-card" }, search.form));
    if (!id) {
      ctx.ready();
      search.input.focus();
      return;
    }
    const target = { id };
    const profileBox = h("div", { class: "profile" }, loading());
    const timelineBox = h("div", { class: "card-body" }, loading());
    const reloadTimeline = async () => {
      try {
        const data = await ctx.get(`/v1/profiles/${enc(target.id)}/timeline?limit=100`);
        return renderTimeline(timelineBox, data);
      } catch (err) {
        if (!isQuiet(err)) fill(timelineBox, errorNote(err));
        ctx.fail(err);
        return null;
      }
    };
    add(ctx.root, h("div", { class: "client-layout" },
      profileBox,
      h("div", { class: "client-side" },
        card("Record a touch", h("div", { class: "card-body" }, touchForm(ctx, target, reloadTimeline))),
        card("Timeline", timelineBox, { aside: "newest first" }))));
    // by ?id=, taken whole: an id may hold a comma (which ?ids= splits), or end in
    // /segments, /timeline or /touches (which a path reads as another client's sub-resource)
    const loadProfile = ctx.get(`/v1/profiles?id=${enc(id)}`).then((found) => {
      const p = found && Array.isArray(found.profiles) ? found.profiles[0] : null;
      if (!p) throw new ApiError(404, `unknown client '${id}'`);
      if (typeof p !== "object") throw new Error("the profile is not an object");
      if (typeof p.client_id === "string" && p.client_id) target.id = p.client_id;
      renderProfile(profileBox, p);
      document.title = `Client ${target.id} · crmflow console`;
    }).catch((err) => {
      fill(profileBox, h("h2", { class: "client-id mono" }, id), errorNote(err));
      ctx.fail(err);
    });
    Promise.all([loadProfile, reloadTimeline()])
      .catch(ctx.fail)
      .finally(() => ctx.ready());
  }

  // ---------------------------------------------------------------- rules

  function rulesCell(v) {
    if (v === null || v === undefined) return h("span", { class: "muted" }, "—");
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v === "number") return fmtNum(v);
    if (typeof v === "string") return v;
    try {
      return h("code", null, JSON.stringify(v));
    } catch (_) {
      return String(v);
    }
  }

  function renderRules(routeKey) {
    const ctx = startPage("rules", "Rules", routeKey);
    const body = h("div", { class: "rules" }, loading());
    add(ctx.root, pageHeader("Rules", "The configuration in force: triggers, segments, lifecycle and RFM (read-only)"), body);
    ctx.get("/v1/rules").then((data) => {
      const sections = data && Array.isArray(data.sections) ? data.sections.filter((x) => x && typeof x === "object") : [];
      if (!sections.length) {
        fill(body, note("No rules"));
        return;
      }
      fill(body, sections.map((sec) => {
        const columns = Array.isArray(sec.columns) ? sec.columns.map(String) : [];
        const rows = Array.isArray(sec.rows) ? sec.rows.filter(Array.isArray) : [];
        const numeric = columns.map((_, i) => rows.some((row) => typeof row[i] === "number")
          && rows.every((row) => row[i] === null || row[i] === undefined || typeof row[i] === "number"));
        return h("section", { class: "card rules-section", testid: "rules-section" },
          h("h2", { class: "card-title" }, sec.title == null ? "" : String(sec.title),
            h("span", { class: "card-aside" }, plural(rows.length, "row"))),
          h("div", { class: "card-body" }, rows.length
            ? dataTable(columns.map((c, i) => ({ label: c, num: numeric[i] })),
              rows.map((row) => columns.map((_, i) => rulesCell(row[i]))), { caption: String(sec.title || "") })
            : note("None")));
      }));
    }, (err) => {
      fill(body, errorNote(err));
      ctx.fail(err);
    }).catch(ctx.fail).finally(() => ctx.ready());
  }

  // ---------------------------------------------------------------- boot

  function boot() {
    for (const id of ["nav", "session", "whoami", "logout", "alert", "main", "login", "login-form",
      "login-key", "login-submit", "login-error"]) {
      dom[id.replace(/-(\w)/g, (_, c) => c.toUpperCase())] = document.getElementById(id);
    }
    dom.loginForm.addEventListener("submit", guard(onLogin));
    dom.logout.addEventListener("click", guard(() => signOut("")));
    window.addEventListener("hashchange", guard(() => route(false)));
    window.addEventListener("unhandledrejection", (event) => {
      // Last resort: every promise here is handled, but never let one reach the console.
      event.preventDefault();
      reportError(event.reason);
    });
    const key = storeGet("sessionStorage", KEY_STORE);
    if (key) {
      fill(dom.main, loading("Checking the key…"));
      signIn(key).catch(reportError);
    } else {
      showLogin("");
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
