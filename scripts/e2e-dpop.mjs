// DPoP (RFC 9449) end to end with a client nobody here wrote: panva's `dpop` package (the
// reference JavaScript implementation, pinned in scripts/e2e/package.json) makes the key pair and
// every proof; this file only sends them. Run by scripts/e2e-dpop.sh, which starts toolgate and
// `toolgate gateway` in front of an MCP server and registers TOOL with sender_constraint "dpop".
//
// usage: node scripts/e2e-dpop.mjs TOOLGATE_URL GATEWAY_MCP_URL SUBJECT_TOKEN AUDIENCE TOOL MODE
//   MODE nonce     toolgate and the gateway run with --dpop-nonce: the first proof each sees is
//                  answered use_dpop_nonce with a DPoP-Nonce header, the retry carries it
//   MODE no-nonce  neither asks for nonces: the first proof is accepted as it is
// Prints PASS/FAIL lines; exits 1 if any expectation fails.
//   1. the exchange of SUBJECT_TOKEN for AUDIENCE with a proof (htm POST, htu the token_endpoint
//      of toolgate's RFC 8414 metadata) gives token_type DPoP and cnf.jkt = the key's RFC 7638
//      thumbprint (also with RS256, PS256 and Ed25519 keys; the last signed alg Ed25519, RFC 9864); without a proof it is refused;
//   2. initialize, then tools/call TOOL through the gateway with `Authorization: DPoP` and a
//      fresh proof carrying ath for every request: 200 and the tool's answer;
//   3. the same tools/call with its proof replayed, the token sent as Bearer, and a fresh proof
//      from another key: each 401 with a `WWW-Authenticate: DPoP` challenge.
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

// Installed by scripts/e2e-dpop.sh (`npm ci --prefix scripts/e2e`): resolved from there.
const fromE2e = createRequire(new URL('./e2e/package.json', import.meta.url));
const { generateKeyPair, generateProof, calculateThumbprint } = await import(
  pathToFileURL(fromE2e.resolve('dpop')).href
);
const dpopVersion = fromE2e('dpop/package.json').version;

const [TOOLGATE, GATEWAY, SUBJECT, AUDIENCE, TOOL, MODE] = process.argv.slice(2);
if (!TOOL || !['nonce', 'no-nonce'].includes(MODE)) {
  console.error('usage: node scripts/e2e-dpop.mjs TOOLGATE_URL GATEWAY_MCP_URL SUBJECT_TOKEN AUDIENCE TOOL nonce|no-nonce');
  process.exit(2);
}
const NONCES = MODE === 'nonce';
console.log(`panva dpop ${dpopVersion}, node ${process.version}, ${MODE}`);

let failures = 0;
function check(name, ok, detail) {
  console.log(`${ok ? 'PASS' : 'FAIL'} ${name}${detail ? `: ${detail}` : ''}`);
  if (!ok) failures += 1;
  return ok;
}
const claimsOf = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
const challengeOf = (resp) => resp.headers.get('www-authenticate') ?? '';
// Headers.get joins several WWW-Authenticate values with ", ": find the DPoP one's error.
const dpopError = (resp) => /(?:^|,\s*)DPoP\s+error="([^"]+)"/.exec(challengeOf(resp))?.[1];

// The last nonce each server handed out (RFC 9449 §8: every server has its own).
const nonces = new Map();
function remember(url, resp) {
  const n = resp.headers.get('dpop-nonce');
  if (n) nonces.set(new URL(url).origin, n);
}

// --- 1. the token endpoint --------------------------------------------------------------------
const meta = await (await fetch(`${TOOLGATE}/.well-known/oauth-authorization-server`)).json();
const tokenEndpoint = meta.token_endpoint;
check('RFC 8414 metadata names the token endpoint and ES256 for proofs',
  typeof tokenEndpoint === 'string' && (meta.dpop_signing_alg_values_supported ?? []).includes('ES256'),
  `${tokenEndpoint} ${JSON.stringify(meta.dpop_signing_alg_values_supported)}`);

const form = new URLSearchParams({
  grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
  subject_token: SUBJECT,
  subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
  audience: AUDIENCE,
});
const postToken = (proof) => fetch(tokenEndpoint, {
  method: 'POST',
  headers: { 'Content-Type': 'application/x-www-form-urlencoded', ...(proof ? { DPoP: proof } : {}) },
  body: form,
});

// Exchange with a proof of `keypair`. In nonce mode, a client that knows no nonce yet must be
// answered use_dpop_nonce with one; it retries once with it (as after a rotation).
async function exchange(keypair, label) {
  const origin = new URL(tokenEndpoint).origin;
  const knew = nonces.has(origin);
  let proof = await generateProof(keypair, tokenEndpoint, 'POST', nonces.get(origin));
  let resp = await postToken(proof);
  remember(tokenEndpoint, resp);
  if (resp.status === 400 && resp.headers.has('dpop-nonce')) {
    const body = await resp.json();
    check(`${label}: the first proof (no nonce) is answered 400 use_dpop_nonce with a DPoP-Nonce header`,
      NONCES && body.error === 'use_dpop_nonce', `${resp.status} ${body.error}`);
    proof = await generateProof(keypair, tokenEndpoint, 'POST', nonces.get(origin));
    resp = await postToken(proof);
    remember(tokenEndpoint, resp);
  } else if (NONCES && !knew) {
    check(`${label}: the first proof (no nonce) is answered 400 use_dpop_nonce with a DPoP-Nonce header`, false, `${resp.status}`);
  }
  const body = await resp.json();
  if (!check(`${label}: the exchange with a proof succeeds`, resp.status === 200, `${resp.status} ${body.error ?? ''} ${body.error_description ?? ''}`)) {
    return null;
  }
  const jkt = await calculateThumbprint(keypair.publicKey);
  const cnf = claimsOf(body.access_token).cnf ?? {};
  check(`${label}: token_type DPoP, cnf.jkt the key's RFC 7638 thumbprint`,
    body.token_type === 'DPoP' && cnf.jkt === jkt, `token_type ${body.token_type}, cnf.jkt ${cnf.jkt === jkt ? '= thumbprint' : `${cnf.jkt} != ${jkt}`}`);
  spentAtExchange = proof;
  return body.access_token;
}
let spentAtExchange;

const key = await generateKeyPair('ES256');
const token = await exchange(key, 'ES256');
for (const alg of ['RS256', 'PS256', 'Ed25519']) await exchange(await generateKeyPair(alg), alg);
{
  const resp = await postToken(spentAtExchange);
  const body = await resp.json();
  check('an exchange proof replayed is refused', resp.status === 400 && body.error === 'invalid_dpop_proof',
    `${resp.status} ${body.error}: ${body.error_description}`);
}
{
  const resp = await postToken(undefined);
  const body = await resp.json();
  check('the exchange for a DPoP-only tool without a proof is refused',
    resp.status === 400 && body.error === 'invalid_dpop_proof', `${resp.status} ${body.error}: ${body.error_description}`);
}
if (!token) {
  console.log('no DPoP-bound token: the gateway part cannot run');
  process.exit(1);
}

// --- 2. through the gateway ---------------------------------------------------------------------
// One MCP Streamable HTTP session by hand (JSON-RPC over POST, answers as JSON or SSE).
let session;
let protocolVersion;
let nextId = 1;
const mcpHeaders = (authorization, proof) => ({
  'Content-Type': 'application/json',
  Accept: 'application/json, text/event-stream',
  Authorization: authorization,
  ...(proof ? { DPoP: proof } : {}),
  ...(session ? { 'Mcp-Session-Id': session } : {}),
  ...(protocolVersion ? { 'Mcp-Protocol-Version': protocolVersion } : {}),
});
const send = (headers, body) => fetch(GATEWAY, { method: 'POST', headers, body });
// htu is the URL without query and fragment (panva's generateProof takes it as given).
const htu = (() => { const u = new URL(GATEWAY); u.search = ''; u.hash = ''; return u.href; })();
const gatewayProof = (keypair) => generateProof(keypair, htu, 'POST', nonces.get(new URL(GATEWAY).origin), token);

// The JSON-RPC answer of a 200: its JSON body, or the last `data:` event of its SSE stream.
async function rpcAnswer(resp) {
  const text = await resp.text();
  if ((resp.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
    const data = text.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim());
    return data.length ? JSON.parse(data[data.length - 1]) : null;
  }
  return text ? JSON.parse(text) : null;
}

// Send one message with a fresh proof. In nonce mode, the first proof (no nonce known yet) must
// be answered 401 use_dpop_nonce with the gateway's own nonce; the retry carries it. Returns the
// response, the proof it went with and the body.
async function dpopCall(message, label) {
  const body = JSON.stringify(message);
  const knew = nonces.has(new URL(GATEWAY).origin);
  let proof = await gatewayProof(key);
  let resp = await send(mcpHeaders(`DPoP ${token}`, proof), body);
  remember(GATEWAY, resp);
  if (resp.status === 401 && dpopError(resp) === 'use_dpop_nonce') {
    await resp.arrayBuffer();
    check(`${label}: a proof without the gateway's nonce is answered 401 use_dpop_nonce with a DPoP-Nonce header`,
      NONCES && resp.headers.has('dpop-nonce'), challengeOf(resp));
    proof = await gatewayProof(key);
    resp = await send(mcpHeaders(`DPoP ${token}`, proof), body);
    remember(GATEWAY, resp);
  } else if (NONCES && !knew) {
    check(`${label}: a proof without the gateway's nonce is answered 401 use_dpop_nonce with a DPoP-Nonce header`,
      false, `${resp.status} ${challengeOf(resp)}`);
  }
  return { resp, proof, body };
}

const init = await dpopCall({
  jsonrpc: '2.0', id: nextId++, method: 'initialize',
  params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'e2e-dpop.mjs', version: dpopVersion } },
}, 'initialize');
const initAnswer = init.resp.status === 200 ? await rpcAnswer(init.resp) : null;
session = init.resp.headers.get('mcp-session-id') ?? undefined;
protocolVersion = initAnswer?.result?.protocolVersion;
check('initialize through the gateway with Authorization: DPoP and a proof', init.resp.status === 200 && !!protocolVersion,
  `${init.resp.status} ${challengeOf(init.resp)}`);

const initialized = await dpopCall({ jsonrpc: '2.0', method: 'notifications/initialized' }, 'notifications/initialized');
check('notifications/initialized with a fresh proof', initialized.resp.status === 202 || initialized.resp.status === 200,
  `${initialized.resp.status} ${challengeOf(initialized.resp)}`);

const callMessage = { jsonrpc: '2.0', id: nextId++, method: 'tools/call', params: { name: TOOL, arguments: { query: 'dpop' } } };
const call = await dpopCall(callMessage, 'tools/call');
const callAnswer = call.resp.status === 200 ? await rpcAnswer(call.resp) : null;
const text = (callAnswer?.result?.content ?? []).map((c) => c.text ?? '').join(' ');
check(`tools/call ${TOOL} with a fresh proof carrying ath: 200`, call.resp.status === 200 && !callAnswer?.result?.isError && text !== '',
  `${call.resp.status} ${text || challengeOf(call.resp)}`);
check('the proof carried ath and, in nonce mode, the nonce',
  !!claimsOf(call.proof).ath && (!NONCES || !!claimsOf(call.proof).nonce));

// --- 3. what a thief can do with the token ------------------------------------------------------
async function refused(label, headers, body) {
  const resp = await send(headers, body);
  await resp.arrayBuffer();
  const error = dpopError(resp);
  check(label, resp.status === 401 && error !== undefined, `${resp.status} ${challengeOf(resp)}`);
  return error;
}
const replay = await refused('the same tools/call with its proof replayed: 401 with a DPoP challenge',
  mcpHeaders(`DPoP ${token}`, call.proof), call.body);
check('  ... the replay is an invalid_dpop_proof', replay === 'invalid_dpop_proof', replay);
const bearer = await refused('the token presented as Bearer (no proof): 401 with a DPoP challenge',
  mcpHeaders(`Bearer ${token}`, undefined), call.body);
check('  ... the Bearer presentation is an invalid_token', bearer === 'invalid_token', bearer);
const other = await refused('the token with a fresh proof from another key: 401 with a DPoP challenge',
  mcpHeaders(`DPoP ${token}`, await gatewayProof(await generateKeyPair('ES256'))), call.body);
check('  ... another key is an invalid_dpop_proof', other === 'invalid_dpop_proof', other);

// The session is still good for the key's holder after all that.
const again = await dpopCall({ ...callMessage, id: nextId++ }, 'tools/call again');
check('a new proof from the key still calls the tool', again.resp.status === 200, `${again.resp.status} ${challengeOf(again.resp)}`);
await again.resp.arrayBuffer();

if (failures) {
  console.log(`e2e-dpop.mjs: ${failures} expectation(s) failed`);
  process.exit(1);
}
console.log('e2e-dpop.mjs: all expectations met');
