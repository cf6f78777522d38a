// Headless Chromium for the browser tests: the system's chromium (Debian's package), driven by
// playwright-core through executablePath; never a downloaded browser.

import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const CANDIDATES = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/lib/chromium/chromium', '/usr/bin/google-chrome'];

/** The Chromium executable: $CHROMIUM_PATH, else the first system install found; null if none. */
export function chromiumPath() {
  if (process.env.CHROMIUM_PATH) return process.env.CHROMIUM_PATH;
  return CANDIDATES.find((p) => existsSync(p)) ?? null;
}

export const NO_CHROMIUM = 'no Chromium found: install Debian\'s chromium (apt-get install -y chromium) or set CHROMIUM_PATH';

/**
 * Launch headless Chromium with a fresh profile; returns {browser, close}.
 */
export async function launchChromium() {
  const exe = chromiumPath();
  if (!exe) throw new Error(NO_CHROMIUM);
  const { chromium } = await import('playwright-core');
  const profile = mkdtempSync(path.join(os.tmpdir(), 'dualrate-js-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: exe,
    headless: true,
    deviceScaleFactor: 1,
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  return {
    context,
    async newPage() {
      const page = await context.newPage();
      page.on('pageerror', (err) => console.error(`[page error] ${err.message}`));
      page.on('console', (msg) => {
        // 404s are the bad-bundle tests' own missing files; those tests assert the errors themselves
        if (msg.type() === 'error' && !/status of 404/.test(msg.text())) console.error(`[console] ${msg.text()}`);
      });
      return page;
    },
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
