"""The service's web page at /ui: pick a user, see history and recommendations, search, like or dislike.

One self-contained HTML document (no CDN, no build step) that talks to the service's own JSON
endpoints: POST /recommend, /search, /feedback and /history, and GET /info. It inserts every
value from the service with ``textContent``, never as HTML, so catalogue titles cannot inject
markup. Element ids and ``data-*`` attributes are stable: the headless-browser test relies on them.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lm-recsys</title>
<style>
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --accent: #0969da; --good: #1a7f37; --bad: #cf222e; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: var(--ink); background: #f6f8fa; }
header { background: #fff; border-bottom: 1px solid var(--line); padding: .8em 2em; display: flex; align-items: baseline; gap: 1.5em; flex-wrap: wrap; }
header h1 { font-size: 1.4em; margin: 0; }
main { max-width: 72em; margin: 0 auto; padding: 1em 2em 3em; }
section.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 1em 1.4em; margin: 1em 0; }
h2 { font-size: 1.1em; margin: 0 0 .6em; }
h3 { font-size: 1em; margin: .2em 0 .4em; color: var(--muted); font-weight: 600; }
form { display: flex; gap: .5em; align-items: center; flex-wrap: wrap; }
input { font: inherit; padding: .35em .6em; border: 1px solid var(--line); border-radius: 6px; }
button { font: inherit; padding: .3em .8em; border: 1px solid var(--line); border-radius: 6px; background: #f6f8fa; cursor: pointer; }
button:hover:not(:disabled) { border-color: var(--accent); }
button:disabled { opacity: .55; cursor: progress; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
button.like { color: var(--good); }
button.dislike { color: var(--bad); }
.columns { display: grid; grid-template-columns: minmax(0, 2fr) minmax(0, 3fr); gap: 1.5em; margin-top: .8em; }
@media (max-width: 50em) { .columns { grid-template-columns: 1fr; } }
ol, ul { padding-left: 1.6em; margin: .2em 0; }
ul#history { list-style: none; padding-left: 0; }
li { margin: .45em 0; }
.title { font-weight: 600; }
.meta, .why, .when { color: var(--muted); font-size: .9em; }
.why { font-style: italic; }
.actions { display: inline-flex; gap: .3em; margin-left: .4em; }
.status { min-height: 1.3em; color: var(--muted); }
.status.error { color: var(--bad); }
.notice { min-height: 1.3em; color: var(--good); }
.empty { color: var(--muted); font-style: italic; list-style: none; }
</style>
</head>
<body>
<header>
  <h1>lm-recsys</h1>
  <span class="meta" id="model" aria-live="polite">loading model info…</span>
</header>
<main>
<section class="card" id="user-section">
  <h2>Recommendations for a user</h2>
  <form id="user-form">
    <label for="user">User id</label>
    <input id="user" name="user" value="1" size="10" autocomplete="off" required>
    <button id="go" class="primary" type="submit">Show</button>
    <span class="meta">An unknown id gets the most popular items; like something to personalise them.</span>
  </form>
  <p class="status" id="source" aria-live="polite"></p>
  <p class="notice" id="notice" aria-live="polite"></p>
  <div class="columns">
    <div id="history-panel">
      <h3>Recent history</h3>
      <p class="meta" id="history-status"></p>
      <ul id="history"></ul>
    </div>
    <div id="recs-panel">
      <h3>Recommended next</h3>
      <ol id="recs"></ol>
    </div>
  </div>
</section>
<section class="card" id="search-section">
  <h2>Search by text</h2>
  <form id="search-form">
    <label for="query">Describe what to watch</label>
    <input id="query" name="query" size="42" maxlength="500" placeholder="a funny space adventure for kids" required>
    <button id="search" class="primary" type="submit">Search</button>
  </form>
  <p class="status" id="search-status" aria-live="polite"></p>
  <ol id="results"></ol>
</section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const K = 10;
// Answers can arrive out of order (the page loads user 1 while someone types another id):
// each view renders only the answer to its newest request.
const latest = {user: 0, search: 0};

class ServiceError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

async function post(path, body) {
  const response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch (_) { /* a plain-text error page */ }
  if (!response.ok) {
    const detail = data && data.detail ? data.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ") : "";
    throw new ServiceError((data && data.error ? data.error : text || response.statusText) + (detail ? ` (${detail})` : ""), response.status);
  }
  return data;
}

// JSON ids keep their type: MovieLens ids are integers, generic catalogues use strings.
function userId() {
  const value = $("user").value.trim();
  return /^-?\d+$/.test(value) ? Number(value) : value;
}

function eventId() {
  return (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function setStatus(id, message, isError = false) {
  const element = $(id);
  element.textContent = message;
  element.classList.toggle("error", isError);
}

function emptyRow(list, message) {
  const li = document.createElement("li");
  li.className = "empty";
  li.textContent = message;
  list.appendChild(li);
}

function itemRow(item, {withFeedback = false, detail = null} = {}) {
  const li = document.createElement("li");
  li.dataset.itemId = String(item.item_id);
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = item.title;
  li.appendChild(title);
  if (typeof item.score === "number") {
    const score = document.createElement("span");
    score.className = "meta";
    score.textContent = ` score ${item.score.toFixed(3)}`;
    li.appendChild(score);
  }
  if (withFeedback) {
    const actions = document.createElement("span");
    actions.className = "actions";
    for (const kind of ["like", "dislike"]) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = kind;
      button.dataset.action = kind;
      button.textContent = kind === "like" ? "+ like" : "− dislike";
      button.title = kind === "like" ? "More like this" : "Not for me: never show it again";
      button.addEventListener("click", () => sendFeedback(item, kind, button));
      actions.appendChild(button);
    }
    li.appendChild(actions);
  }
  const why = detail !== null ? detail : item.explanation;
  if (why) {
    const line = document.createElement("div");
    line.className = detail !== null ? "when" : "why";
    line.textContent = why;
    li.appendChild(line);
  }
  return li;
}

function renderList(list, items, options, emptyMessage) {
  list.replaceChildren();
  if (!items.length) { emptyRow(list, emptyMessage); return; }
  for (const item of items) list.appendChild(itemRow(item, options));
}

function describeEvent(entry) {
  const when = entry.timestamp ? new Date(entry.timestamp * 1000).toISOString().slice(0, 10) : "";
  const what = entry.event === "rating" && entry.value !== null && entry.value !== undefined ? `rated ${entry.value}` : entry.event;
  return [what, when].filter(Boolean).join(" · ");
}

async function loadHistory(user, ticket) {
  const list = $("history");
  try {
    const data = await post("/history", {user_id: user, limit: K});
    if (ticket !== latest.user) return;
    list.replaceChildren();
    if (!data.items.length) {
      emptyRow(list, "no interactions yet");
    } else {
      for (const entry of data.items) list.appendChild(itemRow(entry, {detail: describeEvent(entry)}));
    }
    setStatus("history-status", data.items.length ? `newest first, ${plural(data.items.length, "item")} shown` : "");
  } catch (error) {
    if (ticket !== latest.user) return;
    list.replaceChildren();
    // An older service without POST /history still serves recommendations.
    if (error.status === 404 && /not found/i.test(error.message)) {
      setStatus("history-status", "this service does not expose user history");
    } else {
      setStatus("history-status", "history unavailable: " + error.message, true);
    }
  }
}

async function recommend() {
  const user = userId();
  if (user === "") { setStatus("source", "enter a user id", true); return; }
  const ticket = ++latest.user;
  $("go").disabled = true;
  try {
    const [data] = await Promise.all([post("/recommend", {user_id: user, k: K}), loadHistory(user, ticket)]);
    if (ticket !== latest.user) return;
    setStatus("source", `user ${data.user_id}: ${plural(data.items.length, "item")} from ${data.source}, model ${data.model} version ${data.model_version}` +
      (data.recent_events_used ? `, using ${plural(data.recent_events_used, "recent event")}` : ""));
    renderList($("recs"), data.items, {withFeedback: true}, "nothing left to recommend");
  } catch (error) {
    if (ticket !== latest.user) return;
    setStatus("source", "could not recommend: " + error.message, true);
    $("recs").replaceChildren();
  } finally {
    if (ticket === latest.user) $("go").disabled = false;
  }
}

async function sendFeedback(item, kind, button) {
  const user = userId();
  for (const b of $("recs").querySelectorAll("button")) b.disabled = true;
  try {
    await post("/feedback", {user_id: user, item_id: item.item_id, event: kind, event_id: eventId()});
    $("notice").textContent = `Recorded: you ${kind}d ${item.title}. Recommendations updated.`;
    await recommend();
  } catch (error) {
    $("notice").textContent = "";
    setStatus("source", `could not record the ${kind}: ${error.message}`, true);
    for (const b of $("recs").querySelectorAll("button")) b.disabled = false;
  }
}

async function search() {
  const query = $("query").value.trim();
  if (!query) { setStatus("search-status", "type a few words first", true); return; }
  const ticket = ++latest.search;
  $("search").disabled = true;
  setStatus("search-status", "searching…");
  try {
    const data = await post("/search", {query, k: K});
    if (ticket !== latest.search) return;
    setStatus("search-status", `${plural(data.items.length, "item")} closest to “${query}”`);
    renderList($("results"), data.items, {}, "no matches");
  } catch (error) {
    if (ticket !== latest.search) return;
    setStatus("search-status", "search failed: " + error.message, true);
    $("results").replaceChildren();
  } finally {
    if (ticket === latest.search) $("search").disabled = false;
  }
}

async function loadInfo() {
  try {
    const response = await fetch("/info");
    const info = await response.json();
    $("model").textContent = info.ready
      ? `serving ${info.model_name} version ${info.model_version} · snapshot ${info.snapshot_id} · encoder ${info.encoder_id}`
      : "no model is loaded yet: the first pipeline run has not promoted a champion";
    return info.ready;
  } catch (error) {
    $("model").textContent = "model info unavailable: " + error.message;
    return false;
  }
}

$("user-form").addEventListener("submit", (event) => { event.preventDefault(); $("notice").textContent = ""; recommend(); });
$("search-form").addEventListener("submit", (event) => { event.preventDefault(); search(); });
loadInfo().then((ready) => { if (ready) recommend(); });
</script>
</body>
</html>
"""
