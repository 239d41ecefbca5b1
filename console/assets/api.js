// The console's only way to Zen: the REST API and the events:watch WebSocket, authenticated by
// the session cookie (HttpOnly; the gateway swaps it for a bearer token). State-changing calls
// carry the session's CSRF token and a fresh X-Request-Id (the idempotency key).

let csrfToken = "";

export function setCsrf(token) {
  csrfToken = token || "";
}

export function requestId() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["X-CSRF-Token"] = csrfToken;
    headers["X-Request-Id"] = requestId();
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = r.status === 204 ? "" : await r.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch (_) {
    data = { detail: text };
  }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body === undefined ? {} : body);
export const patch = (path, body) => api("PATCH", path, body);
export const del = (path) => api("DELETE", path);

export function q(params) {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") s.set(k, v);
  const text = s.toString();
  return text ? `?${text}` : "";
}

// A watch of one tenant's change stream that survives reconnects: it resumes after the last
// change it delivered (resume_token), so nothing is missed and nothing is delivered twice.
// onState(state, info) is told "connecting", "live", "reconnecting" (with the delay) and
// "resumed" (with the resume token used).
export function watchTenant(tenantId, onChange, onState) {
  let resume = "";
  let socket = null;
  let stopped = false;
  let failures = 0;
  let timer = null;
  const open = () => {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = resume ? `?resumeToken=${encodeURIComponent(resume)}` : "";
    onState(resume ? "resuming" : "connecting", {});
    socket = new WebSocket(`${scheme}//${location.host}/v1/tenants/${encodeURIComponent(tenantId)}/events:watch${query}`);
    socket.onopen = () => {
      onState(resume ? "resumed" : "live", { resumeToken: resume });
    };
    socket.onmessage = (e) => {
      let m;
      try {
        m = JSON.parse(e.data);
      } catch (_) {
        return;
      }
      failures = 0;
      if (m.error) {
        onState("error", { problem: m.error });
        return;
      }
      if (m.resumeToken) resume = m.resumeToken;
      onChange(m);
    };
    socket.onclose = (e) => {
      socket = null;
      if (stopped) return;
      failures += 1;
      const delay = Math.min(15000, 250 * 2 ** Math.min(failures, 6));
      onState("reconnecting", { delay, code: e.code });
      timer = setTimeout(open, delay);
    };
  };
  open();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      if (socket) socket.close(1000);
    },
    // For operators (and the tests): drop the connection as a network failure would.
    drop() {
      if (socket) socket.close(4999, "dropped by the user");
    },
  };
}
