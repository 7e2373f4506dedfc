// Bundles the JS guest's Intl (guests/js/intl/entry.js, the formatjs polyfills and the CLDR data of
// the locales in locales.json) into one script: node build.mjs OUT.js. Run by the Makefile after
// `npm ci` (package-lock.json pins every package by integrity hash).
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
const config = JSON.parse(readFileSync(join(here, "locales.json"), "utf8"));
const dataDir = (pkg) => join(here, "node_modules", "@formatjs", pkg, "locale-data");
const has = (pkg, tag) => readdirSync(dataDir(pkg)).includes(`${tag}.js`);
// Every locale CLDR (as formatjs packages it) has number or date data for: a tag among them that
// the guest does not ship is refused rather than formatted as its parent.
const known = new Set();
for (const pkg of ["intl-numberformat", "intl-datetimeformat"])
    for (const f of readdirSync(dataDir(pkg))) if (f.endsWith(".js")) known.add(f.slice(0, -3));
const imports = [];
for (const tag of config.locales) {
    for (const pkg of ["intl-pluralrules", "intl-numberformat"])
        if (has(pkg, tag)) imports.push(`import "@formatjs/${pkg}/locale-data/${tag}.js";`);
        else if (pkg !== "intl-pluralrules") throw new Error(`no ${pkg} data for ${tag}`);
}

// The zones of formatjs' "golden" tz data (the guest bundles it): the date data keeps the zone
// names of these only.
const require = createRequire(join(here, "package.json"));
let tz;
globalThis.Intl = { DateTimeFormat: { __addTZData(d) { tz = d; } } };
require("@formatjs/intl-datetimeformat/add-golden-tz.js");
const zones = ["UTC", "Etc/UTC", "GMT", "Etc/GMT", ...tz.zones.map((z) => z.split("|")[0])];

// The date data, trimmed and with its skeletons parsed, by precompute.cjs in a node process
// without Intl of its own.
const tmp = mkdtempSync(join(tmpdir(), "snapcell-intl-"));
let dateData;
try {
    await build({
        stdin: { contents: 'import "@formatjs/intl-getcanonicallocales/polyfill-force.js";\n' +
            'import "@formatjs/intl-locale/polyfill-force.js";\n' +
            'import "@formatjs/intl-datetimeformat/polyfill-force.js";\n', resolveDir: here },
        bundle: true, format: "cjs", platform: "node", outfile: join(tmp, "dtf.cjs"), logLevel: "error",
    });
    writeFileSync(join(tmp, "zones.json"), JSON.stringify(zones));
    dateData = execFileSync(process.execPath, [join(here, "precompute.cjs"), join(tmp, "dtf.cjs"),
        join(tmp, "zones.json"), ...config.locales], { cwd: here, maxBuffer: 1 << 30, encoding: "utf8" })
        .trim().split("\n").map((line) => JSON.parse(line));
} finally {
    rmSync(tmp, { recursive: true, force: true });
}
const virtual = {
    "snapcell:locale-data": imports.join("\n"),
    "snapcell:date-data": `export default ${JSON.stringify(dateData)};`,
    "snapcell:config": `export const shipped = ${JSON.stringify(config.locales)};
export const collation = ${JSON.stringify(config.collation)};
export const defaultLocale = ${JSON.stringify(config.default)};
export const known = ${JSON.stringify([...known].sort().join(" "))}.split(" ");`,
};
await build({
    entryPoints: [join(here, "entry.js")],
    bundle: true,
    minify: true,
    legalComments: "none",
    format: "iife",
    target: "es2022",
    charset: "utf8",
    outfile: out,
    plugins: [{
        // ICU (so V8 and node) fits the hour field of the chosen pattern to the requested length
        // when the chosen skeleton is not an exact match (UDATPG_MATCH_HOUR_FIELD_LENGTH:
        // {hour: "numeric", minute: "2-digit"} gives 0:00 in de, not 00:00); formatjs keeps the
        // pattern's. Two lines, checked to apply exactly once.
        name: "snapcell-hour-length",
        setup(b) {
            b.onLoad({ filter: /intl-datetimeformat[\\/]polyfill-force\.js$/ }, (a) => {
                let src = readFileSync(a.path, "utf8");
                const FIELDS = '["weekday","era","year","month","day","dayPeriod","hour","minute",' +
                    '"second","fractionalSecondDigits","timeZoneName"]';
                for (const [from, to] of [
                    ["const props = formatRecordKeys(skeletonFormat);",
                     "const props = formatRecordKeys(skeletonFormat);\n" +
                     `const inexact = ${FIELDS}.some((f) => options[f] !== skeletonFormat[f]);`],
                    ["if (skeletonValue === requestedValue) continue;",
                     'if (skeletonValue === requestedValue && !(prop === "hour" && inexact)) continue;'],
                ]) {
                    if (src.split(from).length !== 2)
                        throw new Error(`${a.path}: the hour-length patch no longer applies`);
                    src = src.replace(from, to);
                }
                return { contents: src, loader: "js" };
            });
        },
    }, {
        name: "snapcell-virtual",
        setup(b) {
            b.onResolve({ filter: /^snapcell:/ }, (a) => ({ path: a.path, namespace: "snapcell" }));
            b.onLoad({ filter: /.*/, namespace: "snapcell" }, (a) => ({
                contents: virtual[a.path], resolveDir: here, loader: "js" }));
        },
    }],
});
