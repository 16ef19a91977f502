// The console's pages: the server renders shells; this fetches their data from /api with
// the operator's token (kept in sessionStorage, sent as Authorization) and fills them in.
"use strict";

const TOKEN_KEY = "taskevents-console-token";
const page = document.body.dataset.page;
const $ = (selector) => document.querySelector(selector);

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function toLogin(reason) {
  const next = encodeURIComponent(location.pathname + location.search);
  location.href = `/login?next=${next}` + (reason ? `&reason=${encodeURIComponent(reason)}` : "");
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${token()}` };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    toLogin(body.detail || `answered ${response.status}`);
    throw new Error("not signed in as an operator");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error((body && body.detail) || `answered ${response.status}`);
  return body;
}

function problem(text) {
  const box = $("#problem");
  box.hidden = !text;
  box.textContent = text || "";
}

function row(tbody, cells, attrs = {}) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs)) tr.setAttribute(k, v);
  for (const value of cells) {
    const td = document.createElement("td");
    if (value instanceof Node) td.append(value);
    else td.textContent = value === null || value === undefined ? "–" : String(value);
    tr.append(td);
  }
  tbody.append(tr);
  return tr;
}

function fill(selector, items, cells, attrs) {
  const tbody = $(`${selector} tbody`);
  tbody.replaceChildren();
  for (const item of items) row(tbody, cells(item), attrs ? attrs(item) : {});
}

function span(text, cls) { const s = document.createElement("span"); s.textContent = text; s.className = cls || ""; return s; }
function link(text, href) { const a = document.createElement("a"); a.textContent = text; a.href = href; return a; }
// An event's trace in Jaeger (its query API, CONSOLE_TRACES_URL), when it has one.
function traceLink(traceId) {
  const base = document.body.dataset.tracesUrl;
  return traceId && base ? link(traceId, `${base}/${encodeURIComponent(traceId)}`) : traceId;
}
function button(text, cls, onclick) { const b = document.createElement("button"); b.textContent = text; b.className = cls; b.onclick = onclick; return b; }

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.floor(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function every(seconds, work) {
  const run = async () => {
    try { await work(); problem(null); } catch (error) { problem(error.message); }
  };
  run();
  return setInterval(run, seconds * 1000);
}

const pages = {
  login() {
    const params = new URLSearchParams(location.search);
    if (params.get("reason")) problem(params.get("reason"));
    const done = (value) => {
      sessionStorage.setItem(TOKEN_KEY, value);
      const next = params.get("next");
      location.href = next && next.startsWith("/") && !next.startsWith("//") ? next : "/apps";
    };
    const dev = $("#dev-login");
    if (dev) dev.onsubmit = async (event) => {
      event.preventDefault();
      const response = await fetch("/login/dev-token", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ user_id: $("#user").value }),
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) { problem(body.detail || `answered ${response.status}`); return; }
      done(body.token);
    };
    $("#paste-login").onsubmit = (event) => { event.preventDefault(); done($("#token").value.trim()); };
  },

  apps() {
    every(5, async () => {
      const apps = await api("/api/apps");
      fill("#apps", apps, (a) => [
        link(a.app_id, `/apps/${encodeURIComponent(a.app_id)}`),
        a.sidecar_healthy ? span("healthy", "good") : span(a.sidecar_problem || "down", "bad"),
        span(a.health, a.health === "healthy" || a.health === "no app" ? "good" : "bad"),
        span(a.ready + (a.failing ? ": " + Object.entries(a.failing).map(([k, v]) => `${k}: ${v}`).join("; ") : ""),
             a.ready === "ready" || a.ready === "no app" ? "good" : "bad"),
        a.instances, a.runtime_version, a.app_port, duration(a.uptime_seconds),
      ], (a) => ({ "data-app-id": a.app_id }));
    });
  },

  app() {
    const appId = document.body.dataset.appId;
    every(10, async () => {
      const d = await api(`/api/apps/${encodeURIComponent(appId)}`);
      const s = d.status;
      $("#status").textContent =
        `sidecar ${s.sidecar} ${s.sidecar_healthy ? "healthy" : "DOWN"} · daprd ${s.runtime_version || "?"}` +
        ` · app ${s.health}, ${s.ready} · uptime ${duration(s.uptime_seconds)}` +
        (d.metadata_problem ? ` · metadata: ${d.metadata_problem}` : "");
      fill("#components", d.components, (c) => [c.name, c.type, c.version, (c.capabilities || []).join(", ")]);
      fill("#subscriptions", d.subscriptions, (x) => [
        x.pubsub, x.topic, x.routes.join(", "), x.dead_letter_topic || "none", x.type,
        x.bulk ? `bulk: ${x.bulk.maxMessagesCount} messages / ${x.bulk.maxAwaitDurationMs} ms` : "one at a time",
        JSON.stringify(x.metadata),
      ], (x) => ({ "data-topic": x.topic }));
      $("#resiliency").textContent = d.files_exposed ? JSON.stringify(d.resiliency, null, 2) : "not exposed (the sidecar is not a local process)";
      $("#configuration").textContent = d.files_exposed ? JSON.stringify(d.configuration, null, 2) : "not exposed";
      const logs = $("#logs");
      logs.replaceChildren();
      if (!d.logs) { logs.append(span("not exposed here (no log files of this app in the console's log directory)", "quiet")); return; }
      for (const [name, lines] of Object.entries(d.logs)) {
        const h = document.createElement("h3"); h.textContent = name;
        const pre = document.createElement("pre"); pre.textContent = lines.join("\n");
        logs.append(h, pre);
        pre.scrollTop = pre.scrollHeight;
      }
    });
  },

  pubsub() {
    every(5, async () => {
      const d = await api("/api/pubsub");
      $("#sampled").textContent = d.sampled_at
        ? `sampled ${new Date(d.sampled_at * 1000).toLocaleTimeString()}; dead-letter depth ${d.dead_letter_depth ?? "?"}`
          + (Object.keys(d.errors).length ? ` · not sampled: ${Object.entries(d.errors).map(([k, v]) => `${k} (${v})`).join(", ")}` : "")
        : "no sample yet";
      const stalls = $("#stalls");
      stalls.replaceChildren();
      for (const s of d.stalls) {
        const p = document.createElement("p"); p.className = "warning"; p.dataset.group = s.group;
        p.textContent = `Stalled? ${s.group} on ${s.topic}: lag ${s.lag_before} → ${s.lag_now}; ${s.reason}`;
        stalls.append(p);
      }
      fill("#deliveries", d.deliveries, (x) => [x.topic, x.app_id, x.success, x.retry, x.drop,
        x.success_per_second, x.retry_per_second, x.drop_per_second]);
      fill("#groups", d.groups, (g) => [g.group, g.topic, g.members, g.lag, g.previous_lag],
        (g) => ({ "data-group": g.group, "data-topic": g.topic }));
      fill("#partitions", d.lag, (p) => [p.group, p.topic, p.partition, p.committed, p.end, p.lag]);
    });
  },

  "dead-letters"() {
    const load = async () => {
      const status = $("#status").value;
      const d = await api(`/api/dead-letters${status ? `?status=${status}` : ""}`);
      $("#depth").textContent = d.depth ?? "unknown";
      $("#dlq-topic").textContent = d.topic;
      fill("#letters", d.items, (l) => [
        l.id, new Date(l.last_seen).toLocaleString(), l.original_topic,
        publisher(l), l.type, l.task_id, l.reason || "none given (dropped by a subscriber)",
        l.status, actions(l),
      ], (l) => ({ "data-letter-id": l.id, "data-event-id": l.event_id || "" }));
    };
    // Dapr moves the original message unchanged: its CloudEvent names the app that published it.
    const publisher = (l) => { try { return JSON.parse(l.raw).source || "–"; } catch { return "–"; } };
    const act = (method, path) => async () => {
      try { await api(path, { method }); await load(); problem(null); } catch (error) { problem(error.message); }
    };
    const actions = (l) => {
      const cell = document.createElement("span");
      if (l.status !== "discarded") cell.append(button("Replay", "replay", act("POST", `/api/dead-letters/${l.id}/replay`)));
      if (l.status === "new") cell.append(" ", button("Discard", "discard", act("DELETE", `/api/dead-letters/${l.id}`)));
      return cell;
    };
    $("#status").onchange = () => load().catch((e) => problem(e.message));
    every(10, load);
  },

  events() {
    every(2, async () => {
      const d = await api("/api/events?limit=50");
      fill("#tail", d.items, (e) => [new Date(e.timestamp).toLocaleTimeString(), e.type,
        link(e.task_id, `#${encodeURIComponent(e.task_id)}`), e.user_id, e.event_id],
        (e) => ({ "data-event-id": e.event_id }));
    });
    const search = async (taskId) => {
      $("#task-id").value = taskId;
      try {
        const d = await api(`/api/tasks/${encodeURIComponent(taskId)}`);
        $("#path").hidden = false;
        fill("#history", d.history, (e) => [e.timestamp, e.type, e.event_id, e.source,
          e.kafka_partition !== null ? `${e.kafka_partition}/${e.kafka_offset}` : "–",
          e.received_at, traceLink(e.trace_id)], (e) => ({ "data-event-id": e.event_id }));
        fill("#notifications", d.notifications.items, (n) => [n.event_id, n.channel, n.recipient, n.status, n.sent_at]);
        fill("#schedules", d.schedules.items, (s) => [s.id, s.cron || `${s.interval_seconds} s`, s.timezone, s.paused ? "paused" : "active"]);
        const problems = [...d.notifications.problems, ...d.schedules.problems];
        problem(problems.length ? problems.join("; ") : null);
      } catch (error) { problem(error.message); }
    };
    $("#search").onsubmit = (event) => { event.preventDefault(); location.hash = encodeURIComponent($("#task-id").value.trim()); };
    window.onhashchange = () => location.hash.length > 1 && search(decodeURIComponent(location.hash.slice(1)));
    window.onhashchange();
  },

  "control-plane"() {
    every(5, async () => {
      const d = await api("/api/control-plane");
      fill("#processes", d.processes, (p) => [p.program, p.pid, p.app_id, p.http_port, p.grpc_port,
        p.metrics_port, p.app_port, duration(p.uptime_seconds)]);
    });
  },
};

if (page !== "login" && !token()) toLogin();
else {
  const who = $("#who");
  try {
    const claims = JSON.parse(atob(token().split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    who.textContent = `operator: ${claims.sub}`;
  } catch { who.textContent = ""; }
  $("#sign-out").onclick = () => { sessionStorage.removeItem(TOKEN_KEY); toLogin(); };
  pages[page]();
}
