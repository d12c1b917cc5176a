// The asyncdl daemon's page: aria2's JSON-RPC over fetch, with the secret the user typed.
"use strict";
(function () {
  const $ = (sel) => document.querySelector(sel);
  let secret = sessionStorage.getItem("asyncdl-secret") || "";
  let nextId = 1;
  let timer = null;

  async function rpc(method, ...params) {
    const body = { jsonrpc: "2.0", id: String(nextId++), method, params: ["token:" + secret, ...params] };
    const response = await fetch("/jsonrpc", { method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" } });
    const answer = await response.json();
    if (answer.error) throw new Error(answer.error.message);
    return answer.result;
  }

  function size(n) {
    n = Number(n);
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function nameOf(d) {
    const path = d.files && d.files[0] && d.files[0].path;
    if (path) return path.split("/").pop();
    const uri = d.files && d.files[0] && d.files[0].uris[0];
    return uri ? decodeURIComponent(uri.uri.split("/").pop() || uri.uri) : d.gid;
  }

  function row(d) {
    const total = Number(d.totalLength), done = Number(d.completedLength);
    const pct = d.status === "complete" ? 100 : total > 0 ? Math.floor((done / total) * 100) : 0;
    const tr = document.createElement("tr");
    tr.dataset.gid = d.gid;
    tr.dataset.status = d.status;
    const cells = [
      ["name", nameOf(d)],
      ["progress", null],
      ["size", total > 0 ? size(done) + " / " + size(total) : size(done)],
      ["speed", d.status === "active" ? size(d.downloadSpeed) + "/s" : ""],
      ["status", d.status + (d.errorMessage ? ": " + d.errorMessage : "")],
      ["actions", null],
    ];
    for (const [cls, text] of cells) {
      const td = document.createElement("td");
      td.className = cls;
      if (text !== null) td.textContent = text;
      tr.appendChild(td);
    }
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuenow", String(pct));
    const fill = document.createElement("span");
    fill.style.width = pct + "%";
    bar.appendChild(fill);
    const label = document.createElement("span");
    label.className = "pct";
    label.textContent = pct + "%";
    tr.children[1].append(bar, label);
    const actions = tr.children[5];
    const button = (cls, text, method) => {
      const b = document.createElement("button");
      b.className = cls;
      b.type = "button";
      b.textContent = text;
      b.addEventListener("click", () => rpc(method, d.gid).catch(() => {}).then(refresh));
      actions.appendChild(b);
    };
    if (d.status === "active" || d.status === "waiting") button("pause", "Pause", "aria2.pause");
    if (d.status === "paused") button("resume", "Resume", "aria2.unpause");
    if (d.status === "active" || d.status === "waiting" || d.status === "paused") {
      button("remove", "Remove", "aria2.remove");
    } else {
      button("remove", "Remove", "aria2.removeDownloadResult");
    }
    return tr;
  }

  async function refresh() {
    let lists;
    try {
      const keys = ["gid", "status", "totalLength", "completedLength", "downloadSpeed", "files", "errorMessage"];
      const answers = await rpc("system.multicall", [
        { methodName: "aria2.tellActive", params: ["token:" + secret, keys] },
        { methodName: "aria2.tellWaiting", params: ["token:" + secret, 0, 1000, keys] },
        { methodName: "aria2.tellStopped", params: ["token:" + secret, -1, 1000, keys] },
        { methodName: "aria2.getGlobalStat", params: ["token:" + secret] },
      ]);
      for (const a of answers) if (!Array.isArray(a)) throw new Error(a.message);
      lists = answers.map((a) => a[0]);
    } catch (error) {
      $("#stat").textContent = "not connected: " + error.message;
      return false;
    }
    const [active, waiting, stopped, stat] = lists;
    const body = $("#queue tbody");
    body.replaceChildren(...[...active, ...waiting, ...stopped].map(row));
    $("#empty").hidden = body.children.length > 0;
    $("#stat").textContent = `${stat.numActive} active, ${stat.numWaiting} waiting, ${stat.numStopped} stopped, ` +
      `${size(stat.downloadSpeed)}/s`;
    return true;
  }

  async function connect() {
    secret = $("#secret").value;
    $("#login-error").textContent = "";
    if (!(await refresh())) {
      $("#login-error").textContent = "The daemon refused this secret.";
      return;
    }
    sessionStorage.setItem("asyncdl-secret", secret);
    $("#login").hidden = true;
    $("#add-form").hidden = false;
    $("#queue-view").hidden = false;
    if (timer === null) timer = setInterval(refresh, 500);
    listen();
  }

  function listen() {
    // Notifications make the page change at once; the timer keeps it current in between.
    try {
      const socket = new WebSocket(`ws://${location.host}/jsonrpc`);
      socket.addEventListener("message", () => refresh());
      socket.addEventListener("close", () => setTimeout(listen, 2000));
    } catch (error) {
      /* polling goes on */
    }
  }

  async function add() {
    const urls = $("#urls").value.split("\n").map((u) => u.trim()).filter(Boolean);
    $("#add-error").textContent = "";
    for (const url of urls) {
      try {
        await rpc("aria2.addUri", [url]);
      } catch (error) {
        $("#add-error").textContent = url + ": " + error.message;
        return;
      }
    }
    $("#urls").value = "";
    refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#connect").addEventListener("click", connect);
    $("#secret").addEventListener("keydown", (e) => { if (e.key === "Enter") connect(); });
    $("#add").addEventListener("click", add);
    $("#pause-all").addEventListener("click", () => rpc("aria2.pauseAll").then(refresh));
    $("#resume-all").addEventListener("click", () => rpc("aria2.unpauseAll").then(refresh));
    $("#purge").addEventListener("click", () => rpc("aria2.purgeDownloadResult").then(refresh));
    if (secret) { $("#secret").value = secret; connect(); }
  });
})();
