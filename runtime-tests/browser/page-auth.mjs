// Drives the page (GET /) in headless Chromium as a user holding an API key, against a host
// started with auth=api_key, an admin token and policies={"kinds": {"default": ["1/60s"],
// "email": ["2/10s"]}} (runtime-tests/tests/e2e/page.rs): without a token the page says the
// overview needs one; with the key in "Token or key" it shows the user's own view (the
// overview is the admin's). A task submitted with the user id empty is the key's user's: it
// runs at once and appears in "my tasks", the user is watched; a second one waits for the
// 60 s window, is cancelled from "my tasks", and the user's lanes (one row per kind) follow.
// Every request the page makes carries the key, and no POST names a user. Then a key that is
// not the one issued: the page shows the 401's detail. By hand:
//   BASE_URL=http://127.0.0.1:3000 KEY=tk_… USER_ID=alice node runtime-tests/browser/page-auth.mjs
// Exits non-zero with a message on any failure.
import { Failure, collectProblems, exitWith, fail, launch } from './lib.mjs';

const BASE_URL = (process.env.BASE_URL || '').replace(/\/+$/, '');
const KEY = process.env.KEY || '';
const USER = process.env.USER_ID || '';
const SCREENSHOT = process.env.SCREENSHOT || '';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// The issued key with its last character changed: the right shape, but not a key Redis holds.
const BAD_KEY = KEY.slice(0, -1) + (KEY.endsWith('0') ? '1' : '0');
const UNKNOWN_KEY = 'the key is unknown or revoked';

if (!BASE_URL) exitWith('set BASE_URL, e.g. BASE_URL=http://127.0.0.1:3000');
if (!KEY || !USER) exitWith('set KEY to an API key and USER_ID to its user');

async function api(path, key = KEY) {
  const res = await fetch(`${BASE_URL}${path}`, { headers: { Authorization: `Bearer ${key}` } });
  const text = await res.text();
  if (res.status !== 200) fail(`GET ${path} answered ${res.status}: ${text}`);
  return JSON.parse(text);
}

const watchdog = setTimeout(() => exitWith('did not finish within 90 s'), 90_000);

let browser;
let failure = null;
const problems = [];
const requests = [];
let step = 'launching Chromium';
// 401s are expected: the overview refuses a user's key (and no key at all), and every route
// refuses the bad key once it is typed.
let badKeyTyped = false;
const expected = (text, url) => text.includes('status of 401') &&
  (url.includes('/api/v1/overview') || (badKeyTyped && /\/api\/v1\/(task|users)\b/.test(url)));
try {
  browser = await launch(CHROMIUM);
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  page.setDefaultTimeout(10_000);
  collectProblems(page, problems, expected);
  page.on('request', (r) => { if (new URL(r.url()).pathname.startsWith('/api/')) requests.push(r); });
  const text = (id) => page.locator(`#${id}`).textContent();
  const myRow = (id) => `#my-tasks tr[data-task-id="${id}"]`;
  const laneRow = (kind) => `#lanes tr[data-kind="${kind}"]`;

  step = `opening ${BASE_URL}/`;
  const response = await page.goto(`${BASE_URL}/`, { waitUntil: 'load', timeout: 15_000 });
  if (!response || response.status() !== 200) fail(`GET / answered ${response?.status()}`);

  step = 'waiting for the page to say the overview needs a token';
  await page.waitForFunction(() => (document.getElementById('status')?.textContent ?? '').startsWith('401: this server needs the admin token'));
  const label = await page.locator('label[for="token"]').textContent();
  if (label !== 'Token or key') fail(`the token field is labelled ${JSON.stringify(label)}`);

  step = 'typing the key: the page turns to the user\'s own view';
  const fromKey = requests.length;
  await page.fill('#token', KEY);
  await page.waitForFunction(() => document.getElementById('status')?.textContent === 'your own view: the overview is the admin\'s' &&
    !document.getElementById('mine')?.hidden && document.getElementById('totals')?.hidden && document.getElementById('overview-tables')?.hidden);

  step = 'submitting with the user id empty';
  if ((await page.inputValue('#user-id')) !== '') fail('the user id field is not empty');
  await page.click('#submit');
  await page.waitForFunction(() => /^completed at \d\d:\d\d:\d\d\.\d{3}$/.test(document.getElementById('result')?.textContent ?? ''));
  const firstId = await page.locator('#my-tasks tr[data-task-id]').first().getAttribute('data-task-id');
  if (!firstId) fail('no task in "my tasks" after the first submission');

  step = 'waiting for the task in "my tasks" and the user watched';
  await page.waitForFunction(
    ([sel, user]) => document.querySelector(`${sel} td.status`)?.textContent === 'completed' &&
      /^\d\d:\d\d:\d\d\.\d{3}$/.test(document.querySelector(`${sel} td.completed-at`)?.textContent ?? '') &&
      !document.querySelector(`${sel} button.cancel`) &&
      document.getElementById('watched')?.textContent === user &&
      document.getElementById('status')?.textContent === 'live · your own view',
    [myRow(firstId), USER],
  );

  step = 'submitting a second task (it waits for the 60 s window)';
  await page.click('#submit');
  await page.waitForFunction(() => /^queued, slot \d\d:\d\d:\d\d\.\d{3}, position 1$/.test(document.getElementById('result')?.textContent ?? ''));
  await page.waitForFunction(() => document.querySelectorAll('#my-tasks tr[data-task-id]').length === 2);
  const secondId = await page.locator('#my-tasks tr[data-task-id]').first().getAttribute('data-task-id');
  if (!secondId || secondId === firstId) fail(`"my tasks" does not list the second task first: ${secondId}`);

  step = 'waiting for the second task queued (with a cancel button) and the user\'s lanes';
  await page.waitForFunction(
    ([sel, def, email]) => document.querySelector(`${sel} td.status`)?.textContent === 'queued' &&
      !!document.querySelector(`${sel} button.cancel`) &&
      document.querySelector(`${def} td.queued`)?.textContent === '1' &&
      /^\d\d:\d\d:\d\d\.\d{3} \(in \d+\.\d s\)$/.test(document.querySelector(`${def} td.next-task`)?.textContent ?? '') &&
      /^0 of 1 left per 60 s \(more in \d+ s\)$/.test(document.querySelector(`${def} td.remaining`)?.textContent ?? '') &&
      document.querySelector(`${email} td.queued`)?.textContent === '0' &&
      document.querySelector(`${email} td.remaining`)?.textContent === '2 of 2 left per 10 s',
    [myRow(secondId), laneRow('default'), laneRow('email')],
  );
  const kinds = await page.locator('#lanes tr[data-kind]').evaluateAll((rows) => rows.map((r) => r.dataset.kind));
  if (kinds.join() !== 'default,email') fail(`the lanes shown are ${JSON.stringify(kinds)}`);
  const head = await text('limits-head');
  if (head !== '1 per 60 s (default)') fail(`the header says the limits are ${JSON.stringify(head)}`);
  if (SCREENSHOT) {
    step = 'saving the screenshot';
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
  }

  step = 'cancelling the second task from "my tasks"';
  await page.click(`${myRow(secondId)} button.cancel`);
  await page.waitForFunction(
    ([sel, id, def]) => (document.getElementById('my-result')?.textContent ?? '').startsWith(`cancelled task ${id}`) &&
      document.querySelector(`${sel} td.status`)?.textContent === 'cancelled' &&
      !document.querySelector(`${sel} button.cancel`) &&
      document.querySelector(`${def} td.queued`)?.textContent === '0' &&
      document.querySelector(`${def} td.next-task`)?.textContent === '–',
    [myRow(secondId), secondId, laneRow('default')],
  );

  step = 'checking the tasks and the lanes through the API, with the key';
  const [first, second] = [await api(`/api/v1/task/${firstId}`), await api(`/api/v1/task/${secondId}`)];
  if (first.status !== 'completed' || first.user_id !== USER) fail(`the first task is ${JSON.stringify(first)}`);
  if (second.status !== 'cancelled' || second.user_id !== USER) fail(`the second task is ${JSON.stringify(second)}`);
  const state = await api(`/api/v1/users/${encodeURIComponent(USER)}`);
  if (state.kinds?.default?.queued !== 0 || state.kinds.default.recent_completions?.length !== 1) {
    fail(`the API says the user's default lane is ${JSON.stringify(state.kinds?.default)}`);
  }

  step = 'checking the requests the page made with the key';
  // (A poll that went out as the key was being typed went without it.)
  const withKey = [];
  for (const r of requests.slice(fromKey)) {
    const auth = (await r.allHeaders()).authorization;
    if (auth === undefined && withKey.length === 0 && new URL(r.url()).pathname === '/api/v1/overview') continue;
    if (auth !== `Bearer ${KEY}`) fail(`${r.method()} ${r.url()} was sent with Authorization ${JSON.stringify(auth)}`);
    withKey.push(r);
  }
  const posts = withKey.filter((r) => r.method() === 'POST');
  if (posts.length !== 2 || posts.some((r) => JSON.parse(r.postData() ?? '{}').user_id !== undefined)) {
    fail(`expected 2 POSTs naming no user, got ${JSON.stringify(posts.map((r) => r.postData()))}`);
  }
  const routes = new Set();
  for (const r of withKey) {
    routes.add(`${r.method()} ${new URL(r.url()).pathname.replace(/[0-9a-f]{24}$/, '{id}').replace(USER, '{user}')}`);
  }
  const wanted = ['GET /api/v1/overview', 'POST /api/v1/task', 'GET /api/v1/users/{user}', 'GET /api/v1/task/{id}', 'DELETE /api/v1/task/{id}'];
  if (!wanted.every((w) => routes.has(w))) fail(`the page's requests with the key were ${JSON.stringify([...routes])}`);
  const overviews = withKey.filter((r) => new URL(r.url()).pathname === '/api/v1/overview').length;
  if (overviews !== 1) fail(`the page asked for the overview ${overviews} times with a user's key (once says it is not the admin's)`);

  step = 'typing a bad key: the page shows the 401\'s detail';
  badKeyTyped = true;
  await page.fill('#token', BAD_KEY);
  await page.waitForFunction(
    (says) => (document.getElementById('status')?.textContent ?? '') === `error 401: Authentication required — ${says}` &&
      (document.getElementById('lanes')?.textContent ?? '').includes(says),
    UNKNOWN_KEY,
  );
  await page.click('#submit');
  await page.waitForFunction(
    (says) => document.getElementById('result')?.textContent === `error 401: Authentication required — ${says}`,
    UNKNOWN_KEY,
  );
  await page.waitForFunction(
    (says) => { const rows = [...document.querySelectorAll('#my-tasks tr[data-task-id]')];
      return rows.length === 2 && rows.every((r) => (r.textContent ?? '').includes(says)); },
    UNKNOWN_KEY,
  );

  if (problems.length) fail(`the page reported errors:\n  ${problems.join('\n  ')}`);
  console.log(`page auth test passed: with ${USER}'s key, task ${firstId} ran and ${secondId} was cancelled from "my tasks", ` +
    `lanes ${kinds.join(', ')} shown, ${withKey.length} requests all with the key; a bad key shows "${UNKNOWN_KEY}"`);
} catch (e) {
  const extra = problems.length ? `\n  ${problems.join('\n  ')}` : '';
  failure = (e instanceof Failure ? e.message : `while ${step}: ${e.message}`) + extra;
} finally {
  if (browser) await browser.close().catch(() => {});
  clearTimeout(watchdog);
}
if (failure) exitWith(failure);
