// Sign-in, navigation (hash routes) and error display for the console.
"use strict";

let renderSeq = 0;  // a slow earlier render must not overwrite the view the user moved to

const app = {
  flash(message) {
    const box = document.getElementById("error");
    box.hidden = false;
    box.className = "card";
    box.textContent = message;
  },
  showError(e) {
    const box = document.getElementById("error");
    box.hidden = false;
    box.className = "error";
    box.textContent = e.message || String(e);
    if (e.status === 401) { api.signOut(); app.render(); }
  },
  async guard(promise) {
    try { await promise; } catch (e) { app.showError(e); }
  },

  async render() {
    const seq = ++renderSeq;
    clearTimeout(jobTimer);
    const signedIn = !!api.key();
    document.getElementById("signin").hidden = signedIn;
    document.getElementById("nav").hidden = !signedIn;
    document.getElementById("signout").hidden = !signedIn;
    const root = document.getElementById("view");
    root.replaceChildren();
    if (!signedIn) return;
    const [page, arg] = (location.hash.slice(1) || "jobs").split("/");
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === page);
    const view = arg ? { jobs: views.job, adapters: views.adapter }[page] : views[page];
    if (!view) { location.hash = "#jobs"; return; }
    const fresh = document.createElement("div");
    try {
      await view(fresh, arg && decodeURIComponent(arg));
      if (seq !== renderSeq) return;
      root.replaceChildren(fresh);
      root.dataset.page = page + (arg ? "/" + arg : "");
    } catch (e) {
      if (seq === renderSeq) app.showError(e);
    }
  },
};

document.getElementById("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = document.getElementById("api-key").value.trim();
  api.signIn(key);
  try {
    await api.get("/v1/models");
  } catch (e) {
    // Keys are checked before anything else: only 401/403 mean a bad key (a 503 from a
    // replica that is still starting must not lock the user out of the console).
    if (e.status === 401 || e.status === 403) { api.signOut(); app.showError(e); return; }
  }
  document.getElementById("error").hidden = true;
  document.getElementById("who").textContent = key.slice(0, 6) + "…";
  app.render();
});
document.getElementById("signout").addEventListener("click", () => { api.signOut(); app.render(); });
window.addEventListener("hashchange", () => { document.getElementById("error").hidden = true; app.render(); });
app.render();
