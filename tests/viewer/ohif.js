// Opens OHIF views in headless Chromium and reports what a reader would see.
//
// Usage: node ohif.js SPEC.json > RESULT.json
// SPEC: {"chromium": path, "userDataDir": dir, "outDir": dir, "views": [{"name", "url", "waitFor"
//        (CSS selector), "settleMs", "actions": [{"click": text} | {"clickSelector": css} |
//        {"wait": ms} | {"slice": text}]}]} ("slice": step through the images with the arrow keys until the
//        page shows the text, e.g. "I:15 (" for instance number 15); OHIF's first-visit tour is skipped.
// RESULT: [{"name", "screenshot", "console": [{"type", "text"}], "pageErrors": [...], "text" (the page's
//          innerText), "viewports": [{"x", "y", "width", "height"}] (canvas boxes, CSS pixels)}]
// playwright-core is resolved through NODE_PATH (the test points it at the cached node_modules).
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--use-angle=swiftshader',
  '--enable-unsafe-swiftshader', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run'];

async function shoot(context, spec, view) {
  const page = await context.newPage();
  const consoleMessages = [];
  const pageErrors = [];
  page.on('console', msg => consoleMessages.push({ type: msg.type(), text: msg.text() }));
  page.on('pageerror', err => pageErrors.push(String(err && err.stack || err)));
  await page.goto(view.url, { waitUntil: 'load', timeout: 60000 });
  if (view.waitFor) {
    await page.waitForSelector(view.waitFor, { state: 'visible', timeout: 60000 });
  }
  await page.waitForTimeout(1500);
  const skip = page.getByText('Skip all', { exact: true });
  if (await skip.count()) {
    await skip.first().click();
  }
  for (const action of view.actions || []) {
    if (action.click) {
      await page.getByText(action.click, { exact: true }).first().click({ timeout: 30000 });
    } else if (action.clickSelector) {
      await page.locator(action.clickSelector).first().click({ timeout: 30000 });
    } else if (action.wait) {
      await page.waitForTimeout(action.wait);
    } else if (action.slice) {
      await page.locator('canvas.cornerstone-canvas').first().hover();
      await page.mouse.wheel(0, 0);
      let found = false;
      for (const key of ['ArrowDown', 'ArrowUp']) {
        for (let i = 0; i < 64 && !found; i++) {
          found = (await page.evaluate(() => document.body.innerText)).includes(action.slice);
          if (!found) {
            await page.keyboard.press(key);
            await page.waitForTimeout(150);
          }
        }
      }
      if (!found) {
        throw new Error(`slice ${action.slice} not reached`);
      }
      await page.waitForTimeout(1000);
    }
  }
  await page.waitForTimeout(view.settleMs || 3000);
  const screenshot = path.join(spec.outDir, `${view.name}.png`);
  await page.screenshot({ path: screenshot });
  const text = await page.evaluate(() => document.body.innerText);
  const viewports = await page.evaluate(() => Array.from(document.querySelectorAll('canvas.cornerstone-canvas'))
    .map(c => c.getBoundingClientRect()).map(r => ({ x: r.x, y: r.y, width: r.width, height: r.height })));
  await page.close();
  return { name: view.name, screenshot, console: consoleMessages, pageErrors, text, viewports };
}

async function main() {
  const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const context = await chromium.launchPersistentContext(spec.userDataDir, {
    executablePath: spec.chromium, headless: true, args: FLAGS,
    viewport: { width: 1280, height: 860 }, deviceScaleFactor: 1,
  });
  const results = [];
  try {
    for (const view of spec.views) {
      try {
        results.push(await shoot(context, spec, view));
      } catch (err) {
        results.push({ name: view.name, error: String(err && err.stack || err) });
      }
    }
  } finally {
    await context.close();
  }
  process.stdout.write(JSON.stringify(results));
}

main().catch(err => { console.error(err); process.exit(1); });
