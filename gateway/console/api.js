// The console's only way out: the gateway's public API with the signed-in API key.
"use strict";

const KEY_SLOT = "tunefleet.apiKey";

const api = {
  key() { return sessionStorage.getItem(KEY_SLOT); },
  signIn(key) { sessionStorage.setItem(KEY_SLOT, key); },
  signOut() { sessionStorage.removeItem(KEY_SLOT); },

  // One request; the error envelope becomes an Error whose message reads "message (code)".
  async call(method, path, body) {
    const headers = { Authorization: "Bearer " + api.key() };
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    if (!resp.ok) {
      const e = (data && data.error) || {};
      const err = new Error((e.message || "HTTP " + resp.status) + (e.code ? " (" + e.code + ")" : ""));
      err.status = resp.status;
      err.code = e.code;
      throw err;
    }
    return data;
  },
  get(path) { return api.call("GET", path); },
  post(path, body) { return api.call("POST", path, body === undefined ? {} : body); },
  put(path, body) { return api.call("PUT", path, body); },
  async list(path) { return (await api.get(path)).data || []; },
};
