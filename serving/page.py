"""A small self-contained web page: pick a user, see recommendations, search, like or dislike."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lm-recsys</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}
input,button{font-size:1em;padding:.3em .6em;margin:.2em}
li{margin:.4em 0} .why{color:#666;font-size:.9em} .meta{color:#555}
button.like{background:#e6f4ea} button.dislike{background:#fde2e2}
</style></head>
<body>
<h1>lm-recsys</h1>
<p class="meta" id="model">loading model info…</p>
<section>
  <h2>Recommendations for a user</h2>
  <input id="user" placeholder="user id" value="1"> <button id="go">Recommend</button>
  <p class="meta" id="source"></p>
  <ol id="recs"></ol>
</section>
<section>
  <h2>Search by text</h2>
  <input id="query" placeholder="a funny space adventure for kids" size="40"> <button id="search">Search</button>
  <ol id="results"></ol>
</section>
<script>
async function post(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || JSON.stringify(data));
  return data;
}
function userId() { const v = document.getElementById("user").value.trim(); return /^-?\\d+$/.test(v) ? Number(v) : v; }
function render(list, items, withButtons) {
  list.innerHTML = "";
  for (const it of items) {
    const li = document.createElement("li");
    li.dataset.itemId = it.item_id;
    li.innerHTML = `<b class="title"></b> <span class="meta">(${it.score.toFixed(3)})</span> <div class="why"></div>`;
    li.querySelector(".title").textContent = it.title;
    li.querySelector(".why").textContent = it.explanation || "";
    if (withButtons) {
      for (const kind of ["like", "dislike"]) {
        const b = document.createElement("button");
        b.className = kind; b.textContent = kind;
        b.onclick = async () => { await post("/feedback", {user_id: userId(), item_id: it.item_id, event: kind}); await recommend(); };
        li.appendChild(b);
      }
    }
    list.appendChild(li);
  }
}
async function recommend() {
  try {
    const data = await post("/recommend", {user_id: userId(), k: 10});
    document.getElementById("source").textContent = `source: ${data.source}, model ${data.model} v${data.model_version}`;
    render(document.getElementById("recs"), data.items, true);
  } catch (e) { document.getElementById("source").textContent = "error: " + e.message; }
}
async function search() {
  const data = await post("/search", {query: document.getElementById("query").value, k: 10});
  render(document.getElementById("results"), data.items, false);
}
document.getElementById("go").onclick = recommend;
document.getElementById("search").onclick = search;
fetch("/info").then(r => r.json()).then(i => { document.getElementById("model").textContent = `serving ${i.model_name} version ${i.model_version} (snapshot ${i.snapshot_id})`; });
</script>
</body></html>
"""
