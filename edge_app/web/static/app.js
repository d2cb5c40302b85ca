// Every page: the language menu submits itself, the worklist refreshes itself, an idle tablet logs out.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll("select.autosubmit")) {
    select.addEventListener("change", () => select.form.submit());
  }

  const table = document.getElementById("worklist");
  if (table) {
    const body = document.getElementById("worklist-rows");
    const every = 1000 * Number(table.dataset.refreshS || 15);
    const refresh = async () => {
      try {
        // X-Background: a refresh is not someone at the tablet, it does not hold the session open.
        const r = await fetch(table.dataset.refreshUrl, {headers: {"X-Background": "1"}, credentials: "same-origin"});
        if (r.redirected || r.status === 401) { location.reload(); return; }
        if (r.ok) { body.innerHTML = await r.text(); table.dataset.refreshed = String(Date.now()); }
      } catch (e) { /* the box is restarting or the Wi-Fi dropped: try again at the next tick */ }
    };
    setInterval(refresh, every);
  }

  // Notes being typed are kept in this tab (sessionStorage) until their form is sent: a logout loses none.
  const drafts = [...document.querySelectorAll("form[method=post] textarea[name]")];
  const key = (area) => `draft:${area.form.action}:${area.name}`;
  for (const area of drafts) {
    const kept = sessionStorage.getItem(key(area));
    if (kept && !area.value) { area.value = kept; area.classList.add("restored"); }
    area.addEventListener("input", () => sessionStorage.setItem(key(area), area.value));
    area.form.addEventListener("submit", () => sessionStorage.removeItem(key(area)));
  }

  // Idle logout: a warning a minute before (half the time for a shorter one), then the logout saying why and
  // leading back to this page. Typing makes no request: activity tells the server now and then that someone is here.
  const idle = Number(document.body.dataset.idleS || 0);
  const form = document.getElementById("logout-form");
  const banner = document.getElementById("idle-warning");
  if (idle > 0 && form && banner) {
    const warnAt = 1000 * (idle - Math.min(60, idle / 2));
    let last = Date.now();
    let told = Date.now();
    const active = () => {
      last = Date.now();
      banner.hidden = true;
      if (last - told > 250 * idle) {
        told = last;
        fetch(document.body.dataset.aliveUrl, {credentials: "same-origin"}).catch(() => {});
      }
    };
    for (const kind of ["pointerdown", "keydown", "wheel", "input"]) {
      document.addEventListener(kind, active, {passive: true});
    }
    document.getElementById("stay-signed-in").addEventListener("click", () => { told = 0; active(); });
    const timer = setInterval(() => {
      const quiet = Date.now() - last;
      if (quiet > idle * 1000) {
        clearInterval(timer);
        for (const [name, value] of [["idle", "1"], ["next", location.pathname + location.search]]) {
          const field = document.createElement("input");
          Object.assign(field, {type: "hidden", name, value});
          form.append(field);
        }
        form.submit();
      } else if (quiet > warnAt) {
        banner.hidden = false;
      }
    }, 1000);
  }
});
