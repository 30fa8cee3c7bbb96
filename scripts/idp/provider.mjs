// A real identity provider for the dev sandbox (scripts/sandbox.sh idp): panva's oidc-provider,
// a certified OpenID provider, on 127.0.0.1 over HTTPS with the certificate of `toolgate
// dev-certs`. One confidential client may use the client_credentials grant with a `resource`
// (RFC 8707) from IDP_RESOURCES, and gets an RFC 9068 JWT access token (typ at+jwt, ES256)
// whose `aud` is that resource. Never for production: keys live in memory, secrets in a file.
//
//   node scripts/idp/provider.mjs
//     IDP_PORT        port to listen on, 127.0.0.1 only (required)
//     IDP_CERTS       the dev-certs directory: server.pem, server.key (default ./certs)
//     IDP_STATE       a directory for client.json (default ./idp-state)
//     IDP_RESOURCES   space-separated resource indicators the client may ask for (required;
//                     toolgate's issuer URL, for a subject token toolgate accepts)
//     IDP_SCOPE       the scope those resources offer (default "code:search")
//     IDP_CLIENT_ID   the client's id (default "sandbox-agent")
//     IDP_CLIENT_SECRET  its secret; unset: read from IDP_STATE/client.json, or drawn at random
//                     and written there (mode 0600). Never printed.
//
// Key rotation: SIGUSR2 draws a new ES256 key and reloads the provider with the key list
// [new, previous] on the same listener, as oidc-provider's documentation advises for a rolling
// reload ("move your new key to the very front"): the new key signs from then on, the previous
// one stays published so that tokens it signed still verify. The new key is not published in
// advance, so a relying party first meets its `kid` in a token (toolgate must refetch the JWKS).
// Status lines (never a token or a secret) go to stdout.
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { join } from 'node:path';
import Provider, { errors } from 'oidc-provider';

const fail = (message) => {
  console.error(`idp: ${message}`);
  process.exit(2);
};

const port = Number.parseInt(process.env.IDP_PORT ?? '', 10);
if (!(port > 0 && port < 65536)) fail('IDP_PORT must be a port number');
const certs = process.env.IDP_CERTS ?? './certs';
const state = process.env.IDP_STATE ?? './idp-state';
const resources = new Set((process.env.IDP_RESOURCES ?? '').split(' ').filter(Boolean));
if (resources.size === 0) fail('IDP_RESOURCES must name at least one resource indicator');
const scope = process.env.IDP_SCOPE ?? 'code:search';
const issuer = `https://127.0.0.1:${port}`;

// The client's credentials: the environment's, else the state file's, else new ones.
function clientCredentials() {
  const clientId = process.env.IDP_CLIENT_ID ?? 'sandbox-agent';
  if (process.env.IDP_CLIENT_SECRET) {
    return { client_id: clientId, client_secret: process.env.IDP_CLIENT_SECRET };
  }
  mkdirSync(state, { recursive: true, mode: 0o700 });
  const file = join(state, 'client.json');
  try {
    const saved = JSON.parse(readFileSync(file, 'utf8'));
    if (saved.client_id === clientId && typeof saved.client_secret === 'string') return saved;
  } catch (e) {
    if (e.code !== 'ENOENT') fail(`${file} is unreadable: ${e.message}`);
  }
  const fresh = { client_id: clientId, client_secret: randomBytes(32).toString('base64url') };
  writeFileSync(file, `${JSON.stringify(fresh)}\n`, { mode: 0o600 });
  return fresh;
}

// RFC 7638 thumbprint of a P-256 public key: the required members in lexicographic order.
const thumbprint = ({ crv, kty, x, y }) =>
  createHash('sha256').update(JSON.stringify({ crv, kty, x, y })).digest('base64url');

function newSigningKey() {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: thumbprint(jwk), alg: 'ES256', use: 'sig' };
}

const client = clientCredentials();

// One provider for a key list; keys[0] signs.
function provider(keys) {
  const signingKid = keys[0].kid;
  const p = new Provider(issuer, {
    clients: [{
      client_id: client.client_id,
      client_secret: client.client_secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    // Every key is ES256; the default (RS256) would make the client's metadata invalid.
    clientDefaults: { id_token_signed_response_alg: 'ES256' },
    jwks: { keys },
    ttl: { ClientCredentials: 300 },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Only the resources this client was given; a JWT access token whose aud is the
        // resource (the default audience), signed ES256 by the current key.
        async getResourceServerInfo(ctx, resourceIndicator, c) {
          if (c.clientId !== client.client_id || !resources.has(resourceIndicator)) {
            throw new errors.InvalidTarget();
          }
          return {
            scope,
            accessTokenFormat: 'jwt',
            accessTokenTTL: 300,
            jwt: { sign: { alg: 'ES256', kid: signingKid } },
          };
        },
      },
    },
  });
  // The cause of a refused grant or a server error, never the request that carried it.
  p.on('grant.error', (_ctx, err) => console.log(`idp: grant refused: ${err.error ?? err.name}: ${err.error_description ?? err.message}`));
  p.on('server_error', (_ctx, err) => console.log(`idp: server error: ${err.message}`));
  return p;
}

let keys = [newSigningKey()];
let handler = provider(keys).callback();
const server = createServer(
  { cert: readFileSync(join(certs, 'server.pem')), key: readFileSync(join(certs, 'server.key')) },
  (req, res) => handler(req, res),
);
server.listen(port, '127.0.0.1', () => {
  console.log(`idp: ${issuer} ready; client ${client.client_id}; resources ${[...resources].join(' ')}; signing kid ${keys[0].kid}`);
});

process.on('SIGUSR2', () => {
  // A request in flight finishes with the provider it started on; the next one gets the new.
  keys = [newSigningKey(), keys[0]];
  handler = provider(keys).callback();
  console.log(`idp: rotated; signing kid ${keys[0].kid}; published ${keys.map((k) => k.kid).join(' ')}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
