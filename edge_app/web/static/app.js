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

  // A review being written (its note, read/referred, each finding's tick) is kept in this tab (sessionStorage)
  // as it is entered and until the server says it is saved (the page after a save marks its form data-saved):
  // a refused save (the session ended, a stale token) or a logout loses none of it; the next page puts it back.
  for (const form of document.querySelectorAll("form[data-draft]")) {
    const key = `draft:${form.action}`;
    const fields = () => [...form.elements].filter((e) => e.name && !["hidden", "submit"].includes(e.type));
    const ticked = (e) => e.type === "checkbox" || e.type === "radio";
    if ("saved" in form.dataset) sessionStorage.removeItem(key);
    const kept = JSON.parse(sessionStorage.getItem(key) || "null");
    if (kept) {
      for (const e of fields()) {
        if (ticked(e)) e.checked = (kept[e.name] || []).includes(e.value);
        else if (e.name in kept) e.value = kept[e.name][0];
      }
      for (const box of form.querySelectorAll("details")) box.open ||= Boolean(box.querySelector(":checked"));
      const holder = form.closest("details");
      if (holder) holder.open = true;
      form.classList.add("restored");
    }
    const keep = () => {
      const draft = {};
      for (const e of fields()) if (!ticked(e) || e.checked) (draft[e.name] ||= []).push(e.value);
      sessionStorage.setItem(key, JSON.stringify(draft));
    };
    form.addEventListener("input", keep);
    form.addEventListener("change", keep);
  }

  // The review: "Agree with all" is the one tap; once a finding is ticked "Disagree" it goes, and "Save" saves.
  for (const review of document.querySelectorAll("form.review")) {
    const all = review.querySelector(".agree-all");
    const save = review.querySelector(".save");
    const ticks = [...review.querySelectorAll("input[name=disagree]")];
    const show = () => {
      const any = ticks.some((t) => t.checked);
      if (all) all.hidden = any;
      save.classList.toggle("secondary", !any && Boolean(all));
    };
    for (const t of ticks) t.addEventListener("change", show);
    show();
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
