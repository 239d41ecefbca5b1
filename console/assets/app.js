// The console's shell: sign-in, the tenant switcher, navigation and client-side routing of
// /console/… deep links. Pages live in pages.js; every call goes through api.js.
import { html, render, useEffect, useState } from "/console/vendor/htm-preact-standalone.module.js";
import { ApiError, get, post, setCsrf } from "./api.js";
import { Home, Link, PAGES, navigate, roleRank } from "./pages.js";

// -- routing ------------------------------------------------------------------------------------
function parse(pathname) {
  const m = pathname.match(/^\/console\/t\/([^/]+)(?:\/([^/]+))?(?:\/([^/]+))?/);
  if (!m) return { tenant: null, page: "home", id: null };
  return { tenant: decodeURIComponent(m[1]), page: m[2] || "events", id: m[3] ? decodeURIComponent(m[3]) : null };
}

function useRoute() {
  const [route, setRoute] = useState(parse(location.pathname));
  useEffect(() => {
    const on = () => setRoute(parse(location.pathname));
    addEventListener("popstate", on);
    addEventListener("zen:navigate", on);
    return () => {
      removeEventListener("popstate", on);
      removeEventListener("zen:navigate", on);
    };
  }, []);
  return route;
}

// -- sign-in ------------------------------------------------------------------------------------
function SignIn({ onSignedIn }) {
  const [config, setConfig] = useState(null);
  const [error, setError] = useState(new URLSearchParams(location.search).get("login_error") || "");
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    get("/console/session/config").then(setConfig, (e) => setError(e.message));
  }, []);
  const submit = async (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    setBusy(true);
    setError("");
    try {
      const r = await fetch("/console/session/login", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ username: form.get("username"), password: form.get("password") }),
      });
      const data = await r.json().catch(() => ({}));
      if (!r.ok) throw new ApiError(r.status, data);
      onSignedIn(data);
    } catch (err) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  };
  const returnTo = encodeURIComponent(location.pathname.startsWith("/console") ? location.pathname : "/console/");
  return html`<main class="signin" id="main">
    <h1>Sign in to Zen</h1>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${config && config.localLogin && html`<form onSubmit=${submit} aria-label="Local sign-in">
      <label for="username">Username</label>
      <input id="username" name="username" autocomplete="username" required />
      <label for="password">Password</label>
      <input id="password" name="password" type="password" autocomplete="current-password" required />
      <div class="row"><button class="primary" type="submit" disabled=${busy}>Sign in</button></div>
    </form>`}
    ${config && config.providers.length > 0 && html`<h2>Or continue with</h2>
      <ul>${config.providers.map((p) => html`<li><a class="button" href=${`/console/session/oidc/${encodeURIComponent(p)}?return_to=${returnTo}`}>${p}</a></li>`)}</ul>`}
    ${config && !config.localLogin && config.providers.length === 0 && html`<p>No sign-in method is configured: start Zen with <code>--local-login true</code> or an OIDC provider.</p>`}
  </main>`;
}

// -- the shell ----------------------------------------------------------------------------------
function NotAvailable({ page, role }) {
  const needed = Object.entries({ viewer: 1, approver: 2, admin: 3, owner: 4 }).find(([, rank]) => rank === page.minRank);
  return html`<h2>Not available</h2>
    <p data-testid="not-available">${role
      ? `${page.label} needs the ${needed ? needed[0] : "admin"} role in this tenant; yours is ${role.replace("ROLE_", "").toLowerCase()}.`
      : "You are not a member of this tenant, or it does not exist."}</p>
    <p><${Link} href="/console/">Back to your tenants</${Link}></p>`;
}

function Shell({ session, refresh, signOut, signedInNow }) {
  const route = useRoute();
  // The sign-in form is gone: keyboard and screen-reader users continue at the content.
  useEffect(() => {
    if (signedInNow) document.getElementById("main").focus();
  }, []);
  const [allTenants, setAllTenants] = useState([]);
  const admin = session.user && session.user.platformAdmin;
  useEffect(() => {
    if (admin) get("/v1/tenants?pageSize=200").then((r) => setAllTenants(r.tenants || []), () => {});
  }, [admin, session]);
  const memberships = session.memberships || [];
  const tenants = memberships.map((m) => ({ id: m.tenantId, name: m.tenantDisplayName || m.tenantName, role: m.role }));
  for (const t of allTenants) {
    if (!tenants.some((x) => x.id === t.tenantId)) tenants.push({ id: t.tenantId, name: t.displayName || t.name, role: null });
  }
  const current = tenants.find((t) => t.id === route.tenant);
  const role = admin ? "ROLE_OWNER" : current ? current.role : null;
  const rank = roleRank(role);
  const pages = PAGES.filter((p) => rank >= p.minRank);
  const wanted = route.tenant ? PAGES.find((p) => p.id === route.page) || PAGES[0] : null;
  // A deep link to a page the role may not open (or to a tenant the user is not in) says so
  // instead of showing a page whose every request the server refuses.
  const Page = wanted && rank >= wanted.minRank ? wanted.component : null;
  useEffect(() => {
    const page = PAGES.find((p) => p.id === route.page);
    document.title = `${page ? page.label : "Tenants"}${current ? " · " + current.name : ""} · Zen`;
  }, [route.page, current && current.name]);
  const switchTenant = (e) => {
    const id = e.target.value;
    navigate(id ? `/console/t/${encodeURIComponent(id)}/${route.tenant ? route.page : "events"}` : "/console/");
  };
  return html`
    <a class="skip" href="#main">Skip to content</a>
    <header class="top">
      <h1><${Link} href="/console/">Zen</${Link}></h1>
      <label class="visually-hidden" for="tenant-switcher">Tenant</label>
      <select id="tenant-switcher" value=${route.tenant || ""} onChange=${switchTenant}>
        <option value="">All tenants…</option>
        ${tenants.map((t) => html`<option value=${t.id}>${t.name}</option>`)}
      </select>
      ${role && html`<span class="status" data-testid="role">${role.replace("ROLE_", "").toLowerCase()}</span>`}
      <span class="spacer"></span>
      <span class="muted">${session.user.displayName || session.user.username || session.user.email}</span>
      <button type="button" onClick=${signOut}>Sign out</button>
    </header>
    ${route.tenant && html`<nav class="tabs" aria-label="Tenant pages"><ul>
      ${pages.map((p) => html`<li><${Link} href=${`/console/t/${encodeURIComponent(route.tenant)}/${p.id}`} current=${p.id === route.page}>${p.label}</${Link}></li>`)}
    </ul></nav>`}
    <main id="main" tabindex="-1">
      ${route.tenant
        ? Page
          ? html`<${Page} key=${route.tenant + route.page} tenant=${route.tenant} id=${route.id} role=${role} rank=${rank} session=${session} />`
          : html`<${NotAvailable} page=${wanted} role=${role} />`
        : html`<${Home} tenants=${tenants} session=${session} refresh=${refresh} />`}
    </main>`;
}

function App() {
  const [session, setSession] = useState(undefined);
  const [signedInNow, setSignedInNow] = useState(false);
  const load = () =>
    get("/console/session").then(
      (s) => {
        setCsrf(s.csrfToken);
        setSession(s);
      },
      () => setSession(null),
    );
  useEffect(() => {
    load();
  }, []);
  const signOut = async () => {
    try {
      await post("/console/session/logout");
    } finally {
      setCsrf("");
      setSession(null);
      navigate("/console/");
    }
  };
  if (session === undefined) return html`<main class="boot"><p>Loading…</p></main>`;
  if (session === null)
    return html`<${SignIn} onSignedIn=${(s) => {
      setCsrf(s.csrfToken);
      setSignedInNow(true);
      setSession(s);
      if (location.search.includes("login_error")) history.replaceState(null, "", location.pathname);
    }} />`;
  return html`<${Shell} session=${session} refresh=${load} signOut=${signOut} signedInNow=${signedInNow} />`;
}

render(html`<${App} />`, document.getElementById("app"));
