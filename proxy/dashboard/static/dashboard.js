// modelbus fleet: live rows over server-sent events. Every value from the server is shown with
// textContent (a status is a service's claim, never markup).
"use strict";
(() => {
  const STATES = ["alive", "stale", "dead", "retired", "untrusted"];
  const LABEL = { alive: "alive", stale: "late", dead: "dead", retired: "retired", untrusted: "untrusted" };
  const rows = new Map();      // service -> row
  const cards = new Map();     // service -> {el, group, version}
  const groups = new Map();    // prefix -> {el, grid, tally}
  const hidden = new Set();    // states filtered out
  let offsetMs = 0, link = null, feedUp = false, text = "";
  const $ = (id) => document.getElementById(id);
  const token = new URLSearchParams(location.search).get("token");

  function el(tag, cls, content) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (content !== undefined) node.textContent = content;
    return node;
  }
  const now = () => Date.now() + offsetMs;
  function ago(ms) {
    if (ms == null) return "never";
    const s = Math.max(0, (now() - ms) / 1000);
    if (s < 60) return s.toFixed(1) + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s ago";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min ago";
  }
  function duration(s) {
    if (typeof s !== "number" || !isFinite(s)) return "–";
    if (s < 120) return Math.floor(s) + " s";
    if (s < 7200) return Math.floor(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }
  function uptime(row) {
    // the status' uptime, ticking on while the service is alive or late
    const status = row.status || {};
    if (typeof status.uptime_s !== "number") return undefined;
    if ((row.state !== "alive" && row.state !== "stale") || typeof status.ts !== "number") return status.uptime_s;
    return status.uptime_s + Math.max(0, now() - status.ts / 1e6) / 1000;
  }
  function shortUri(uri) {
    // A namespace key is 43 characters: show its start, keep the rest readable.
    const [ns, ...rest] = uri.split("/");
    const head = ns.length === 43 ? ns.slice(0, 8) + "…" : ns;
    return [head, ...rest].join("/");
  }
  function prefixOf(service) {
    const cut = service.lastIndexOf("/");
    return cut > 0 ? service.slice(0, cut) : service;
  }
  function nameOf(service) { return service.slice(service.lastIndexOf("/") + 1); }

  function matches(row) {
    if (hidden.has(row.state)) return false;
    if (!text) return true;
    const names = (row.instances || []).map((i) => i.instance).join(" ");
    const models = ((row.status && row.status.models) || []).map((m) => m && (m.model + ":" + m.version)).join(" ");
    return (row.service + " " + row.reason + " " + row.state + " " + models + " " + names).toLowerCase().includes(text);
  }

  function group(prefix) {
    let g = groups.get(prefix);
    if (g) return g;
    const section = el("section", "group");
    const h = el("h2");
    h.append(el("span", "", shortUri(prefix)));
    const tally = el("span", "tally");
    h.append(tally);
    const grid = el("div", "grid");
    section.append(h, grid);
    g = { el: section, grid, tally };
    groups.set(prefix, g);
    const sorted = [...groups.keys()].sort();
    const next = sorted[sorted.indexOf(prefix) + 1];
    $("groups").insertBefore(section, next ? groups.get(next).el : null);
    return g;
  }

  function models(status) {
    const box = el("div", "models");
    const list = Array.isArray(status.models) ? status.models : [];
    for (const m of list.slice(0, 8)) {
      if (!m || typeof m !== "object") continue;
      const line = el("div", "model");
      const rs = m.replica_states || {};
      const ready = rs.ready ?? (m.ready ? m.replicas : 0), starting = rs.starting ?? 0;
      const crashed = rs.failed ?? 0;
      line.append(el("span", "dot " + (m.ready ? (crashed ? "warn" : "ok") : "bad")));
      line.append(el("span", "mv", String(m.model) + ":" + String(m.version)));
      const reps = el("span", "reps");
      reps.append(el("span", "r", String(ready ?? 0)), "/", el("span", "s", String(starting)), "/",
        el("span", "c", String(crashed)));
      reps.title = "replicas ready / starting / crashed" + (m.restarts ? ", " + m.restarts + " restarts" : "");
      line.append(reps);
      if (typeof m.queued === "number") line.append(el("span", "reps", "q " + m.queued));
      box.append(line);
    }
    if (list.length > 8) box.append(el("div", "reason", "+" + (list.length - 8) + " more models"));
    return box;
  }

  function uploads(status) {
    const box = el("div");
    const list = Array.isArray(status.uploads) ? status.uploads : [];
    for (const u of list.slice(0, 3)) {
      if (!u || typeof u !== "object") continue;
      const done = typeof u.size === "number" && u.size > 0 ? Math.min(1, (u.received_bytes || 0) / u.size) : 0;
      const line = el("div", "upload", "⇪ " + String(u.name ?? "upload") + " " + Math.round(done * 100) + " %");
      const bar = el("div", "bar"); const fill = el("i"); fill.style.width = (done * 100).toFixed(1) + "%";
      bar.append(fill); line.append(bar); box.append(line);
    }
    return box;
  }

  function beats(row) {
    const box = el("div", "beats");
    box.append(el("span", "label", "beats"));
    const h = row.history || [];
    const expected = (row.interval_s || 10) * 1000;
    for (let i = 0; i < h.length; i++) {
      const gap = i ? h[i][0] - h[i - 1][0] : expected;
      const bar = el("i", h[i][1] ? (gap > 1.5 * expected ? "late" : "") : "bad");
      bar.style.height = Math.max(6, Math.min(18, 18 * Math.min(gap, 2 * expected) / (2 * expected))) + "px";
      bar.title = new Date(h[i][0]).toISOString() + (h[i][1] ? "" : " untrusted");
      box.append(bar);
    }
    return box;
  }

  function instances(row) {
    // A service served by named instances: one line each, its state and when it was last seen.
    const box = el("div", "instances");
    for (const i of row.instances.slice(0, 16)) {
      const line = el("div", "instance " + i.state);
      line.dataset.instance = String(i.instance);
      line.dataset.state = i.state;
      line.append(el("span", "dot"), el("span", "iname", String(i.instance)),
        el("span", "ibadge", LABEL[i.state] || i.state), el("span", "ireason", i.reason));
      const seen = el("span", "iage", ago(i.last_alive_ms));
      seen.dataset.ms = i.last_alive_ms == null ? "" : String(i.last_alive_ms);
      line.append(seen);
      box.append(line);
    }
    if (row.instances.length > 16) box.append(el("div", "reason", "+" + (row.instances.length - 16) + " more instances"));
    return box;
  }

  function factsOf(row) {
    // The service's own status; with named instances, the first alive instance's.
    const own = row.status && typeof row.status === "object" ? row.status : {};
    if (Object.keys(own).length || !Array.isArray(row.instances)) return own;
    const live = row.instances.find((i) => i.state === "alive") || row.instances[0];
    return live && live.status && typeof live.status === "object" ? live.status : {};
  }

  function render(row) {
    const card = el("article", "card " + row.state);
    card.dataset.service = row.service;
    card.dataset.state = row.state;
    const top = el("div", "top");
    const name = el("span", "name", nameOf(row.service));
    name.title = row.service;
    top.append(name, el("span", "badge", LABEL[row.state] || row.state));
    card.append(top, el("div", "reason", row.reason));
    if (Array.isArray(row.instances) && row.instances.length) card.append(instances(row));
    const status = factsOf(row);
    const facts = el("div", "facts");
    const seen = el("span"); seen.append("seen ", el("b", "age", ago(row.last_alive_ms)));
    const up = el("span"); up.append("up ", el("b", "uptime", duration(uptime({ ...row, status }))));
    facts.append(seen, up);
    if (typeof status.requests_per_s === "number") {
      const r = el("span"); r.append(el("b", "", status.requests_per_s.toFixed(1)), " req/s"); facts.append(r);
    }
    if (typeof status.queued === "number") {
      const q = el("span"); q.append("queue ", el("b", "", String(status.queued))); facts.append(q);
    }
    if (typeof status.version === "string") facts.append(el("span", "", "v" + status.version));
    card.append(facts, models(status), uploads(status), beats(row));
    return card;
  }

  function place(row) {
    const old = cards.get(row.service);
    const card = render(row);
    card.hidden = !matches(row);
    const g = group(prefixOf(row.service));
    if (old) old.el.replaceWith(card);
    else {
      const names = [...g.grid.children].map((c) => c.dataset.service);
      const at = names.findIndex((s) => s > row.service);
      g.grid.insertBefore(card, at < 0 ? null : g.grid.children[at]);
    }
    cards.set(row.service, { el: card });
  }

  function refreshFilters() {
    for (const [service, c] of cards) c.el.hidden = !matches(rows.get(service));
    for (const [prefix, g] of groups) {
      const members = [...g.grid.children];
      const shown = members.filter((c) => !c.hidden);
      g.el.hidden = shown.length === 0;
      const tally = {};
      for (const c of members) tally[c.dataset.state] = (tally[c.dataset.state] || 0) + 1;
      g.tally.textContent = STATES.filter((s) => tally[s]).map((s) => tally[s] + " " + LABEL[s]).join(" · ");
    }
    $("empty").hidden = rows.size > 0;
  }

  function counts(c) {
    for (const b of document.querySelectorAll(".chip")) {
      const n = (c && c[b.dataset.state]) || 0;
      b.querySelector("b").textContent = String(n);
      b.classList.toggle("zero", n === 0);
    }
  }

  function banner() {
    const b = $("banner");
    document.body.classList.toggle("link-down", !feedUp || (link && !link.up));
    if (!feedUp) {
      b.hidden = false;
      b.replaceChildren("Dashboard server unreachable — reconnecting…",
        el("small", "", "The rows below are the last known state."));
    } else if (link && !link.up) {
      b.hidden = false;
      b.replaceChildren("Bus link DOWN — " + ago(link.since_ms).replace(" ago", "") + ", reconnecting…",
        el("small", "", (link.error || "no answer from the bus") + " · the rows below are the last known state, not judged while the link is down"));
    } else b.hidden = true;
    $("bus").textContent = link ? (link.up ? "bus link up since " + new Date(link.since_ms).toLocaleTimeString() : "bus link down") : "";
  }

  function apply(data, full) {
    offsetMs = data.now_ms - Date.now();
    link = data.link;
    $("pattern").textContent = shortUri(data.pattern || "");
    if (full) {
      rows.clear(); cards.clear(); groups.clear();
      $("groups").replaceChildren($("empty"));
    }
    for (const row of data.rows) { rows.set(row.service, row); place(row); }
    counts(data.counts);
    refreshFilters();
    banner();
    $("feed").textContent = "live · updated " + new Date(data.now_ms).toLocaleTimeString();
  }

  function connect() {
    const source = new EventSource("events" + (token ? "?token=" + encodeURIComponent(token) : ""));
    source.addEventListener("snapshot", (e) => { feedUp = true; apply(JSON.parse(e.data), true); });
    source.addEventListener("update", (e) => apply(JSON.parse(e.data), false));
    source.onerror = () => { feedUp = false; banner(); $("feed").textContent = "feed lost, reconnecting…"; };
  }

  function tick() {
    for (const [service, c] of cards) {
      const row = rows.get(service);
      const age = c.el.querySelector(".age");
      if (age) age.textContent = ago(row.last_alive_ms);
      const up = c.el.querySelector(".uptime");
      if (up) up.textContent = duration(uptime({ ...row, status: factsOf(row) }));
      for (const i of c.el.querySelectorAll(".iage")) i.textContent = ago(i.dataset.ms ? Number(i.dataset.ms) : null);
    }
    $("clock").textContent = new Date(now()).toISOString().slice(11, 19) + " UTC";
    if (link && !link.up) banner();
  }

  for (const b of document.querySelectorAll(".chip")) {
    b.addEventListener("click", () => {
      const s = b.dataset.state;
      if (hidden.has(s)) hidden.delete(s); else hidden.add(s);
      b.classList.toggle("off", hidden.has(s));
      refreshFilters();
    });
  }
  $("filter").addEventListener("input", (e) => { text = e.target.value.trim().toLowerCase(); refreshFilters(); });
  connect();
  setInterval(tick, 250);
  tick();
})();
