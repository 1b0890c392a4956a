// wapipe sandbox chat: what a simulated user sees and does. Plain JavaScript, no build step.
// Everything it sends goes through the server's /sandbox/chat/api (a signed webhook to /webhook);
// everything it shows arrives pushed, as server-sent events of the user's stream.
"use strict";

const API = "/sandbox/chat/api/";
const $ = (selector) => document.querySelector(selector);
const state = { user: null, source: null, lastId: null, byId: new Map(), unread: [], readTimer: null, typingTimer: null };

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// WhatsApp's formatting: ```mono```, *bold*, _italic_, ~strike~, and links. Escaped first.
function formatted(text) {
  const monos = [];
  let html = escapeHtml(text).replace(/```([\s\S]+?)```/g, (_, code) => `\u0000${monos.push(code) - 1}\u0000`);
  html = html
    .replace(/(^|[\s(])\*(?!\s)([^*\n]+?)\*(?=$|[\s.,!?;:)])/g, "$1<strong>$2</strong>")
    .replace(/(^|[\s(])_(?!\s)([^_\n]+?)_(?=$|[\s.,!?;:)])/g, "$1<em>$2</em>")
    .replace(/(^|[\s(])~(?!\s)([^~\n]+?)~(?=$|[\s.,!?;:)])/g, "$1<del>$2</del>")
    .replace(/\bhttps?:\/\/[^\s<]+[^\s<.,;:!?)]/g, (url) => `<a href="${url}" target="_blank" rel="noopener noreferrer">${url}</a>`);
  html = html.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${monos[Number(i)]}</code>`);
  const span = el("span", { class: "text" });
  span.innerHTML = html;
  return span;
}

function showError(text) {
  const box = $("#error");
  box.textContent = text;
  box.hidden = !text;
}

// POST to the page's API; a failure shows in the banner, a success clears it (not for `quiet`
// calls the page makes by itself, such as read reports).
async function call(path, body, quiet = false) {
  const options = body instanceof FormData
    ? { method: "POST", body }
    : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  let answer;
  try {
    answer = await fetch(API + path, options);
  } catch (error) {
    if (!quiet) showError("The sandbox web is not answering: is `wapipe run` still running?");
    throw error;
  }
  const found = await answer.json().catch(() => ({}));
  if (!answer.ok) {
    if (answer.status === 413) found.error = "That file is larger than this sandbox takes (WAPIPE_MAX_BODY_BYTES, 3.5 MB unless set).";
    if (!quiet) showError(found.error || `${path}: ${answer.status}`);
    throw new Error(found.error || String(answer.status));
  }
  if (!quiet) showError("");
  return found;
}

// Users

async function loadUsers() {
  const answer = await fetch(API + "users");
  const users = await answer.json();
  const list = $("#users");
  list.replaceChildren(...users.map((user) => el("li", {
    class: "user" + (user.number === state.user ? " selected" : ""), "data-number": user.number,
    onclick: () => select(user.number, user.name),
  }, el("span", { class: "face" }, (user.name || "?").slice(0, 1).toUpperCase()),
     el("span", {}, user.name, el("span", { class: "number" }, "+" + user.number)))));
  return users;
}

async function addUser(event) {
  event.preventDefault();
  const name = $("#new-user-name").value.trim();
  const before = new Set((await loadUsers()).map((user) => user.number));
  const users = await (await fetch(API + "users", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name }),
  })).json();
  $("#new-user-name").value = "";
  const added = users.find((user) => !before.has(user.number)) || users[users.length - 1];
  await loadUsers();
  if (added) select(added.number, added.name);
}

function select(number, name) {
  if (state.source) state.source.close();
  Object.assign(state, { user: number, lastId: null, byId: new Map(), unread: [] });
  history.replaceState(null, "", `?user=${number}`);
  document.title = `${name || number} — wapipe sandbox chat`;
  $("#messages").replaceChildren();
  $("#presence").textContent = `chatting as ${name || "+" + number}`;
  for (const input of ["#text", "#send"]) $(input).disabled = false;
  for (const item of document.querySelectorAll(".user")) item.classList.toggle("selected", item.dataset.number === number);
  listen();
  $("#text").focus();
}

// Live updates: one EventSource per open user; the browser resumes from the last event id.

function listen() {
  const after = state.lastId ? `&after=${encodeURIComponent(state.lastId)}` : "";
  const source = new EventSource(`${API}events?user=${state.user}${after}`);
  state.source = source;
  source.onopen = () => { $("#connection").dataset.state = "live"; showError(""); };
  source.onmessage = (message) => {
    state.lastId = message.lastEventId || state.lastId;
    show(JSON.parse(message.data));
  };
  source.onerror = () => {
    $("#connection").dataset.state = "lost";
    if (source.readyState === EventSource.CLOSED && state.source === source) setTimeout(() => state.source === source && listen(), 1000);
  };
}

function show(event) {
  if (event.kind === "in") {
    // A reaction is no bubble of its own on WhatsApp: it shows under the message it reacts to.
    if (event.message.type === "reaction") react(event.message.reaction, true);
    else addMessage(event, "in");
  }
  else if (event.kind === "out") {
    hideTyping();
    if (event.message.type === "reaction") react(event.message.reaction);
    else addMessage(event, "out");
    markRead(event.id);
  } else if (event.kind === "status") setStatus(event.id, event.status, event.reason);
  else if (event.kind === "typing") showTyping();
}

function time(at) {
  return new Date(at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function addMessage(event, direction) {
  if (state.byId.has(event.id)) return;
  const bubble = el("div", { class: `msg ${direction}`, "data-id": event.id, "data-type": event.message.type });
  bubble.append(...(direction === "in" ? userContent(event.message) : botContent(event.id, event.message)));
  const meta = el("span", { class: "meta" }, time(event.at));
  if (direction === "in") meta.append(el("span", { class: "ticks", "data-status": "sent", title: "sent" }, "✓"));
  else bubble.append(el("button", { class: "react", title: "React", onclick: () => pickEmoji(bubble, event.id) }, "☺"));
  bubble.append(meta);
  state.byId.set(event.id, bubble);
  const box = $("#messages");
  const typing = box.querySelector(".typing");
  box.insertBefore(bubble, typing);
  box.scrollTop = box.scrollHeight;
}

function setStatus(id, status, reason) {
  const order = ["sent", "delivered", "read"];
  const apply = (bubble) => {
    const ticks = bubble.querySelector(".ticks");
    if (!ticks) return;
    if (status === "failed") {
      Object.assign(ticks.dataset, { status }); ticks.textContent = "!"; ticks.title = reason || "not delivered";
      return;
    }
    if (order.indexOf(status) <= order.indexOf(ticks.dataset.status)) return;
    ticks.dataset.status = status; ticks.title = status; ticks.textContent = status === "sent" ? "✓" : "✓✓";
  };
  const target = state.byId.get(id);
  if (!target) return;
  if (status !== "read") return apply(target);
  // Read marks every earlier message of the user read too, as on WhatsApp.
  for (const bubble of document.querySelectorAll("#messages .msg.in")) {
    apply(bubble);
    if (bubble === target) break;
  }
}

function markRead(id) {
  state.unread.push(id);
  clearTimeout(state.readTimer);
  state.readTimer = setTimeout(() => {
    if (document.visibilityState !== "visible" || !state.unread.length) return;
    const ids = state.unread.splice(0, 100);
    call("read", { user: state.user, ids }, true).catch(() => state.unread.unshift(...ids));
  }, 300);
}
document.addEventListener("visibilitychange", () => state.unread.length && markRead(state.unread.pop()));

function showTyping() {
  hideTyping();
  $("#presence").textContent = "typing…";
  $("#messages").append(el("div", { class: "typing" }, "typing…"));
  state.typingTimer = setTimeout(hideTyping, 25000);
}

function hideTyping() {
  clearTimeout(state.typingTimer);
  $("#messages").querySelector(".typing")?.remove();
  if (state.user) $("#presence").textContent = "online";
}

function react(reaction, mine = false) {
  const bubble = state.byId.get(reaction.message_id);
  if (!bubble) return;
  let badge = bubble.querySelector(".reactions");
  if (!reaction.emoji) { badge?.remove(); bubble.classList.remove("reacted"); return; }
  if (!badge) { badge = el("span", { class: mine ? "reactions mine" : "reactions" }); bubble.append(badge); }
  badge.textContent = reaction.emoji;
  bubble.classList.add("reacted");
}

function pickEmoji(bubble, id) {
  bubble.querySelector(".emoji-picker")?.remove();
  const picker = el("span", { class: "emoji-picker" }, ["👍", "❤️", "😂", "😮", "🙏"].map((emoji) => el("button", {
    type: "button", onclick: async () => {
      picker.remove();
      await call("send", { user: state.user, type: "reaction", message_id: id, emoji });
    },
  }, emoji)));
  bubble.append(picker);
}

// What the user sent

function mediaUrl(part) {
  return part.id ? `${API}media/${encodeURIComponent(part.id)}` : part.link;
}

function userContent(message) {
  const part = message[message.type] || {};
  switch (message.type) {
    case "text": return [formatted(part.body || "")];
    case "image": return [el("img", { class: "media", src: mediaUrl(part), alt: "image" }), part.caption ? formatted(part.caption) : null];
    case "document": return [el("a", { class: "file", href: mediaUrl(part), download: part.filename || "" }, "📄 ", part.filename || "document"), part.caption ? formatted(part.caption) : null];
    case "location": return [locationCard(part)];
    case "reaction": return [`reacted ${part.emoji || "(removed)"}`];
    case "interactive": {
      const reply = part.button_reply || part.list_reply || {};
      return [el("span", { class: "text" }, reply.title || reply.id || "")];
    }
    default: return [`[${message.type}]`];
  }
}

function locationCard(part) {
  const place = [part.name, part.address].filter(Boolean).join(" — ");
  const href = `https://www.openstreetmap.org/?mlat=${part.latitude}&mlon=${part.longitude}#map=16/${part.latitude}/${part.longitude}`;
  return el("span", { class: "card" }, "📍", el("span", {}, place ? el("strong", {}, place) : null, place ? el("br") : null,
    el("a", { href, target: "_blank", rel: "noopener noreferrer" }, `${part.latitude}, ${part.longitude}`)));
}

// What the bot sent

function botContent(id, message) {
  const part = message[message.type] || {};
  switch (message.type) {
    case "text": return [formatted(part.body || "")];
    case "image": return [el("img", { class: "media", src: mediaUrl(part), alt: "image" }), part.caption ? formatted(part.caption) : null];
    case "sticker": return [el("img", { class: "media sticker", src: mediaUrl(part), alt: "sticker" })];
    case "video": return [el("video", { src: mediaUrl(part), controls: "" }), part.caption ? formatted(part.caption) : null];
    case "audio": return [el("audio", { src: mediaUrl(part), controls: "" })];
    case "document": return [el("a", { class: "file", href: mediaUrl(part), download: part.filename || "", target: "_blank" }, "📄 ", part.filename || "document"), part.caption ? formatted(part.caption) : null];
    case "location": return [locationCard(part)];
    case "contacts": return (message.contacts || []).map((card) => el("span", { class: "card contact" }, "👤",
      el("span", {}, el("strong", {}, card.name?.formatted_name || ""), ...(card.phones || []).map((p) => [el("br"), p.phone]))));
    case "template": return templateContent(part);
    case "interactive": return interactiveContent(id, part);
    default: return [`[${message.type}]`];
  }
}

function templateContent(part) {
  const lines = [el("div", { class: "template" }, `📋 template ${part.name} (${part.language?.code || "?"})`)];
  for (const component of part.components || []) {
    for (const parameter of component.parameters || []) {
      const value = parameter.text ?? parameter.payload ?? parameter.currency?.fallback_value ?? parameter.date_time?.fallback_value;
      if (value !== undefined) lines.push(el("div", {}, `${component.type}: ${value}`));
      const media = parameter.image || parameter.video || parameter.document;
      if (media) lines.push(el("img", { class: "media", src: mediaUrl(media), alt: component.type }));
    }
  }
  return lines;
}

function interactiveContent(id, part) {
  const nodes = [];
  const header = part.header;
  if (header?.type === "text") nodes.push(el("div", { class: "header" }, header.text));
  else if (header?.type === "image") nodes.push(el("img", { class: "media", src: mediaUrl(header.image), alt: "header" }));
  else if (header?.type) nodes.push(el("div", { class: "header" }, `[${header.type}]`));
  if (part.body?.text) nodes.push(formatted(part.body.text));
  if (part.footer?.text) nodes.push(el("div", { class: "footer" }, part.footer.text));
  const action = part.action || {};
  if (part.type === "button") {
    nodes.push(el("div", { class: "choices" }, (action.buttons || []).map((button) => el("button", {
      type: "button", class: "reply-button", "data-id": button.reply?.id,
      onclick: () => choose("button", id, button.reply?.id),
    }, button.reply?.title || ""))));
  } else if (part.type === "list") {
    const rows = el("ul", { class: "rows", hidden: "" });
    for (const section of action.sections || []) {
      if (section.title) rows.append(el("li", { class: "section" }, section.title));
      for (const row of section.rows || []) {
        rows.append(el("li", { class: "list-row", "data-id": row.id, onclick: () => choose("list", id, row.id) },
          row.title, row.description ? el("span", { class: "description" }, row.description) : null));
      }
    }
    nodes.push(el("div", { class: "choices" }, el("button", {
      type: "button", class: "list-open", onclick: () => { rows.hidden = !rows.hidden; },
    }, "☰ ", action.button || "Options")), rows);
  } else if (part.type === "cta_url") {
    const parameters = action.parameters || {};
    nodes.push(el("div", { class: "choices" }, el("a", { href: parameters.url, target: "_blank", rel: "noopener noreferrer" }, `↗ ${parameters.display_text || parameters.url}`)));
  } else if (part.type === "location_request_message") {
    nodes.push(el("div", { class: "choices" }, el("button", { type: "button", onclick: sendLocation }, "📍 Send location")));
  } else {
    nodes.push(el("div", { class: "footer" }, `[interactive ${part.type}]`));
  }
  return nodes;
}

async function choose(kind, messageId, choiceId) {
  await call("send", { user: state.user, type: kind, message_id: messageId, id: choiceId });
  const rows = state.byId.get(messageId)?.querySelector(".rows");
  if (rows) rows.hidden = true;
}

// The composer

async function sendText(event) {
  event.preventDefault();
  const input = $("#text");
  const text = input.value;
  if (!text.trim() || !state.user) return;
  input.value = "";
  try {
    await call("send", { user: state.user, type: "text", text });
  } catch {
    input.value = text;
  }
}

async function sendFile() {
  const input = $("#file");
  const file = input.files[0];
  input.value = "";
  if (!file || !state.user) return;
  const form = new FormData();
  form.append("user", state.user);
  form.append("file", file, file.name);
  await call("media", form);
}

async function sendLocation() {
  if (!state.user) return;
  const asked = prompt("Latitude, longitude (and a name, if you like)", "38.7223, -9.1393, Rossio");
  if (!asked) return;
  const [latitude, longitude, ...name] = asked.split(",").map((part) => part.trim());
  await call("send", { user: state.user, type: "location", latitude, longitude, name: name.join(", ") || undefined });
}

async function start() {
  $("#composer").addEventListener("submit", sendText);
  $("#new-user-form").addEventListener("submit", addUser);
  $("#file").addEventListener("change", sendFile);
  $("#location").addEventListener("click", sendLocation);
  let users = await loadUsers();
  if (!users.length) {
    await fetch(API + "users", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: "Ana" }) });
    users = await loadUsers();
  }
  const wanted = new URLSearchParams(location.search).get("user");
  const user = users.find((u) => u.number === wanted) || users[0];
  select(user.number, user.name);
}

start();
