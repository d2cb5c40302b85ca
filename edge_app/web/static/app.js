// Every page: the language menu submits itself, the worklist refreshes itself, an idle tablet logs out.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll("select.autosubmit")) {
    select.addEventListener("change", () => select.form.submit());
  }

  // The worklist asks what changed every 15 s and announces it ("3 new studies"); the rows are replaced only when
  // the announcement is tapped, so the row under a finger is never another patient's.
  const holder = document.getElementById("worklist");
  const news = document.getElementById("news");
  if (holder && news) {
    let held = null;
    const every = 1000 * Number(holder.dataset.refreshS || 15);
    const refresh = async () => {
      const list = document.getElementById("worklist-list");
      const url = list.dataset.refreshUrl + "&since=" + list.dataset.newest;
      try {
        // X-Background: a refresh is not someone at the tablet, it does not hold the session open.
        const r = await fetch(url, {headers: {"X-Background": "1"}, credentials: "same-origin"});
        if (r.redirected || r.status === 401) { location.reload(); return; }
        if (!r.ok) return;
        const box = document.createElement("template");
        box.innerHTML = await r.text();
        const fresh = box.content.getElementById("worklist-list");
        const changed = fresh.querySelector("tbody").innerHTML !== list.querySelector("tbody").innerHTML;
        if (fresh.dataset.news || changed) {
          held = fresh;
          news.textContent = fresh.dataset.news || news.dataset.changed;
          news.classList.add("shown");
        }
        holder.dataset.refreshed = String(Date.now());
      } catch (e) { /* the box is restarting or the Wi-Fi dropped: try again at the next tick */ }
    };
    news.addEventListener("click", () => {
      if (held) document.getElementById("worklist-list").replaceWith(held);
      held = null;
      news.classList.remove("shown");
    });
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
