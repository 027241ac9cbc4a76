// hs100local dashboard: switches without reloading, chart zoom, a periodic refresh.
// Without this script the page still works: every switch is a form that posts.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

  function showError(text) {
    let box = document.getElementById("error");
    if (!box) {
      box = document.createElement("div");
      box.id = "error";
      box.setAttribute("role", "alert");
      document.body.appendChild(box);
    }
    box.textContent = text;
    box.classList.add("shown");
    setTimeout(() => box.classList.remove("shown"), 6000);
  }

  function paint(button, on) {
    button.classList.remove("on", "off", "unknown");
    button.classList.add(on === null ? "unknown" : on ? "on" : "off");
    button.setAttribute("aria-pressed", on ? "true" : "false");
    const label = button.textContent.replace(/(On|Off|\?)$/, "");
    button.textContent = label + (on === null ? "?" : on ? "On" : "Off");
    button.title = "switch " + label + (on ? "off" : "on");
    button.form.querySelector('input[name="on"]').value = on ? "0" : "1";
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin", body,
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded" },
    });
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  function applyState(form, data) {
    const outlet = form.dataset.outlet;
    let on = data.on;
    if (outlet) {
      const found = (data.outlets || []).find((o) => String(o.index) === outlet);
      on = found ? found.on : null;
    }
    paint(form.querySelector("button"), on);
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.classList.contains("switch")) return;
    event.preventDefault();
    const button = form.querySelector("button");
    button.classList.add("busy");
    button.disabled = true;
    try {
      const data = await post(form.action, new URLSearchParams(new FormData(form)).toString());
      const row = form.closest("tr");
      row.querySelectorAll("form.switch").forEach((f) => applyState(f, data));
      row.dataset.state = data.on === null ? "strip" : data.on ? "on" : "off";
    } catch (error) {
      showError(error.message);
    } finally {
      button.classList.remove("busy");
      button.disabled = false;
    }
  });

  document.addEventListener("click", async (event) => {
    const link = event.target.closest("nav.ranges a");
    if (!link) return;
    event.preventDefault();
    let response;
    try {
      response = await fetch("/chart.svg?range=" + encodeURIComponent(link.dataset.range),
                             { credentials: "same-origin", redirect: "manual" });
    } catch (error) {
      showError("chart: " + error.message);
      return;
    }
    const kind = response.headers.get("Content-Type") || "";
    if (!response.ok || !kind.startsWith("image/svg+xml")) {
      // a redirect (to /login: the session ended) or an error: load the page itself
      window.location.href = link.href;
      return;
    }
    document.getElementById("chart").innerHTML = await response.text();
    document.querySelectorAll("nav.ranges a").forEach((a) => {
      a.classList.toggle("current", a === link);
      if (a === link) a.setAttribute("aria-current", "true"); else a.removeAttribute("aria-current");
    });
    history.replaceState(null, "", "/?range=" + encodeURIComponent(link.dataset.range));
  });

  async function refresh() {
    if (document.hidden) return;
    const response = await fetch("/api/plugs", { credentials: "same-origin" });
    if (response.status === 401) {
      window.location.href = "/login";  // the session ended: say so instead of going stale
      return;
    }
    if (!response.ok) {
      showError("refresh: " + response.status + " " + response.statusText);
      return;
    }
    const data = await response.json();
    for (const plug of data.plugs) {
      const row = document.querySelector(`tr[data-mac="${CSS.escape(plug.mac)}"]`);
      if (!row || !plug.checked) continue;
      row.classList.toggle("unreachable", !plug.reachable);
      if (!plug.reachable) continue;
      row.querySelectorAll("form.switch").forEach((f) => {
        if (!f.querySelector("button").disabled) applyState(f, plug);
      });
    }
  }
  setInterval(() => refresh().catch((error) => showError("refresh: " + error.message)), 15000);
})();
