// The lmforge chat page: plain JS, no build step. Talks to /v1/chat/completions with
// "stream": true and renders the server-sent events as they arrive.
"use strict";

const $ = (id) => document.getElementById(id);
const conversation = []; // {role, content} messages sent with every request
let controller = null; // AbortController of the reply being streamed

// Sampling settings are remembered by the browser; the API key only by this tab (sessionStorage).
const SETTINGS = ["system", "temperature", "top_p", "top_k", "max_tokens", "seed", "stop_strings", "api_key"];
for (const id of SETTINGS) {
  const store = id === "api_key" ? sessionStorage : localStorage;
  const saved = store.getItem("lmforge." + id);
  if (saved !== null) $(id).value = saved;
  $(id).addEventListener("input", () => {
    store.setItem("lmforge." + id, $(id).value);
    showRangeValues();
  });
}
function showRangeValues() {
  $("temperature-value").textContent = $("temperature").value;
  $("top_p-value").textContent = $("top_p").value;
}
showRangeValues();

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// The server answers 401 when it needs a key and none (or a wrong one) was sent: ask for it,
// then run `retry` with the new key.
function askForKey(reason, retry) {
  $("key-reason").textContent = reason;
  $("key-input").value = $("api_key").value;
  $("key-form").onsubmit = () => {
    $("api_key").value = $("key-input").value.trim();
    sessionStorage.setItem("lmforge.api_key", $("api_key").value);
    if (retry) setTimeout(retry, 0);
  };
  if (!$("key-dialog").open) $("key-dialog").showModal();
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text; // textContent: model output is never parsed as HTML
  div.append(label, content);
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function requestBody() {
  const body = {
    messages: [],
    stream: true,
    temperature: Number($("temperature").value),
    top_p: Number($("top_p").value),
    top_k: Number($("top_k").value) || 0,
    max_tokens: Number($("max_tokens").value) || 200,
  };
  if ($("model-name").dataset.id) body.model = $("model-name").dataset.id;
  const system = $("system").value.trim();
  if (system) body.messages.push({ role: "system", content: system });
  body.messages.push(...conversation);
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  const stops = $("stop_strings").value.split("\n").filter((s) => s.length > 0);
  if (stops.length) body.stop = stops.slice(0, 4);
  return body;
}

async function send(text) {
  conversation.push({ role: "user", content: text });
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.classList.add("pending");
  const content = bubble.querySelector(".content");
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  const started = performance.now();
  let chunks = 0;
  let reply = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (!response.ok) {
      const err = await response.json().catch(() => ({}));
      if (response.status === 401) askForKey("The server refused the API key; enter it and send again.");
      throw new Error((err.error && err.error.message) || response.status + " " + response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const obj = JSON.parse(data);
          if (obj.error) throw new Error(obj.error.message);
          const delta = obj.choices && obj.choices[0] && obj.choices[0].delta;
          if (delta && delta.content) {
            reply += delta.content;
            content.textContent = reply;
            chunks += 1;
            $("messages").scrollTop = $("messages").scrollHeight;
          }
        }
      }
    }
    conversation.push({ role: "assistant", content: reply });
    const secs = (performance.now() - started) / 1000;
    $("stats").textContent = `${chunks} chunks in ${secs.toFixed(2)} s`;
  } catch (e) {
    if (e.name === "AbortError") {
      conversation.push({ role: "assistant", content: reply });
    } else {
      conversation.pop(); // the failed turn is not part of the conversation
      bubble.remove();
      addMessage("error", String(e.message || e));
    }
  } finally {
    bubble.classList.remove("pending");
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => {
  if (controller) controller.abort();
  conversation.length = 0;
  $("messages").replaceChildren();
  $("stats").textContent = "";
});

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    if (r.status === 401) {
      $("model-name").textContent = "waiting for the API key";
      askForKey($("api_key").value ? "That API key was refused; try again." : "This server needs an API key.",
        loadModel);
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    const m = (await r.json()).data[0];
    $("model-name").textContent = `${m.id} · context ${m.max_model_len} tokens`;
    $("model-name").dataset.id = m.id;
  } catch (e) {
    $("model-name").textContent = "model list unavailable (" + e.message + ")";
  }
}
loadModel();
