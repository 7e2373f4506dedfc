// Run by build.mjs in a node process without its own Intl: loads the formatjs DateTimeFormat
// polyfill (argv[2], bundled as CommonJS) and, for each locale of argv[3..], prints one JSON line
// [locale, raw, gregory]: its CLDR date data trimmed to what the guest honours (the Gregorian
// calendar, the zones of the bundled tz data; no interval formats, so formatRange is refused)
// and that data's date-time skeletons parsed as formatjs parses them on first use. Parsing the
// ~1,800 skeletons of a locale takes QuickJS about a second, so the guest gets them ready-made.
"use strict";
delete globalThis.Intl;
const [bundle, zonesFile, ...locales] = process.argv.slice(2);
require(bundle);
const DTF = Intl.DateTimeFormat;
const zones = new Set(JSON.parse(require("node:fs").readFileSync(zonesFile, "utf8")));
const add = DTF.__addLocaleData;
for (const tag of locales) {
    let raw;
    DTF.__addLocaleData = (d) => { raw = d; };
    require(`@formatjs/intl-datetimeformat/locale-data/${tag}.js`);
    DTF.__addLocaleData = add;
    const d = raw.data;
    for (const z of Object.keys(d.timeZoneName)) if (!zones.has(z)) delete d.timeZoneName[z];
    for (const cal of Object.keys(d.formats)) if (cal !== "gregory") delete d.formats[cal];
    delete d.calendarData;
    d.ca = ["gregory"];
    d.intervalFormats = { intervalFormatFallback: d.intervalFormats.intervalFormatFallback };
    d.intervalFormatTemplates = { dates: [], times: [] };
    add.call(DTF, raw);
    // compact: each parsed format as [key index, value index, ...] over two shared tables, so
    // the guest builds ~1,800 objects per locale that share their strings and shapes
    const keys = [], values = [], keyAt = new Map(), valueAt = new Map();
    const index = (table, at, x) => {
        const k = JSON.stringify(x);
        if (!at.has(k)) { at.set(k, table.length); table.push(x); }
        return at.get(k);
    };
    const records = DTF.localeData[raw.locale].formats.gregory.map((f) => {
        const out = [];
        for (const [k, v] of Object.entries(f)) {
            if (k === "rangePatterns" || k === "rangePatterns12") continue;
            if (v !== null && typeof v === "object") throw new Error(`${tag}: nested ${k}`);
            out.push(index(keys, keyAt, k), index(values, valueAt, v));
        }
        return out;
    });
    process.stdout.write(JSON.stringify([tag, JSON.stringify(raw),
        JSON.stringify([keys, values, records])]) + "\n");
}
