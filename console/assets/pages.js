// The console's pages. Each reads and writes through the REST API only; what a role may not
// do is not offered (and the server refuses it anyway: the page is never the control).
import { html, useEffect, useMemo, useRef, useState } from "/console/vendor/htm-preact-standalone.module.js";
import { del, get, patch, post, q, watchTenant } from "./api.js";

const RANKS = { ROLE_VIEWER: 1, ROLE_APPROVER: 2, ROLE_ADMIN: 3, ROLE_OWNER: 4 };
export const roleRank = (role) => RANKS[role] || 0;
const APPROVER = 2;
const ADMIN = 3;
const SEVERITIES = ["SEVERITY_INFO", "SEVERITY_LOW", "SEVERITY_MEDIUM", "SEVERITY_HIGH", "SEVERITY_CRITICAL"];
const RISKS = ["RISK_LEVEL_LOW", "RISK_LEVEL_MEDIUM", "RISK_LEVEL_HIGH", "RISK_LEVEL_CRITICAL"];
const short = (v, prefix) => (v || "").replace(prefix, "");
const when = (t) => (t ? new Date(t).toLocaleString() : "—");
const enc = encodeURIComponent;
const base = (tenant) => `/v1/tenants/${enc(tenant)}`;

// -- navigation ---------------------------------------------------------------------------------
export function navigate(path) {
  history.pushState(null, "", path);
  dispatchEvent(new Event("zen:navigate"));
}

export function Link({ href, children, current, ...rest }) {
  const click = (e) => {
    if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(href);
  };
  return html`<a href=${href} onClick=${click} aria-current=${current ? "page" : undefined} ...${rest}>${children}</a>`;
}

// -- small building blocks ----------------------------------------------------------------------
function useLoad(load, deps) {
  const [state, setState] = useState({ data: null, error: null });
  const reload = () => load().then((data) => setState({ data, error: null }), (error) => setState({ data: null, error }));
  useEffect(() => {
    reload();
  }, deps);
  return [state.data, state.error, reload];
}

function Failure({ error }) {
  if (!error) return null;
  return html`<p class="error" role="alert">${error.message}${error.problem && error.problem.code ? ` (${error.problem.code})` : ""}</p>`;
}

function Copy({ text, label }) {
  const [done, setDone] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
      setDone(true);
    } catch (_) {
      setDone(false);
    }
  };
  return html`<button type="button" onClick=${copy} aria-label=${`${done ? "Copied" : "Copy"} ${label}`}>${done ? "Copied" : "Copy"}</button>`;
}

// A value shown once (a secret, a token, a command): it is not kept anywhere after this.
function ShownOnce({ title, items, onDone }) {
  return html`<section class="panel secret" aria-labelledby="once-title" data-testid="shown-once">
    <h3 id="once-title">${title}</h3>
    <p>Copy these now: Zen stores only a hash or a sealed copy and will not show them again.</p>
    ${items.map(([label, value]) => html`<div class="row"><label>${label}</label><code data-testid=${`once-${label.toLowerCase().replace(/\W+/g, "-")}`}>${value}</code><${Copy} text=${value} label=${label} /></div>`)}
    <button type="button" onClick=${onDone}>Done</button>
  </section>`;
}

function Busy({ run, children, className, disabled, ...rest }) {
  const [busy, setBusy] = useState(false);
  const click = async () => {
    setBusy(true);
    try {
      await run();
    } finally {
      setBusy(false);
    }
  };
  return html`<button type="button" class=${className} disabled=${busy || disabled} onClick=${click} ...${rest}>${children}</button>`;
}

// -- home: tenants ------------------------------------------------------------------------------
export function Home({ tenants, refresh }) {
  const [error, setError] = useState(null);
  const create = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      const r = await post("/v1/tenants", { name: f.get("name"), displayName: f.get("displayName") });
      await refresh();
      navigate(`/console/t/${enc(r.tenant.tenantId)}/events`);
    } catch (err) {
      setError(err);
    }
  };
  const accept = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      await post(`/v1/invites/${enc(f.get("invite"))}:accept`, { token: f.get("token") });
      await refresh();
      e.target.reset();
    } catch (err) {
      setError(err);
    }
  };
  return html`<h2>Tenants</h2>
    ${tenants.length === 0 ? html`<p>You belong to no tenant yet.</p>` : html`<ul>
      ${tenants.map((t) => html`<li><${Link} href=${`/console/t/${enc(t.id)}/events`}>${t.name}</${Link}> <span class="muted">${short(t.role, "ROLE_").toLowerCase()}</span></li>`)}
    </ul>`}
    <${Failure} error=${error} />
    <form class="panel" onSubmit=${create} aria-labelledby="new-tenant">
      <h3 id="new-tenant">Create a tenant</h3>
      <div class="row">
        <div><label for="tenant-name">Name</label><input id="tenant-name" name="name" required /></div>
        <div><label for="tenant-display">Display name</label><input id="tenant-display" name="displayName" /></div>
        <button class="primary" type="submit">Create tenant</button>
      </div>
    </form>
    <form class="panel" onSubmit=${accept} aria-labelledby="accept-invite">
      <h3 id="accept-invite">Accept an invitation</h3>
      <div class="row">
        <div><label for="invite-id">Invitation id</label><input id="invite-id" name="invite" required /></div>
        <div><label for="invite-token">Token</label><input id="invite-token" name="token" required /></div>
        <button type="submit">Accept</button>
      </div>
    </form>`;
}

// -- live events --------------------------------------------------------------------------------
function WatchStatus({ state, info, onReconnect }) {
  const text = {
    connecting: "Connecting…",
    live: "Live",
    resuming: "Reconnecting: resuming after the last change received…",
    resumed: "Reconnected: resumed after the last change received (nothing missed, nothing repeated)",
    reconnecting: `Connection lost; reconnecting in ${Math.round((info.delay || 0) / 100) / 10} s…`,
    error: `Watch refused: ${(info.problem && info.problem.detail) || "error"}`,
  }[state];
  return html`<div class="row"><span class="status" role="status" aria-live="polite" data-testid="watch-status" data-state=${state}>${text}</span>
    <button type="button" onClick=${onReconnect}>Reconnect</button></div>`;
}

export function useWatch(tenant, onChange) {
  const [state, setState] = useState({ state: "connecting", info: {} });
  const handle = useRef(null);
  const latest = useRef(onChange);
  latest.current = onChange;
  useEffect(() => {
    handle.current = watchTenant(tenant, (m) => latest.current(m), (s, info) => setState({ state: s, info }));
    return () => handle.current.stop();
  }, [tenant]);
  return [state, () => handle.current && handle.current.drop()];
}

function EventsPage({ tenant, id, rank }) {
  const [rows, setRows] = useState(() => new Map());
  const [filters, setFilters] = useState({ cluster: "", source: "", severity: "", type: "", text: "" });
  const [error, setError] = useState(null);
  const upsert = (list) =>
    setRows((old) => {
      const next = new Map(old);
      for (const e of list) {
        const prev = next.get(e.eventId);
        if (!prev || Number(e.count || 1) >= Number(prev.count || 1)) next.set(e.eventId, e);
      }
      return next;
    });
  // The watch starts first and the list is read after it: an event stored in between is in
  // one or the other (or both, merged by id), never lost.
  const [watch, drop] = useWatch(tenant, (m) => m.event && upsert([m.event]));
  useEffect(() => {
    get(`${base(tenant)}/events?pageSize=200`).then((r) => upsert(r.events || []), setError);
  }, [tenant]);
  const all = useMemo(() => [...rows.values()].sort((a, b) => (b.lastSeenTime || b.receiveTime || "").localeCompare(a.lastSeenTime || a.receiveTime || "")), [rows]);
  const text = filters.text.toLowerCase();
  const shown = all.filter(
    (e) =>
      (!filters.cluster || e.clusterId === filters.cluster) &&
      (!filters.source || (e.sourceName || "") === filters.source) &&
      (!filters.severity || SEVERITIES.indexOf(e.severity) >= SEVERITIES.indexOf(filters.severity)) &&
      (!filters.type || (e.type || "").includes(filters.type)) &&
      (!text || JSON.stringify(e).toLowerCase().includes(text)),
  );
  const distinct = (f) => [...new Set(all.map(f).filter(Boolean))].sort();
  const set = (k) => (e) => setFilters({ ...filters, [k]: e.target.value });
  const selected = id ? rows.get(id) : null;
  return html`<h2>Live events</h2>
    <${WatchStatus} state=${watch.state} info=${watch.info} onReconnect=${drop} />
    <${Failure} error=${error} />
    <div class="filters" role="search">
      <div><label for="f-cluster">Cluster</label><select id="f-cluster" value=${filters.cluster} onChange=${set("cluster")}><option value="">any</option>${distinct((e) => e.clusterId).map((c) => html`<option value=${c}>${c}</option>`)}</select></div>
      <div><label for="f-source">Source</label><select id="f-source" value=${filters.source} onChange=${set("source")}><option value="">any</option>${distinct((e) => e.sourceName).map((c) => html`<option value=${c}>${c}</option>`)}</select></div>
      <div><label for="f-severity">Severity at least</label><select id="f-severity" value=${filters.severity} onChange=${set("severity")}><option value="">any</option>${SEVERITIES.map((s) => html`<option value=${s}>${short(s, "SEVERITY_")}</option>`)}</select></div>
      <div><label for="f-type">Type</label><input id="f-type" value=${filters.type} onInput=${set("type")} /></div>
      <div><label for="f-text">Text</label><input id="f-text" type="search" value=${filters.text} onInput=${set("text")} /></div>
    </div>
    <div class=${selected ? "split" : ""}>
      <table aria-label="Events" data-testid="events-table">
        <thead><tr><th scope="col">Severity</th><th scope="col">Title</th><th scope="col">Type</th><th scope="col">Source</th><th scope="col">Count</th><th scope="col">Last seen</th></tr></thead>
        <tbody>${shown.map((e) => html`<tr key=${e.eventId} class=${e.eventId === id ? "selected" : ""} data-event-id=${e.eventId}>
          <td><span class=${`badge sev-${short(e.severity, "SEVERITY_")}`}>${short(e.severity, "SEVERITY_")}</span></td>
          <td><${Link} href=${`/console/t/${enc(tenant)}/events/${enc(e.eventId)}`}>${e.title || "(untitled)"}</${Link}></td>
          <td>${e.type}</td><td>${e.sourceName}</td><td data-testid="fold-count">${e.count || 1}</td><td>${when(e.lastSeenTime || e.receiveTime)}</td>
        </tr>`)}</tbody>
      </table>
      ${selected && html`<${EventDetail} tenant=${tenant} event=${selected} rank=${rank} />`}
    </div>
    <p class="muted">${shown.length} of ${all.length} events</p>`;
}

function EventDetail({ tenant, event, rank }) {
  const [proposing, setProposing] = useState(false);
  const [error, setError] = useState(null);
  const r = event.resource || {};
  const propose = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      const body = {
        clusterId: event.clusterId,
        eventId: event.eventId,
        title: f.get("title"),
        description: f.get("description"),
        risk: f.get("risk"),
        action: { serverSideApply: { apiVersion: f.get("apiVersion"), kind: f.get("kind"), namespace: f.get("namespace"), name: f.get("name"), patch: JSON.parse(f.get("patch") || "{}") } },
      };
      const created = await post(`${base(tenant)}/remediations`, body);
      navigate(`/console/t/${enc(tenant)}/remediations/${enc(created.remediation.remediationId)}`);
    } catch (err) {
      setError(err instanceof SyntaxError ? new Error(`the patch is not JSON: ${err.message}`) : err);
    }
  };
  return html`<section class="panel" aria-labelledby="event-title" data-testid="event-detail">
    <h3 id="event-title">${event.title || "(untitled)"}</h3>
    <dl>
      <dt>Id</dt><dd><code>${event.eventId}</code></dd>
      <dt>Severity · type</dt><dd>${short(event.severity, "SEVERITY_")} · ${event.type}</dd>
      <dt>Source</dt><dd>${event.sourceName} ${event.webhookSourceId ? "(webhook)" : ""}</dd>
      <dt>Cluster</dt><dd>${event.clusterId || "—"}</dd>
      <dt>Resource</dt><dd>${r.kind ? `${r.kind} ${r.namespace ? r.namespace + "/" : ""}${r.name}` : "—"}</dd>
      <dt>Seen</dt><dd>${event.count || 1}× · first ${when(event.receiveTime)} · last ${when(event.lastSeenTime)}</dd>
    </dl>
    <h4>Raw payload</h4>
    <pre data-testid="raw-payload">${JSON.stringify(event.details || {}, null, 2)}</pre>
    <${Failure} error=${error} />
    ${rank >= APPROVER && event.clusterId && !proposing && html`<button type="button" onClick=${() => setProposing(true)}>Propose a remediation</button>`}
    ${proposing && html`<form onSubmit=${propose} aria-label="Propose a remediation">
      <label for="p-title">Title</label><input id="p-title" name="title" required value=${`Remediate: ${event.title || event.type}`} />
      <label for="p-description">Description</label><textarea id="p-description" name="description"></textarea>
      <label for="p-risk">Risk</label><select id="p-risk" name="risk">${RISKS.map((k) => html`<option value=${k}>${short(k, "RISK_LEVEL_")}</option>`)}</select>
      <div class="row">
        <div><label for="p-api">API version</label><input id="p-api" name="apiVersion" value=${r.apiVersion || "apps/v1"} required /></div>
        <div><label for="p-kind">Kind</label><input id="p-kind" name="kind" value=${r.kind || "Deployment"} required /></div>
        <div><label for="p-ns">Namespace</label><input id="p-ns" name="namespace" value=${r.namespace || ""} /></div>
        <div><label for="p-name">Name</label><input id="p-name" name="name" value=${r.name || ""} required /></div>
      </div>
      <label for="p-patch">Patch (server-side apply, JSON)</label>
      <textarea id="p-patch" name="patch" required>${'{"spec": {}}'}</textarea>
      <div class="row"><button class="primary" type="submit">Propose</button><button type="button" onClick=${() => setProposing(false)}>Cancel</button></div>
    </form>`}
  </section>`;
}

// -- clusters -----------------------------------------------------------------------------------
function age(t, now) {
  if (!t) return "never";
  const s = Math.max(0, Math.round((now - new Date(t).getTime()) / 1000));
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

function ClustersPage({ tenant, rank }) {
  const [clusters, error, reload] = useLoad(() => get(`${base(tenant)}/clusters?pageSize=200`).then((r) => r.clusters || []), [tenant]);
  const [now, setNow] = useState(Date.now());
  const [once, setOnce] = useState(null);
  const [failure, setFailure] = useState(null);
  const [config] = useLoad(() => get("/console/session/config"), []);
  // Connection state and heartbeat age stay current: the list is re-read every few seconds and
  // the ages tick every second.
  useEffect(() => {
    const tick = setInterval(() => setNow(Date.now()), 1000);
    const poll = setInterval(reload, 3000);
    return () => {
      clearInterval(tick);
      clearInterval(poll);
    };
  }, [tenant]);
  const create = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      await post(`${base(tenant)}/clusters`, { name: f.get("name"), displayName: f.get("displayName") });
      e.target.reset();
      reload();
    } catch (err) {
      setFailure(err);
    }
  };
  const enroll = async (c) => {
    try {
      const t = await post(`${base(tenant)}/clusters/${enc(c.clusterId)}/bootstrapTokens`, {});
      const grpc = config && config.grpcPort ? `https://${location.hostname}:${config.grpcPort}` : "https://ZEN_GRPC_HOST:7443";
      const command = `zen agent bootstrap --url ${location.origin} --grpc-url ${grpc} --token ${t.token}`;
      setOnce({ cluster: c.name, command, expires: t.expireTime });
    } catch (err) {
      setFailure(err);
    }
  };
  return html`<h2>Clusters</h2>
    <${Failure} error=${error || failure} />
    ${once && html`<${ShownOnce} title=${`Enroll ${once.cluster}`} items=${[["Command", once.command]]} onDone=${() => setOnce(null)} />
      <p class="muted">Run it on the cluster's agent host before ${when(once.expires)}; then <code>zen agent run</code>.</p>`}
    <table aria-label="Clusters" data-testid="clusters-table">
      <thead><tr><th scope="col">Name</th><th scope="col">Status</th><th scope="col">Connection</th><th scope="col">Last heartbeat</th><th scope="col">Agent</th>${rank >= ADMIN && html`<th scope="col"><span class="visually-hidden">Actions</span></th>`}</tr></thead>
      <tbody>${(clusters || []).map((c) => html`<tr key=${c.clusterId} data-cluster=${c.name}>
        <td>${c.displayName || c.name}<br /><code class="muted">${c.clusterId}</code></td>
        <td>${short(c.status, "CLUSTER_STATUS_")}</td>
        <td data-testid="connection" data-state=${c.connectionState}>${short(c.connectionState, "CONNECTION_STATE_")}</td>
        <td>${age(c.lastSeenTime, now)}</td>
        <td>${c.agentVersion || "—"}</td>
        ${rank >= ADMIN && html`<td><button type="button" onClick=${() => enroll(c)} aria-label=${`Enroll ${c.name}`}>Enroll</button></td>`}
      </tr>`)}</tbody>
    </table>
    ${rank >= ADMIN && html`<form class="panel" onSubmit=${create} aria-labelledby="new-cluster">
      <h3 id="new-cluster">Register a cluster</h3>
      <div class="row">
        <div><label for="cluster-name">Name</label><input id="cluster-name" name="name" required /></div>
        <div><label for="cluster-display">Display name</label><input id="cluster-display" name="displayName" /></div>
        <button class="primary" type="submit">Register</button>
      </div>
    </form>`}`;
}

// -- webhook sources ----------------------------------------------------------------------------
const OUTCOMES = { DELIVERY_OUTCOME_ACCEPTED: "accepted", DELIVERY_OUTCOME_DUPLICATE: "duplicate", DELIVERY_OUTCOME_CHALLENGE: "challenge", DELIVERY_OUTCOME_REFUSED: "refused" };

// What became of a source's recent deliveries (the last 50 of the last 7 days), newest first.
function Deliveries({ tenant, source, onClose }) {
  const [deliveries, error, reload] = useLoad(() => get(`${base(tenant)}/webhookSources/${enc(source.sourceId)}/deliveries`).then((r) => r.deliveries || []), [tenant, source.sourceId]);
  return html`<section class="panel" aria-labelledby="deliveries-title" data-testid="deliveries">
    <h3 id="deliveries-title">Recent deliveries to ${source.displayName || source.name}</h3>
    <${Failure} error=${error} />
    <div class="row"><button type="button" onClick=${reload}>Refresh</button><button type="button" onClick=${onClose}>Close</button></div>
    ${deliveries && deliveries.length === 0 && html`<p>No delivery in the last 7 days.</p>`}
    ${deliveries && deliveries.length > 0 && html`<table aria-label=${`Recent deliveries to ${source.name}`}>
      <thead><tr><th scope="col">Received</th><th scope="col">Outcome</th><th scope="col">HTTP</th><th scope="col">Reason</th><th scope="col">Sender's id</th><th scope="col">Events</th></tr></thead>
      <tbody>${deliveries.map((d, i) => html`<tr key=${i} data-outcome=${OUTCOMES[d.outcome] || ""}>
        <td>${when(d.receiveTime)}</td>
        <td><span class=${`badge outcome-${OUTCOMES[d.outcome] || "unknown"}`}>${OUTCOMES[d.outcome] || d.outcome}</span></td>
        <td>${d.httpStatus}</td>
        <td>${d.reason && html`<code>${d.reason}</code>`} ${d.message}</td>
        <td>${d.senderDeliveryId && html`<code>${d.senderDeliveryId}</code>`}</td>
        <td>${(d.eventIds || []).map((id) => html`<${Link} href=${`/console/t/${enc(tenant)}/events/${enc(id)}`}>event</${Link}> `)}</td>
      </tr>`)}</tbody>
    </table>`}
  </section>`;
}

function SourcesPage({ tenant, rank }) {
  const [sources, error, reload] = useLoad(() => get(`${base(tenant)}/webhookSources?pageSize=200`).then((r) => r.webhookSources || []), [tenant]);
  const [presets] = useLoad(() => get("/console/presets.json").then((r) => r.presets), []);
  const [presetId, setPresetId] = useState("github");
  const [once, setOnce] = useState(null);
  const [failure, setFailure] = useState(null);
  const [inspected, setInspected] = useState(null);
  const preset = (presets || []).find((p) => p.id === presetId);
  const create = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const body = { name: f.get("name"), displayName: f.get("displayName"), enabled: true, verification: { scheme: preset.scheme } };
    if (preset.mapping) body.mapping = preset.mapping;
    const schema = (f.get("schema") || "").trim();
    try {
      if (schema) body.jsonSchema = JSON.parse(schema);
      const r = await post(`${base(tenant)}/webhookSources`, body);
      setOnce({ title: `Source ${r.webhookSource.name} created`, items: [["URL", r.webhookSource.url], ["Secret", r.secret]] });
      e.target.reset();
      reload();
    } catch (err) {
      setFailure(err instanceof SyntaxError ? new Error(`the JSON Schema is not JSON: ${err.message}`) : err);
    }
  };
  const rotate = async (s) => {
    try {
      const r = await post(`${base(tenant)}/webhookSources/${enc(s.sourceId)}:rotateSecret`, {});
      setOnce({ title: `New secret of ${s.name}`, items: [["Secret", r.secret]] });
      reload();
    } catch (err) {
      setFailure(err);
    }
  };
  const toggle = async (s) => {
    try {
      await patch(`${base(tenant)}/webhookSources/${enc(s.sourceId)}?updateMask=enabled`, { enabled: !s.enabled, version: s.version });
      reload();
    } catch (err) {
      setFailure(err);
    }
  };
  return html`<h2>Webhook sources</h2>
    <${Failure} error=${error || failure} />
    ${once && html`<${ShownOnce} title=${once.title} items=${once.items} onDone=${() => setOnce(null)} />`}
    <table aria-label="Webhook sources" data-testid="sources-table">
      <thead><tr><th scope="col">Name</th><th scope="col">Scheme</th><th scope="col">URL</th><th scope="col">Enabled</th><th scope="col">Last delivery</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
      <tbody>${(sources || []).map((s) => html`<tr key=${s.sourceId} data-source=${s.name}>
        <td>${s.displayName || s.name}</td>
        <td>${short(s.verification && s.verification.scheme, "WEBHOOK_SCHEME_")}</td>
        <td><code>${s.url}</code></td>
        <td data-testid="enabled">${s.enabled ? "yes" : "no"}</td>
        <td>${when(s.lastDeliveryTime)}</td>
        <td><div class="row">
          <button type="button" onClick=${() => setInspected(s)} aria-label=${`Recent deliveries to ${s.name}`}>Deliveries</button>
          ${rank >= ADMIN && html`<button type="button" onClick=${() => rotate(s)} aria-label=${`Rotate secret of ${s.name}`}>Rotate secret</button>
          <button type="button" onClick=${() => toggle(s)} aria-label=${`${s.enabled ? "Disable" : "Enable"} ${s.name}`}>${s.enabled ? "Disable" : "Enable"}</button>`}
        </div></td>
      </tr>`)}</tbody>
    </table>
    ${inspected && html`<${Deliveries} key=${inspected.sourceId} tenant=${tenant} source=${inspected} onClose=${() => setInspected(null)} />`}
    ${rank >= ADMIN && presets && html`<form class="panel" onSubmit=${create} aria-labelledby="new-source">
      <h3 id="new-source">Register a source from a preset</h3>
      <label for="preset">Preset</label>
      <select id="preset" value=${presetId} onChange=${(e) => setPresetId(e.target.value)}>
        ${presets.map((p) => html`<option value=${p.id}>${p.label}</option>`)}
      </select>
      ${preset && html`<p class="muted">Scheme ${short(preset.scheme, "WEBHOOK_SCHEME_")}${preset.mapping ? ", with its mapping" : ""}. ${preset.help}</p>`}
      <div class="row">
        <div><label for="source-name">Name</label><input id="source-name" name="name" required value=${preset ? preset.name : ""} key=${presetId} /></div>
        <div><label for="source-display">Display name</label><input id="source-display" name="displayName" /></div>
      </div>
      <label for="source-schema">JSON Schema of the payload (optional)</label>
      <textarea id="source-schema" name="schema"></textarea>
      <div class="row"><button class="primary" type="submit">Create source</button></div>
    </form>`}`;
}

// -- remediations -------------------------------------------------------------------------------
function RemediationsPage({ tenant, id, rank }) {
  const [status, setStatus] = useState("");
  const [items, setItems] = useState(() => new Map());
  const [error, setError] = useState(null);
  const upsert = (list) =>
    setItems((old) => {
      const next = new Map(old);
      for (const r of list) {
        const prev = next.get(r.remediationId);
        if (!prev || Number(r.version || 0) >= Number(prev.version || 0)) next.set(r.remediationId, r);
      }
      return next;
    });
  const [watch, drop] = useWatch(tenant, (m) => m.remediation && upsert([m.remediation]));
  useEffect(() => {
    get(`${base(tenant)}/remediations?pageSize=200`).then((r) => upsert(r.remediations || []), setError);
  }, [tenant]);
  const list = [...items.values()].filter((r) => !status || r.status === status).sort((a, b) => (b.createTime || "").localeCompare(a.createTime || ""));
  const selected = id ? items.get(id) : null;
  return html`<h2>Remediations</h2>
    <${WatchStatus} state=${watch.state} info=${watch.info} onReconnect=${drop} />
    <${Failure} error=${error} />
    <div class="filters"><div><label for="r-status">Status</label>
      <select id="r-status" value=${status} onChange=${(e) => setStatus(e.target.value)}><option value="">any</option>
        ${["PENDING_APPROVAL", "APPROVED", "DISPATCHED", "EXECUTING", "VERIFYING", "SUCCEEDED", "FAILED", "ROLLING_BACK", "ROLLED_BACK", "REJECTED", "CANCELLED", "EXPIRED"].map((s) => html`<option value=${`REMEDIATION_STATUS_${s}`}>${s}</option>`)}
      </select></div></div>
    <div class=${selected ? "split" : ""}>
      <table aria-label="Remediations" data-testid="remediations-table">
        <thead><tr><th scope="col">Title</th><th scope="col">Status</th><th scope="col">Risk</th><th scope="col">Approvals</th><th scope="col">Created</th></tr></thead>
        <tbody>${list.map((r) => html`<tr key=${r.remediationId} class=${r.remediationId === id ? "selected" : ""}>
          <td><${Link} href=${`/console/t/${enc(tenant)}/remediations/${enc(r.remediationId)}`}>${r.title}</${Link}></td>
          <td data-testid="remediation-status">${short(r.status, "REMEDIATION_STATUS_")}</td><td>${short(r.risk, "RISK_LEVEL_")}</td>
          <td>${(r.approvals || []).length} / ${r.requiredApprovals || 0}</td><td>${when(r.createTime)}</td>
        </tr>`)}</tbody>
      </table>
      ${id && !selected && html`<p>Loading…</p>`}
      ${selected && html`<${RemediationDetail} key=${selected.remediationId + ":" + selected.version} tenant=${tenant} r=${selected} rank=${rank} onChanged=${(x) => upsert([x])} />`}
    </div>
    ${rank >= ADMIN && html`<${DeadLetters} tenant=${tenant} />`}`;
}

// The action as a diff: the rollback action (what was there) removed, the patch added.
function Diff({ action, rollback }) {
  const lines = (a, sign) => (a && a.serverSideApply ? JSON.stringify(a.serverSideApply.patch || {}, null, 2).split("\n").map((l) => [sign, l]) : []);
  const all = [...lines(rollback, "-"), ...lines(action, "+")];
  return html`<pre class="diff" aria-label="Patch as a diff" data-testid="diff">${all.map(([s, l]) => html`<span class=${s === "+" ? "add" : "del"}>${s} ${l}</span>`)}</pre>`;
}

function RemediationDetail({ tenant, r, rank, onChanged }) {
  const [comment, setComment] = useState("");
  const [error, setError] = useState(null);
  const [runs, , reloadRuns] = useLoad(() => get(`${base(tenant)}/remediations/${enc(r.remediationId)}/verificationRuns`).then((x) => x.verificationRuns || []), [r.remediationId, r.version]);
  const [policy] = useLoad(() => get(`${base(tenant)}/approvalPolicy`).then((x) => x.approvalPolicy || x), [tenant]);
  // People are shown by name (a removed member by id).
  const [members] = useLoad(() => get(`${base(tenant)}/members?pageSize=500`).then((x) => x.members || []), [tenant]);
  const who = (userId) => {
    const m = (members || []).find((x) => x.userId === userId);
    return m ? m.displayName || m.email : userId;
  };
  const ssa = (r.action && r.action.serverSideApply) || {};
  const open = ["REMEDIATION_STATUS_PENDING_APPROVAL", "REMEDIATION_STATUS_PROPOSED"].includes(r.status);
  const cancellable = open || r.status === "REMEDIATION_STATUS_APPROVED";
  const reversible = ["REMEDIATION_STATUS_SUCCEEDED", "REMEDIATION_STATUS_FAILED"].includes(r.status) && r.rollbackAction;
  const act = (verb, field) => async () => {
    if (!comment.trim()) {
      setError(new Error("a comment is required"));
      return;
    }
    try {
      const x = await post(`${base(tenant)}/remediations/${enc(r.remediationId)}:${verb}`, { version: r.version, [field]: comment });
      setError(null);
      setComment("");
      if (x.remediation) onChanged(x.remediation);
      reloadRuns();
    } catch (err) {
      setError(err);
    }
  };
  const approvals = r.approvals || [];
  const needed = Math.max(0, (r.requiredApprovals || 0) - approvals.length);
  const windows = (policy && policy.approvalWindows) || [];
  const timeline = [
    ["Proposed", r.createTime, who(r.proposedBy)],
    ...approvals.map((a) => ["Approved", a.approveTime, `${who(a.approverId)} (${short(a.approverRole, "ROLE_").toLowerCase()}): ${a.comment || ""}`]),
    ["Dispatched", r.dispatchTime, r.attempts ? `attempt ${r.attempts}` : ""],
    ...(runs || []).map((v) => ["Verification", v.endTime || v.startTime, `${short(v.result, "VERIFICATION_RESULT_")}: ${(v.probes || []).map((p) => `${p.name} ${p.success ? "passed" : "failed"}${p.message ? " (" + p.message + ")" : ""}`).join(", ")}`]),
    ["Completed", r.completeTime, `${short(r.status, "REMEDIATION_STATUS_")}${r.lastError ? ": " + r.lastError : ""}`],
  ].filter(([, t]) => t);
  return html`<section class="panel" aria-labelledby="rem-title" data-testid="remediation-detail">
    <h3 id="rem-title">${r.title}</h3>
    <p><span class="status" data-testid="detail-status">${short(r.status, "REMEDIATION_STATUS_")}</span> risk ${short(r.risk, "RISK_LEVEL_")} ${r.statusReason ? html`<span class="muted">· ${r.statusReason}</span>` : ""}</p>
    ${r.description && html`<p>${r.description}</p>`}
    <p>${ssa.kind} ${ssa.namespace ? ssa.namespace + "/" : ""}${ssa.name} <span class="muted">(${ssa.apiVersion}, cluster ${r.clusterId})</span></p>
    <${Diff} action=${r.action} rollback=${r.rollbackAction} />
    <h4>Approval</h4>
    <p data-testid="approval-progress">${approvals.length} of ${r.requiredApprovals || 0} approvals${needed ? `; ${needed} more needed` : ""}${r.expireTime ? ` · expires ${when(r.expireTime)}` : ""}</p>
    ${windows.length > 0 && html`<p class="muted">Approval windows: ${windows.map((w) => `${(w.days || []).map((d) => short(d, "DAY_OF_WEEK_").slice(0, 3)).join(",")} ${w.startHour}–${w.endHour} h ${w.timeZone || "UTC"}`).join("; ")}</p>`}
    <ul data-testid="approvers">${approvals.map((a) => html`<li>${who(a.approverId)} <span class="muted">${short(a.approverRole, "ROLE_").toLowerCase()} · ${when(a.approveTime)}</span> ${a.comment}</li>`)}</ul>
    ${rank >= APPROVER && (cancellable || reversible) && html`<div>
      <label for="decision-comment">Comment (required)</label>
      <textarea id="decision-comment" value=${comment} onInput=${(e) => setComment(e.target.value)}></textarea>
      <div class="row">
        ${open && html`<${Busy} className="primary" run=${act("approve", "comment")}>Approve</${Busy}>`}
        ${open && html`<${Busy} className="danger" run=${act("reject", "reason")}>Reject</${Busy}>`}
        ${cancellable && html`<${Busy} run=${act("cancel", "reason")}>Cancel remediation</${Busy}>`}
        ${reversible && html`<${Busy} className="danger" run=${act("rollback", "reason")}>Request rollback</${Busy}>`}
      </div>
    </div>`}
    <${Failure} error=${error} />
    <h4>Timeline</h4>
    <ol class="timeline" data-testid="timeline">${timeline.map(([what, t, note]) => html`<li><strong>${what}</strong> <span class="muted">${when(t)}</span> ${note}</li>`)}</ol>
  </section>`;
}

function DeadLetters({ tenant }) {
  const [letters, error, reload] = useLoad(() => get(`${base(tenant)}/deadLetters?pageSize=100&showReplayed=true`).then((r) => r.deadLetters || []), [tenant]);
  const [failure, setFailure] = useState(null);
  const replay = async (d) => {
    try {
      await post(`${base(tenant)}/deadLetters/${enc(d.deadLetterId)}:replay`, {});
      reload();
    } catch (err) {
      setFailure(err);
    }
  };
  return html`<h3>Dead letters</h3>
    <${Failure} error=${error || failure} />
    ${letters && letters.length === 0 ? html`<p class="muted">None: every dispatch reached its agent.</p>` : html`<table aria-label="Dead letters">
      <thead><tr><th scope="col">Remediation</th><th scope="col">Attempts</th><th scope="col">Last error</th><th scope="col">Replayed</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
      <tbody>${(letters || []).map((d) => html`<tr key=${d.deadLetterId}><td><code>${d.remediationId}</code></td><td>${d.attempts}</td><td>${d.lastError}</td><td>${when(d.replayTime)}</td>
        <td>${!d.replayTime && html`<button type="button" onClick=${() => replay(d)}>Replay</button>`}</td></tr>`)}</tbody>
    </table>`}`;
}

// -- audit --------------------------------------------------------------------------------------
function AuditPage({ tenant }) {
  const [filters, setFilters] = useState({ action: "", resourceType: "", outcome: "" });
  const [records, error, reload] = useLoad(() => get(`${base(tenant)}/auditLogs${q({ pageSize: 200, ...filters })}`).then((r) => r.auditRecords || []), [tenant, filters.action, filters.resourceType, filters.outcome]);
  const [verdict, setVerdict] = useState(null);
  const [failure, setFailure] = useState(null);
  const verify = async () => {
    try {
      setVerdict(await post(`${base(tenant)}/auditLogs:verify`, {}));
    } catch (err) {
      setFailure(err);
    }
  };
  const set = (k) => (e) => setFilters({ ...filters, [k]: e.target.value });
  return html`<h2>Audit log</h2>
    <div class="row"><${Busy} className="primary" run=${verify}>Verify chain</${Busy}> <button type="button" onClick=${reload}>Refresh</button></div>
    ${verdict && html`<p role="status" data-testid="verify-result" class=${verdict.ok ? "okay" : "error"}>
      ${verdict.ok ? `Chain intact: ${verdict.recordsChecked || 0} records checked, last sequence ${verdict.lastSequence || 0}.` : `Chain broken at sequence ${verdict.firstBrokenSequence}: ${verdict.reason}`}
    </p>`}
    <${Failure} error=${error || failure} />
    <div class="filters" role="search">
      <div><label for="a-action">Action</label><input id="a-action" value=${filters.action} onChange=${set("action")} /></div>
      <div><label for="a-type">Resource type</label><input id="a-type" value=${filters.resourceType} onChange=${set("resourceType")} /></div>
      <div><label for="a-outcome">Outcome</label><select id="a-outcome" value=${filters.outcome} onChange=${set("outcome")}><option value="">any</option><option value="AUDIT_OUTCOME_SUCCESS">success</option><option value="AUDIT_OUTCOME_DENIED">denied</option></select></div>
    </div>
    <table aria-label="Audit records" data-testid="audit-table">
      <thead><tr><th scope="col">#</th><th scope="col">Time</th><th scope="col">Actor</th><th scope="col">Action</th><th scope="col">Resource</th><th scope="col">Outcome</th></tr></thead>
      <tbody>${(records || []).map((a) => html`<tr key=${a.recordId}><td>${a.sequence}</td><td>${when(a.createTime)}</td><td>${a.actor ? `${short(a.actor.type, "ACTOR_TYPE_").toLowerCase()} ${a.actor.id || ""}` : ""}</td><td>${a.action}</td><td>${a.resourceType} <code>${a.resourceId}</code></td><td>${short(a.outcome, "AUDIT_OUTCOME_").toLowerCase()}</td></tr>`)}</tbody>
    </table>`;
}

// -- members and invites ------------------------------------------------------------------------
function MembersPage({ tenant, session, rank }) {
  const [members, error, reload] = useLoad(() => get(`${base(tenant)}/members?pageSize=200`).then((r) => r.members || []), [tenant]);
  const [once, setOnce] = useState(null);
  const [failure, setFailure] = useState(null);
  const roles = ["ROLE_VIEWER", "ROLE_APPROVER", "ROLE_ADMIN"].concat(rank >= 4 ? ["ROLE_OWNER"] : []);
  const invite = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      const r = await post(`${base(tenant)}/invites`, { email: f.get("email"), role: f.get("role") });
      setOnce({ items: [["Invitation id", r.invite.inviteId], ["Token", r.token]] });
      e.target.reset();
    } catch (err) {
      setFailure(err);
    }
  };
  const change = (m) => async (e) => {
    try {
      await patch(`${base(tenant)}/members/${enc(m.userId)}`, { role: e.target.value });
      reload();
    } catch (err) {
      setFailure(err);
      reload();
    }
  };
  const remove = async (m) => {
    try {
      await del(`${base(tenant)}/members/${enc(m.userId)}`);
      reload();
    } catch (err) {
      setFailure(err);
    }
  };
  const me = session.user.userId;
  return html`<h2>Members</h2>
    <${Failure} error=${error || failure} />
    ${once && html`<${ShownOnce} title="Invitation created" items=${once.items} onDone=${() => setOnce(null)} />`}
    <table aria-label="Members" data-testid="members-table">
      <thead><tr><th scope="col">Name</th><th scope="col">Email</th><th scope="col">Role</th><th scope="col">Joined</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
      <tbody>${(members || []).map((m) => html`<tr key=${m.userId}>
        <td>${m.displayName}</td><td>${m.email}</td>
        <td>${m.userId === me ? short(m.role, "ROLE_").toLowerCase() : html`<label class="visually-hidden" for=${`role-${m.userId}`}>Role of ${m.email}</label>
          <select id=${`role-${m.userId}`} value=${m.role} onChange=${change(m)}>${roles.map((r) => html`<option value=${r}>${short(r, "ROLE_").toLowerCase()}</option>`)}</select>`}</td>
        <td>${when(m.joinTime)}</td>
        <td>${m.userId !== me && html`<button type="button" class="danger" onClick=${() => remove(m)} aria-label=${`Remove ${m.email}`}>Remove</button>`}</td>
      </tr>`)}</tbody>
    </table>
    <form class="panel" onSubmit=${invite} aria-labelledby="new-invite">
      <h3 id="new-invite">Invite someone</h3>
      <div class="row">
        <div><label for="invite-email">Email</label><input id="invite-email" name="email" type="email" required /></div>
        <div><label for="invite-role">Role</label><select id="invite-role" name="role">${roles.map((r) => html`<option value=${r}>${short(r, "ROLE_").toLowerCase()}</option>`)}</select></div>
        <button class="primary" type="submit">Invite</button>
      </div>
    </form>`;
}

// The tenant's pages, in navigation order, with the least role that may open each.
export const PAGES = [
  { id: "events", label: "Live events", minRank: 1, component: EventsPage },
  { id: "clusters", label: "Clusters", minRank: 1, component: ClustersPage },
  { id: "sources", label: "Webhook sources", minRank: 1, component: SourcesPage },
  { id: "remediations", label: "Remediations", minRank: 1, component: RemediationsPage },
  { id: "audit", label: "Audit", minRank: ADMIN, component: AuditPage },
  { id: "members", label: "Members", minRank: ADMIN, component: MembersPage },
];
