// What the browser tests (page.mjs, page-auth.mjs) share: failing with a message, launching
// headless Chromium, and collecting what the page reports as going wrong.
import { chromium } from 'playwright-core';

export class Failure extends Error {}
export function fail(message) {
  throw new Failure(message);
}
export function exitWith(message) {
  console.error(`page test FAILED: ${message}`);
  process.exit(1);
}

export function launch(executablePath) {
  return chromium.launch({
    executablePath,
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
}

// Pushes onto `problems` every page error, failed request and console error, except the
// console errors `expected(text, url)` accepts (Chromium reports every non-2xx answer to
// fetch on the console).
export function collectProblems(page, problems, expected = () => false) {
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const url = m.location()?.url ?? '';
    if (expected(m.text(), url)) return;
    problems.push(`console error: ${m.text()} (${url})`);
  });
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`));
}
