// Drives the app's page (GET /) in headless Chromium as a person would: submit 5 tasks with a
// payload for one user, see them queued (with their payloads) on the timeline and in the
// queued list, cancel one with its button, see the others complete one second apart and the
// cancelled one never (checked through the API too), and save a screenshot. Run by runtime-tests/tests/page.rs; by hand:
//   BASE_URL=http://127.0.0.1:3000 SCREENSHOT=/tmp/page.png node runtime-tests/browser/page.mjs
// Exits non-zero with a message on any failure.
import { chromium } from 'playwright-core';

const BASE_URL = (process.env.BASE_URL || '').replace(/\/+$/, '');
const SCREENSHOT = process.env.SCREENSHOT || '';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const USER = 'browser-user';
// Typed into the payload box as a person might (spaces and all).
const PAYLOAD = '{"job": "resize", "image": "cat.png", "width": 640}';
// A user id that must come out as text, never as markup.
const NASTY = `<img src=x onerror="window.__xss=1">'"<script>window.__xss=2</script> 😀`;

class Failure extends Error {}
function fail(message) {
  throw new Failure(message);
}
function exitWith(message) {
  console.error(`page test FAILED: ${message}`);
  process.exit(1);
}

if (!BASE_URL) exitWith('set BASE_URL, e.g. BASE_URL=http://127.0.0.1:3000');
if (!SCREENSHOT) exitWith('set SCREENSHOT to the output path of the screenshot');

// Nothing here may hang forever.
const watchdog = setTimeout(() => exitWith(`did not finish within 90 s`), 90_000);

let browser;
let failure = null;
const problems = [];
let step = 'launching Chromium';
try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  page.setDefaultTimeout(10_000);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()} (${m.location()?.url ?? ''})`); });
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`));

  step = `opening ${BASE_URL}/`;
  const response = await page.goto(`${BASE_URL}/`, { waitUntil: 'load', timeout: 15_000 });
  if (!response || response.status() !== 200) fail(`GET / answered ${response?.status()}`);

  step = 'waiting for the first overview poll (#status "live")';
  await page.waitForFunction(() => document.getElementById('status')?.textContent === 'live');

  step = 'submitting a payload that is not JSON';
  await page.fill('#user-id', USER);
  await page.fill('#payload', '{not json');
  await page.click('#submit');
  await page.waitForFunction(() => (document.getElementById('result')?.textContent ?? '').startsWith('the payload is not JSON'));

  step = 'submitting 5 tasks with a payload';
  await page.fill('#payload', PAYLOAD);
  await page.click('#submit-5');
  await page.waitForFunction(() => document.querySelectorAll('#result li').length === 5);
  const answers = await page.locator('#result li').allTextContents();
  const completed = answers.filter((a) => a.startsWith('completed at ')).length;
  const queued = answers.filter((a) => /^queued, slot \d\d:\d\d:\d\d\.\d{3}, position \d+$/.test(a)).length;
  if (completed + queued !== 5 || queued < 4) fail(`unexpected answers to 5 submissions: ${JSON.stringify(answers)}`);

  step = 'waiting for queued marks on the timeline';
  await page.waitForFunction(() => document.querySelectorAll('#timeline .queued').length >= 1);

  step = 'waiting for the queued tasks with their payloads in #queued-list';
  const shown = JSON.stringify(JSON.parse(PAYLOAD));
  await page.waitForFunction(
    (text) => { const rows = [...document.querySelectorAll('#queued-list tr[data-task-id]')];
      return rows.length >= 3 && rows.every((r) => r.querySelector('td.payload')?.textContent === text); },
    shown,
  );

  step = 'cancelling the last queued task';
  const victim = await page.locator('#queued-list tr[data-task-id]').last().getAttribute('data-task-id');
  if (!victim) fail('the queued rows carry no task id');
  await page.click(`#queued-list tr[data-task-id="${victim}"] button.cancel`);
  await page.waitForFunction(
    (id) => (document.getElementById('cancel-result')?.textContent ?? '').startsWith(`cancelled task ${id}`) &&
      !document.querySelector(`#queued-list tr[data-task-id="${id}"]`),
    victim,
  );
  // The screenshot shows the queue with its payloads and cancel buttons, and the cancel.
  step = 'saving the screenshot';
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  const record = await (await fetch(`${BASE_URL}/api/v1/task/${victim}`)).json();
  if (record.status !== 'cancelled') fail(`the API says task ${victim} is ${JSON.stringify(record)} after the cancel`);

  step = 'waiting for 3 completions on the timeline and the user in #recent';
  await page.waitForFunction(
    (user) => document.querySelectorAll('#timeline .done').length >= 3 &&
      (document.querySelector('#recent')?.textContent ?? '').includes(user),
    USER,
    { timeout: 15_000 },
  );

  step = 'waiting for the user\'s queue to empty on the page (then nothing more can run)';
  await page.waitForFunction(
    (text) => !document.querySelector('#queued-list tr[data-task-id]') &&
      [...document.querySelectorAll('#recent td.payload')].some((td) => td.textContent === text),
    shown,
    { timeout: 15_000 },
  );
  const state = await (await fetch(`${BASE_URL}/api/v1/users/${encodeURIComponent(USER)}`)).json();
  if (state.queued !== 0) fail(`the page shows no queued task but the API says ${JSON.stringify(state)}`);
  const log = await (await fetch(`${BASE_URL}/api/v1/log`, { headers: { Accept: 'application/x-ndjson' } })).text();
  const ran = log.split('\n').filter((l) => l).map((l) => JSON.parse(l)).filter((e) => e.user_id === USER);
  if (ran.some((e) => e.task_id === victim)) fail(`the cancelled task ${victim} ran`);
  if (ran.length !== 4 || !ran.every((e) => JSON.stringify(e.payload) === shown)) {
    fail(`expected the 4 other tasks in the log with their payloads, got ${JSON.stringify(ran)}`);
  }

  step = 'checking the limits line';
  const check = await page.locator('#limits-check').textContent();
  if (!/max in any 1 s: 1 \(limit 1\)/.test(check ?? '')) fail(`limits line does not say 1 per second: ${JSON.stringify(check)}`);
  if (!/max in any 60 s: \d+ \(limit 20\)/.test(check ?? '')) fail(`limits line lacks the 60 s count: ${JSON.stringify(check)}`);
  const status = await page.locator('#status').textContent();
  if (status !== 'live') fail(`#status is ${JSON.stringify(status)}, not "live"`);

  step = 'submitting a user id made of markup';
  await page.fill('#user-id', NASTY);
  await page.click('#submit');
  await page.waitForFunction(
    (user) => document.querySelectorAll('#timeline .done').length >= 1 &&
      document.getElementById('watched')?.textContent === user &&
      [...document.querySelectorAll('#recent td.user')].some((td) => td.textContent === user),
    NASTY,
  );
  const injected = await page.evaluate(() => ({
    xss: window.__xss,
    imgs: document.querySelectorAll('main img').length,
    scripts: document.querySelectorAll('main script').length,
  }));
  if (injected.xss !== undefined || injected.imgs || injected.scripts) {
    fail(`a user id was inserted as markup: ${JSON.stringify(injected)}`);
  }

  if (problems.length) fail(`the page reported errors:\n  ${problems.join('\n  ')}`);
  console.log(`page test passed: 5 tasks for ${USER} (${completed} ran inline, ${queued} queued, 1 cancelled), ` +
    `${check}; markup in user ids stays text; screenshot ${SCREENSHOT}`);
} catch (e) {
  const extra = problems.length ? `\n  ${problems.join('\n  ')}` : '';
  failure = (e instanceof Failure ? e.message : `while ${step}: ${e.message}`) + extra;
} finally {
  if (browser) await browser.close().catch(() => {});
  clearTimeout(watchdog);
}
if (failure) exitWith(failure);
