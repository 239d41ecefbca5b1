#!/usr/bin/env node
// A throwaway OpenID Provider for Zen's OIDC tests (and for trying the login by hand).
//
// It is the npm package `oidc-provider` (pinned in the root package.json; `npm ci` at the
// repository root installs it) with:
//   - an issuer on http://127.0.0.1:<port> (port 0 = any free port);
//   - one static confidential client (PKCE S256 required) plus a second client `other`, which
//     exists only so that the `wrong-audience` tamper mode names a real registered client;
//   - `devInteractions`: its login form accepts any login name and any password, then asks
//     for consent;
//   - accounts for every login name: sub = <login>, email = <login>@example.test,
//     email_verified = true, name = "Test User <login>", all in the ID token;
//   - a tamper switch for negative tests (see TAMPER MODES below).
//
// Usage:
//   node tests/oidc/provider.mjs [--port N] [--client-id ID] [--client-secret S]
//        [--redirect-uri URI]... [--auth-method client_secret_basic|client_secret_post]
//        [--tamper MODE] [--exit-with-stdin]
// Every option also reads an environment variable: OIDC_PORT, OIDC_CLIENT_ID,
// OIDC_CLIENT_SECRET, OIDC_REDIRECT_URIS (comma-separated), OIDC_AUTH_METHOD, OIDC_TAMPER.
// Defaults: port 0, client `zen` / `zen-test-secret`, redirect URI
// http://127.0.0.1:8080/auth/callback/local, client_secret_basic, no tampering.
//
// Once listening it prints ONE JSON line on stdout: {"issuer": "http://127.0.0.1:N", "port": N}
// (everything else goes to stderr). With --exit-with-stdin it exits when its stdin closes, so a
// test harness that dies cannot leave it running.
//
// The login by hand (a browser on the same machine):
//   open <issuer>/auth?client_id=zen&response_type=code&scope=openid%20email
//        &redirect_uri=...&code_challenge=...&code_challenge_method=S256&state=...&nonce=...
//   -> 303 /interaction/<uid>        login form: POST prompt=login, login=<any>, password=<any>
//   -> 303 /auth/<uid> -> 303 /interaction/<uid2>   consent form: POST prompt=consent
//   -> 303 /auth/<uid2> -> 303 <redirect_uri>?code=...&state=...&iss=...
//
// TAMPER MODES (set at start with --tamper, or at run time with
//   POST /__test/tamper?mode=MODE; GET /__test/stats returns request counters)
// They rewrite the `id_token` in successful responses of the token endpoint. Every mode except
// `bad-signature` and `alg-none` RE-SIGNS the rewritten token with a real key, so exactly one
// property is wrong and every other check (signature, issuer, audience, nonce, expiry) passes:
//   bad-signature   flip bits in the middle of the signature (the payload is untouched)
//   wrong-audience  aud = "other", azp = "other" (a registered client), re-signed with the
//                   provider's own published signing key: a genuinely valid token for the
//                   other client, carrying this login's nonce, so only the audience is wrong
//   extra-audience  aud = [client, "other"], azp = client (an untrusted extra audience)
//   wrong-azp       aud = client, azp = "other"
//   wrong-issuer    iss = "https://evil.example"
//   wrong-nonce     nonce = a different random value
//   expired         exp = now - 600, iat = now - 1200
//   hs256           alg HS256, MAC'ed with the client secret (discovery always lists HS256 in
//                   id_token_signing_alg_values_supported, so only a client that refuses
//                   symmetric ID tokens on its own rejects it)
//   alg-none        alg "none", empty signature
//   unknown-kid     signed with a key that the JWKS never publishes
//   rotate          the JWKS publishes an additional key "zen-test-k2" and tokens are signed
//                   with it: a client that cached the old JWKS must refresh it once
//   token-error     the token endpoint answers 500 {"error":"server_error"}
import { createServer } from 'node:http';
import { createHmac, generateKeyPairSync, randomBytes, sign as cryptoSign } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

// stdout carries exactly one line (the announcement); oidc-provider's own notices go to stderr.
const announce = (line) => process.stdout.write(`${line}\n`);
console.log = console.error;
console.info = console.error;

const MODES = new Set([
  'none', 'bad-signature', 'wrong-audience', 'extra-audience', 'wrong-azp', 'wrong-issuer',
  'wrong-nonce', 'expired', 'hs256', 'alg-none', 'unknown-kid', 'rotate', 'token-error',
]);

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    'redirect-uri': { type: 'string', multiple: true },
    'auth-method': { type: 'string' },
    tamper: { type: 'string' },
    'exit-with-stdin': { type: 'boolean', default: false },
  },
});
const env = process.env;
const port = Number(args.port ?? env.OIDC_PORT ?? 0);
const clientId = args['client-id'] ?? env.OIDC_CLIENT_ID ?? 'zen';
const clientSecret = args['client-secret'] ?? env.OIDC_CLIENT_SECRET ?? 'zen-test-secret';
const redirectUris = args['redirect-uri']
  ?? (env.OIDC_REDIRECT_URIS ? env.OIDC_REDIRECT_URIS.split(',') : ['http://127.0.0.1:8080/auth/callback/local']);
const authMethod = args['auth-method'] ?? env.OIDC_AUTH_METHOD ?? 'client_secret_basic';
let tamper = args.tamper ?? env.OIDC_TAMPER ?? 'none';
const stats = { discovery: 0, jwks: 0, token: 0 };

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad port ${port}`);
if (!MODES.has(tamper)) fail(`unknown tamper mode ${tamper}; one of ${[...MODES].join(', ')}`);
if (!['client_secret_basic', 'client_secret_post'].includes(authMethod)) fail(`unsupported auth method ${authMethod}`);
if (clientId === 'other') fail('client id `other` is reserved for the tamper modes');

// Keys: k1 is the provider's signing key (published); k2 is published only in `rotate` mode;
// k3 is never published.
function rsaKey(kid) {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    kid,
    privateKey,
    privateJwk: { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' },
    publicJwk: { ...publicKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' },
  };
}
const k1 = rsaKey('zen-test-k1');
const k2 = rsaKey('zen-test-k2');
const k3 = rsaKey('zen-test-k3');

const b64u = (buf) => Buffer.from(buf).toString('base64url');
function decodeJwt(jwt) {
  const [h, p, s] = jwt.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString()),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString()),
    signature: s,
  };
}
function signJwt(header, payload, { alg, key, kid }) {
  const h = { ...header, alg };
  if (kid) h.kid = kid; else delete h.kid;
  const input = `${b64u(JSON.stringify(h))}.${b64u(JSON.stringify(payload))}`;
  let signature;
  if (alg === 'RS256') signature = cryptoSign('sha256', Buffer.from(input), key);
  else if (alg === 'HS256') signature = createHmac('sha256', key).update(input).digest();
  else signature = Buffer.alloc(0);
  return `${input}.${b64u(signature)}`;
}

function tamperIdToken(idToken) {
  const { header, payload, signature } = decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  const k1Signer = { alg: 'RS256', key: k1.privateKey, kid: k1.kid };
  switch (tamper) {
    case 'bad-signature': {
      const sig = Buffer.from(signature, 'base64url');
      sig[Math.floor(sig.length / 2)] ^= 0xff;
      const [h, p] = idToken.split('.');
      return `${h}.${p}.${b64u(sig)}`;
    }
    case 'wrong-audience':
      return signJwt(header, { ...payload, aud: 'other', azp: 'other' }, k1Signer);
    case 'extra-audience':
      return signJwt(header, { ...payload, aud: [clientId, 'other'], azp: clientId }, k1Signer);
    case 'wrong-azp':
      return signJwt(header, { ...payload, aud: clientId, azp: 'other' }, k1Signer);
    case 'wrong-issuer':
      return signJwt(header, { ...payload, iss: 'https://evil.example' }, k1Signer);
    case 'wrong-nonce':
      return signJwt(header, { ...payload, nonce: b64u(randomBytes(16)) }, k1Signer);
    case 'expired':
      return signJwt(header, { ...payload, exp: now - 600, iat: now - 1200 }, k1Signer);
    case 'hs256':
      return signJwt(header, payload, { alg: 'HS256', key: Buffer.from(clientSecret) });
    case 'alg-none':
      return signJwt(header, payload, { alg: 'none' });
    case 'unknown-kid':
      return signJwt(header, payload, { alg: 'RS256', key: k3.privateKey, kid: k3.kid });
    case 'rotate':
      return signJwt(header, payload, { alg: 'RS256', key: k2.privateKey, kid: k2.kid });
    default:
      return idToken;
  }
}

const server = createServer();
server.listen(port, '127.0.0.1', () => {
  const actualPort = server.address().port;
  const issuer = `http://127.0.0.1:${actualPort}`;

  const clientDefaults = {
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: authMethod,
  };
  const provider = new Provider(issuer, {
    clients: [
      { ...clientDefaults, client_id: clientId, client_secret: clientSecret, redirect_uris: redirectUris },
      { ...clientDefaults, client_id: 'other', client_secret: 'other-test-secret', redirect_uris: redirectUris },
    ],
    clientAuthMethods: [authMethod],
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    // Put the scope-requested claims (email, name) into the ID token, as Google, Okta and
    // Keycloak do, instead of only at the userinfo endpoint.
    conformIdTokenClaims: false,
    enabledJwaAlgorithms: { idTokenSigningAlgValues: ['RS256'] },
    jwks: { keys: [k1.privateJwk] },
    cookies: { keys: [b64u(randomBytes(32))] },
    async findAccount(ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return { sub, email: `${sub}@example.test`, email_verified: true, name: `Test User ${sub}` };
        },
      };
    },
  });

  provider.use(async (ctx, next) => {
    if (ctx.path === '/.well-known/openid-configuration') stats.discovery += 1;
    if (ctx.path === '/jwks') stats.jwks += 1;
    if (ctx.path === '/token') {
      stats.token += 1;
      if (tamper === 'token-error') {
        ctx.status = 500;
        ctx.type = 'application/json';
        ctx.body = { error: 'server_error', error_description: 'tamper mode token-error' };
        return;
      }
    }
    await next();
    if (ctx.path === '/.well-known/openid-configuration' && ctx.body?.id_token_signing_alg_values_supported) {
      // oidc-provider never signs ID tokens with HS256; advertise it anyway so that the `hs256`
      // mode tests the client's own refusal of symmetric ID tokens, not the advertised list.
      ctx.body = {
        ...ctx.body,
        id_token_signing_alg_values_supported: [...ctx.body.id_token_signing_alg_values_supported, 'HS256'],
      };
    }
    if (ctx.path === '/jwks' && tamper === 'rotate' && ctx.body?.keys) {
      ctx.body = { keys: [...ctx.body.keys, k2.publicJwk] };
    }
    if (ctx.path === '/token' && ctx.status === 200 && typeof ctx.body?.id_token === 'string') {
      ctx.body = { ...ctx.body, id_token: tamperIdToken(ctx.body.id_token) };
    }
  });

  const app = provider.callback();
  server.on('request', (req, res) => {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/__test/tamper' && req.method === 'POST') {
      const mode = url.searchParams.get('mode') ?? '';
      if (!MODES.has(mode)) {
        res.writeHead(400, { 'content-type': 'text/plain' }).end(`unknown mode ${mode}\n`);
        return;
      }
      tamper = mode;
      process.stderr.write(`provider.mjs: tamper mode ${mode}\n`);
      res.writeHead(204).end();
      return;
    }
    if (url.pathname === '/__test/stats' && req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ...stats, tamper }));
      return;
    }
    app(req, res);
  });

  announce(JSON.stringify({ issuer, port: actualPort }));
  process.stderr.write(`provider.mjs: ${issuer} client ${clientId} (${authMethod}) redirect_uris ${redirectUris.join(' ')} tamper ${tamper}\n`);
});
server.on('error', (err) => fail(err.message));

if (args['exit-with-stdin']) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('close', () => process.exit(0));
  process.stdin.resume();
}
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
