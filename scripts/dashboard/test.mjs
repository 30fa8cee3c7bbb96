// Real-browser test of toolgate's /dashboard, driven by scripts/dashboard-test.sh.
//   TOOLGATE_URL   the dev daemon, already holding one allow and one audience denial
//   DENY_TOKEN     a token for code-search; verifying it on sql-admin makes one more denial
//   SCREENSHOT     where to save the MCP Security tab (default: screenshot.png next to this file)
//   CHROMIUM       the browser (default /usr/bin/chromium)
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.TOOLGATE_URL || '').replace(/\/$/, '');
const DENY_TOKEN = process.env.DENY_TOKEN || '';
const SHOT = process.env.SCREENSHOT || join(here, 'screenshot.png');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
if (!BASE || !DENY_TOKEN) {
  console.error('usage: TOOLGATE_URL=… DENY_TOKEN=… node test.mjs');
  process.exit(2);
}

let failures = 0;
function check(name, ok, detail) {
  if (ok) console.log(`PASS ${name}`);
  else { failures += 1; console.log(`FAIL ${name}${detail === undefined ? '' : ` -- ${detail}`}`); }
  return ok;
}
// Wait for a condition in the page; returns true, or false after the timeout.
async function until(page, fn, arg, timeout = 10000) {
  try { await page.waitForFunction(fn, arg, { timeout, polling: 100 }); return true; } catch (_) { return false; }
}
const textOf = (page, sel) => page.evaluate((s) => { const e = document.querySelector(s); return e ? e.textContent.trim() : null; }, sel);

// The page's console errors, uncaught exceptions, CSP violations and failed requests.
const consoleErrors = [];
const badResponses = [];

const profile = mkdtempSync(join(tmpdir(), 'toolgate-chromium-'));
let context;
try {
  // "/" redirects to the dashboard.
  const root = await fetch(BASE + '/', { redirect: 'manual' });
  check('GET / redirects to /dashboard', root.status >= 300 && root.status < 400 && root.headers.get('location') === '/dashboard',
    `${root.status} location=${root.headers.get('location')}`);

  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1440, height: 900 },
    deviceScaleFactor: 1,
    locale: 'en-US',
    timezoneId: 'UTC',
  });
  const page = context.pages()[0] || await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => consoleErrors.push(`pageerror: ${e.message}`));
  page.on('response', (r) => { if (r.status() >= 400) badResponses.push(`${r.status()} ${r.url()}`); });
  // Recorded by the browser itself, whatever the console says.
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation',
      (e) => window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'} (${e.sourceFile || ''}:${e.lineNumber || ''})`));
  });

  const resp = await page.goto(BASE + '/dashboard', { waitUntil: 'load' });
  const headers = resp ? resp.headers() : {};
  check('GET /dashboard answers 200', resp && resp.status() === 200, resp && resp.status());
  const csp = headers['content-security-policy'] || '';
  check('Content-Security-Policy header with hashed script-src', /script-src 'sha256-[^']+'/.test(csp) && /default-src 'none'/.test(csp), csp);
  check('X-Content-Type-Options: nosniff', headers['x-content-type-options'] === 'nosniff', headers['x-content-type-options']);
  check('page is in dev mode (no token prompt)',
    await page.evaluate(() => document.body.dataset.mode === 'dev' && document.getElementById('gate').hidden), '');

  // Stats rendered from /v1/stats.
  const statsReady = await until(page, () => document.getElementById('stat-verifications').textContent.trim() === '2');
  check('#stat-verifications is 2', statsReady, await textOf(page, '#stat-verifications'));
  const tools = await textOf(page, '#stat-tools');
  check('#stat-tools is 2', tools === '2', tools);
  const rate = await textOf(page, '#stat-pass-rate');
  check('#stat-pass-rate shows 50', /50/.test(rate || ''), rate);
  const revs = await textOf(page, '#stat-revocations');
  check('#stat-revocations is 1', revs === '1', revs);
  const p50 = await textOf(page, '#stat-p50');
  const p99 = await textOf(page, '#stat-p99');
  check('#stat-p50 and #stat-p99 are latencies in ms', /^\d+\.\d\d$/.test(p50 || '') && /^\d+\.\d\d$/.test(p99 || ''), `${p50} / ${p99}`);
  const aud = await textOf(page, '#denials-by-check [data-check="audience"] .count');
  check('#denials-by-check [data-check="audience"] shows 1', aud === '1', aud);
  const zeroRows = await page.evaluate(() => [...document.querySelectorAll('#denials-by-check [data-check]')]
    .filter((r) => r.querySelector('.count').textContent.trim() === '0').length);
  check('#denials-by-check lists only non-zero checks', zeroRows === 0, zeroRows);
  const toolRows = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll('#tool-table tbody tr[data-tool]')]
    .map((tr) => [tr.dataset.tool, [...tr.cells].map((c) => c.textContent.trim())])));
  check('#tool-table has a code-search row (1 call, 1 allowed, 0 denied)',
    toolRows['code-search'] && toolRows['code-search'][1] === '1' && toolRows['code-search'][2] === '1' && toolRows['code-search'][3].startsWith('0'),
    JSON.stringify(toolRows['code-search']));
  check('#tool-table has a sql-admin row (1 call, 0 allowed, 1 denied)',
    toolRows['sql-admin'] && toolRows['sql-admin'][1] === '1' && toolRows['sql-admin'][2] === '0' && toolRows['sql-admin'][3].startsWith('1'),
    JSON.stringify(toolRows['sql-admin']));

  // The feed, seeded from the audit log.
  const seeded = await until(page, () => [...document.querySelectorAll('#denial-feed .denial')]
    .some((d) => d.textContent.includes('sql-admin') && d.textContent.includes('audience')));
  const feedText = await page.evaluate(() => [...document.querySelectorAll('#denial-feed .denial')].map((d) => d.textContent).join(' | '));
  check('#denial-feed shows the sql-admin audience denial', seeded, feedText);

  // The live path: one more denial while the page stays open.
  const live = await until(page, () => document.getElementById('stream-status').textContent.trim() === 'live');
  check('#stream-status is live', live, await textOf(page, '#stream-status'));
  const before = await page.evaluate(() => document.querySelectorAll('#denial-feed .denial').length);
  const navigations = [];
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });
  await page.evaluate(() => { window.__sameDocument = true; });
  const status = execFileSync('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '-X', 'POST', BASE + '/v1/mcp/verify',
    '-H', 'Content-Type: application/json', '-d', JSON.stringify({ token: DENY_TOKEN, tool_id: 'sql-admin' })]).toString().trim();
  check('curl: the same token on sql-admin is denied (403)', status === '403', status);
  const arrived = await until(page, (n) => {
    const items = document.querySelectorAll('#denial-feed .denial');
    const top = items[0];
    return items.length === n + 1 && top && top.dataset.source === 'live'
      && top.textContent.includes('sql-admin') && top.textContent.includes('audience');
  }, before, 5000);
  check('a new live denial appears at the top of #denial-feed without reloading', arrived,
    await page.evaluate(() => [...document.querySelectorAll('#denial-feed .denial')].map((d) => `[${d.dataset.source}] ${d.textContent}`).join(' | ')));
  const three = await until(page, () => document.getElementById('stat-verifications').textContent.trim() === '3', null, 5000);
  check('#stat-verifications becomes 3', three, await textOf(page, '#stat-verifications'));
  const aud2 = await until(page, () => {
    const c = document.querySelector('#denials-by-check [data-check="audience"] .count');
    return c && c.textContent.trim() === '2';
  }, null, 5000);
  check('#denials-by-check audience becomes 2', aud2, await textOf(page, '#denials-by-check [data-check="audience"] .count'));
  check('the page was not reloaded', navigations.length === 0 && await page.evaluate(() => window.__sameDocument === true), navigations.join(', '));

  // The other tabs.
  await page.click('.tab[data-tab="tools"]');
  const toolsTab = await until(page, () => {
    const ids = [...document.querySelectorAll('#tools-table tbody tr[data-tool]')].map((r) => r.dataset.tool);
    return !document.getElementById('tab-tools').hidden && ids.includes('code-search') && ids.includes('sql-admin');
  });
  check('Tools tab lists code-search and sql-admin', toolsTab, await textOf(page, '#tools-table tbody'));
  await page.click('.tab[data-tab="revocations"]');
  const revTab = await until(page, () => !document.getElementById('tab-revocations').hidden
    && document.querySelector('#revocations-table tbody').textContent.includes('compromised-agent'));
  check('Revocations tab lists the operator revocation', revTab, await textOf(page, '#revocations-table tbody'));
  await page.click('.tab[data-tab="audit"]');
  const auditTab = await until(page, () => !document.getElementById('tab-audit').hidden
    && document.querySelectorAll('#audit-table tbody tr[data-seq]').length > 0
    && document.querySelector('#audit-table tbody').textContent.includes('sql-admin'));
  check('Audit tab shows audit rows including sql-admin', auditTab, await page.evaluate(() => document.querySelectorAll('#audit-table tbody tr').length));

  // Back to MCP Security for the screenshot, after a stats refresh and the highlight fade.
  await page.click('.tab[data-tab="security"]');
  await until(page, () => !document.getElementById('tab-security').hidden);
  await page.waitForTimeout(3000);
  await page.screenshot({ path: SHOT, fullPage: true });
  console.log(`screenshot: ${SHOT}`);

  const violations = await page.evaluate(() => window.__csp || []);
  check('no CSP violations', violations.length === 0, violations.join('; '));
  check('no console errors or uncaught exceptions', consoleErrors.length === 0, consoleErrors.join('; '));
  check('no failed HTTP responses', badResponses.length === 0, badResponses.join('; '));
} catch (e) {
  check('browser test ran to the end', false, e && e.stack ? e.stack : String(e));
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

console.log(failures ? `FAIL dashboard browser test: ${failures} failure(s)` : 'PASS dashboard browser test');
process.exit(failures ? 1 : 0);
