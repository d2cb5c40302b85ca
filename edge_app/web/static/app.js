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

  const idle = Number(document.body.dataset.idleS || 0);
  const logout = document.getElementById("logout");
  if (idle > 0 && logout) {
    let last = Date.now();
    for (const kind of ["pointerdown", "keydown", "wheel"]) {
      document.addEventListener(kind, () => { last = Date.now(); }, {passive: true});
    }
    setInterval(() => { if (Date.now() - last > idle * 1000) logout.form.submit(); }, 5000);
  }
});
