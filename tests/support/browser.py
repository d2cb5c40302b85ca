"""Chromium for the browser tests: Debian's, launched so that it reaches nothing outside the box."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# No background networking, component updates or sync: nothing outside the box is tried.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "a long enough password"
NEEDS_CHROMIUM = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")

# Every visible control of the page smaller than 44x44 CSS px: a label holding a radio or checkbox counts as the
# target (it is what a finger taps), the input inside it does not.
SMALL_TARGETS = """() => {
  const els = [...document.querySelectorAll(
    "button, a, select, input, textarea, summary, label")];
  return els.filter(e => {
    if (e.matches("input[type=radio], input[type=checkbox]") && e.closest("label")) return false;
    if (e.tagName === "LABEL" && !e.querySelector("input[type=radio], input[type=checkbox]")) return false;
    const r = e.getBoundingClientRect();
    if (!r.width || getComputedStyle(e).visibility === "hidden") return false;
    return r.width < 44 || r.height < 44;
  }).map(e => {
    const r = e.getBoundingClientRect();
    return `${e.tagName}.${e.className} ${e.textContent.trim().slice(0, 20)} ${r.width}x${r.height}`;
  });
}"""
