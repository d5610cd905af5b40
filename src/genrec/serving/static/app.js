// genrec's page: search the catalogue, build a history by clicking, see the top-k, rank candidates.
// Plain JS over the same /v1 routes as any client; no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { card: null, history: [], titles: new Map(), recs: [], profile: new Map() };

function token() { return localStorage.getItem("genrec-token") || ""; }

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  if (res.status === 401) $("#token-box").hidden = false;
  if (!res.ok) throw new Error((data.error && data.error.message) || `${res.status} ${res.statusText}`);
  return data;
}

function showError(err) {
  const box = $("#error");
  box.textContent = err ? String(err.message || err) : "";
  box.hidden = !err;
}

function itemRow(item, extra) {
  const li = document.createElement("li");
  li.dataset.item = item.item;
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = item.title || item.item;
  li.append(title);
  if (item.title) {
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = item.item;
    li.append(id);
  }
  if (extra) li.append(...extra);
  if (item.title) state.titles.set(item.item, item.title);
  return li;
}

// ---- model card ---------------------------------------------------------------------------------
async function loadCard() {
  const card = await api("GET", "/v1/model");
  state.card = card;
  const test = card.metrics && card.metrics.test;
  const ndcg = test && test["ndcg@10"] != null ? `, test NDCG@10 ${test["ndcg@10"].toFixed(4)}` : "";
  const name = (card.model && card.model.name) || "model";
  $("#model-info").textContent =
    `${name} · ${card.kind} · ${card.num_items} items · index ${card.index ? card.index.kind : "none"}` +
    `${card.index ? ` (${card.index.score})` : ""}${ndcg}`;
  $("#rank-panel").hidden = card.tasks.length === 0;
  $("#k").max = card.num_items;
  renderContext(card);
  if (card.kind === "ranking") $("#recs-panel").querySelector("h2").textContent = "Ranking-only checkpoint: no retrieval";
}

// A multi-domain model answers for one domain (its items only); a model with user features reads
// the user's attributes (field=value tokens of its vocabulary). Both go with every request.
function renderContext(card) {
  const domains = Object.keys(card.domains || {});
  const select = $("#domain");
  select.replaceChildren(...domains.map((d) => new Option(d, d)));
  $("#domain-box").hidden = domains.length === 0;
  const fields = new Map();
  for (const tok of card.user_attributes || []) {
    const cut = tok.indexOf("=");
    const field = cut < 0 ? tok : tok.slice(0, cut);
    if (!fields.has(field)) fields.set(field, []);
    fields.get(field).push(tok);
  }
  state.profile = new Map([...state.profile].filter(([f, tok]) => (fields.get(f) || []).includes(tok)));
  $("#profile").replaceChildren(...[...fields].map(([field, toks]) => {
    const label = document.createElement("label");
    const pick = document.createElement("select");
    pick.dataset.field = field;
    pick.append(new Option("(not given)", ""), ...toks.map((t) => new Option(t.slice(field.length + 1) || t, t)));
    pick.value = state.profile.get(field) || "";
    pick.onchange = () => { if (pick.value) state.profile.set(field, pick.value); else state.profile.delete(field); refresh(); };
    label.append(`${field} `, pick);
    return label;
  }));
  $("#profile").hidden = fields.size === 0;
  $("#context").hidden = domains.length === 0 && fields.size === 0;
}

// ---- search -------------------------------------------------------------------------------------
let searchTimer = null;
async function search() {
  const data = await api("GET", `/v1/items?query=${encodeURIComponent($("#search").value)}&limit=20`);
  const list = $("#results");
  list.replaceChildren(...data.items.map((item) => itemRow(item)));
}

// ---- history ------------------------------------------------------------------------------------
function addToHistory(item) {
  state.history.push({ item, feedback: ratingMode() ? ratingScale()[1] : 1 });
  renderHistory();
  refresh();
}

// checkpoints whose tasks are like and the rating read one rating per item (the card's rating_feedback)
function ratingMode() { return state.card != null && state.card.rating_feedback != null; }
// [min, max] of the training ratings (the card's rating_range; 1-5 where the checkpoint does not say)
function ratingScale() { return (state.card && state.card.rating_range) || [1, 5]; }

function renderHistory() {
  const rows = state.history.map((h, i) => {
    const extra = [];
    if (state.card && state.card.reads_feedback) {
      const fb = document.createElement("button");
      fb.type = "button";
      fb.className = "fb";
      if (ratingMode()) {  // a click steps the rating down by 1 from the top of the scale, then wraps: 5, 4, 3, 2, 1, 5, ...
        fb.textContent = `rated ${h.feedback}`;
        fb.title = `the rating the model reads for this item (like = rating >= ${state.card.rating_feedback}); click to change`;
        fb.onclick = (e) => { e.stopPropagation(); const [lo, hi] = ratingScale(); h.feedback = h.feedback - 1 >= lo ? h.feedback - 1 : hi; renderHistory(); refresh(); };
      } else {
        fb.textContent = h.feedback ? "liked" : "skipped";
        fb.title = "feedback the model reads for this item";
        fb.onclick = (e) => { e.stopPropagation(); h.feedback = 1 - h.feedback; renderHistory(); refresh(); };
      }
      extra.push(fb);
    }
    const rm = document.createElement("span");
    rm.className = "remove";
    rm.textContent = "✕";
    rm.title = "remove";
    rm.onclick = (e) => { e.stopPropagation(); state.history.splice(i, 1); renderHistory(); refresh(); };
    extra.push(rm);
    return itemRow({ item: h.item, title: state.titles.get(h.item) }, extra);
  });
  $("#history").replaceChildren(...rows);
}

function historyBody() {
  const now = Math.floor(Date.now() / 1000);
  const n = state.history.length;
  const body = { history: state.history.map((h) => h.item), timestamps: state.history.map((_, i) => now - 3600 * (n - 1 - i)) };
  if (state.card.reads_feedback) body.feedback = state.history.map((h) => h.feedback);
  if (Object.keys(state.card.domains || {}).length) body.domain = $("#domain").value;
  if (state.profile.size) body.user_attributes = [...state.profile.values()];
  return body;
}

// ---- recommendations ----------------------------------------------------------------------------
let refreshes = 0;  // answers to superseded requests are dropped: the list always shows the latest
async function refresh() {
  const mine = ++refreshes;
  showError(null);
  if (!state.history.length || !state.card || state.card.kind === "ranking") {
    $("#recs").replaceChildren();
    return;
  }
  try {
    const k = Math.min(Number($("#k").value) || 10, state.card.num_items);
    const data = await api("POST", "/v1/recommend", { ...historyBody(), k });
    if (mine !== refreshes) return;
    state.recs = data.items;
    const top = data.items.length ? Math.abs(data.items[0].score) || 1 : 1;
    $("#recs").replaceChildren(...data.items.map((item) => {
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = item.score.toFixed(3);
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = `${Math.max(4, 40 * Math.abs(item.score) / top)}px`;
      return itemRow(item, [bar, score]);
    }));
  } catch (err) { if (mine === refreshes) showError(err); }
}

// ---- ranking ------------------------------------------------------------------------------------
async function rank() {
  showError(null);
  const candidates = $("#candidates").value.split(/[\s,]+/).filter(Boolean);
  try {
    const data = await api("POST", "/v1/rank", { ...historyBody(), candidates });
    const first = data.tasks[0];
    const rows = [...data.candidates].sort((a, b) => b.scores[first] - a.scores[first]);
    const head = document.createElement("tr");
    head.innerHTML = "<th>item</th>" + data.tasks.map((t) => `<th>${t}</th>`).join("");
    $("#ranked thead").replaceChildren(head);
    $("#ranked tbody").replaceChildren(...rows.map((c) => {
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      name.textContent = c.title ? `${c.title} (${c.item})` : c.item;
      tr.append(name, ...data.tasks.map((t) => { const td = document.createElement("td"); td.textContent = c.scores[t].toFixed(3); return td; }));
      return tr;
    }));
  } catch (err) { showError(err); }
}

// ---- wiring -------------------------------------------------------------------------------------
function wire() {
  $("#token").value = token();
  $("#token").onchange = () => { localStorage.setItem("genrec-token", $("#token").value); start(); };
  $("#token-box").onsubmit = (e) => e.preventDefault();
  $("#search").oninput = () => { clearTimeout(searchTimer); searchTimer = setTimeout(() => search().catch(showError), 200); };
  for (const list of ["#results", "#recs"]) {
    $(list).onclick = (e) => { const li = e.target.closest("li"); if (li) addToHistory(li.dataset.item); };
  }
  $("#clear").onclick = () => { state.history = []; renderHistory(); refresh(); };
  $("#k").onchange = refresh;
  $("#domain").onchange = refresh;
  $("#rank").onclick = rank;
  $("#use-recs").onclick = () => { $("#candidates").value = state.recs.map((r) => r.item).join(", "); };
}

async function start() {
  try {
    await loadCard();
    await search();
    showError(null);
  } catch (err) { showError(err); }
}

wire();
start();
