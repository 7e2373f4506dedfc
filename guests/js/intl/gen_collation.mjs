// Generates collation.json, the Collator's weight tables (committed; run by hand with a node that
// has full ICU: `node guests/js/intl/gen_collation.mjs > guests/js/intl/collation.json`). For each
// collation locale of locales.json it ranks a repertoire of code points (and the contractions the
// locale tailors, such as Spanish n + tilde) by ICU's CLDR collation at the primary, secondary
// and tertiary level, so collator.js can rebuild UCA-style sort keys without ICU. Locales with
// identical tables share one. tests/code/test_js_intl.py referees the result against node's ICU.
import { readFileSync } from "node:fs";

const config = JSON.parse(readFileSync(new URL("./locales.json", import.meta.url), "utf8"));
const RANGES = [[0x09, 0x0d], [0x20, 0x7e], [0xa0, 0x24f], [0x250, 0x2af], [0x2b0, 0x36f],
    [0x370, 0x3ff], [0x400, 0x52f], [0x530, 0x58f], [0x590, 0x5ff], [0x600, 0x6ff],
    [0x900, 0x97f], [0xe00, 0xe7f], [0x1100, 0x11ff], [0x1e00, 0x1eff], [0x2000, 0x2bff],
    [0x3000, 0x30ff], [0xfb00, 0xfb06], [0x1f300, 0x1faff]];
const isHan = (cp) => (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf);

function table(locale) {
    const col = (o) => new Intl.Collator(locale, o).compare;
    const full = col({}), base = col({ sensitivity: "base" }), accent = col({ sensitivity: "accent" });
    const upper = col({ caseFirst: "upper" });
    const punct = col({ ignorePunctuation: true });
    const entries = [];
    for (const [lo, hi] of RANGES)
        for (let cp = lo; cp <= hi; cp++) {
            const c = String.fromCodePoint(cp);
            if (!/\p{Assigned}/u.test(c) || /\p{Cs}|\p{Co}/u.test(c)) continue;
            if (c.normalize("NFD") !== c) {
                // a precomposed letter: a contraction if the locale does not treat it as its base
                const d = c.normalize("NFD");
                const b = String.fromCodePoint(d.codePointAt(0));
                if (base(c, b) !== 0 && [...d].length === 2) entries.push(d);
                continue;
            }
            entries.push(c);
        }
    const ignorable = (s) => full(s, "") === 0;
    const marks = [], bases = [];
    for (const e of entries) {
        if (ignorable(e)) continue;
        if (base("a" + e, "a") === 0) marks.push(e);
        else bases.push(e);
    }
    // primary/secondary/tertiary ranks of the base entries from one sorted walk
    bases.sort((x, y) => full(x, y) || (x < y ? -1 : x > y ? 1 : 0));
    const out = {};
    let p = 0, s = 0, t = 0;
    for (let i = 0; i < bases.length; i++) {
        const e = bases[i], prev = bases[i - 1];
        if (i > 0) {
            if (base(prev, e) !== 0) { p++; s = 0; t = 0; }
            else if (accent(prev, e) !== 0) { s++; t = 0; }
            else if (full(prev, e) !== 0) t++;
        }
        out[e] = [p + 1, s, t];
    }
    // tertiary ranks with caseFirst upper
    const byUpper = [...bases].sort((x, y) => upper(x, y) || (x < y ? -1 : 1));
    let tu = 0;
    for (let i = 0; i < byUpper.length; i++) {
        const e = byUpper[i], prev = byUpper[i - 1];
        if (i > 0) {
            if (accent(prev, e) !== 0) tu = 0;
            else if (upper(prev, e) !== 0) tu++;
        }
        out[e].push(tu);
    }
    // marks: secondary ranks by their effect on "a"
    marks.sort((x, y) => accent("a" + x, "a" + y) || full("a" + x, "a" + y) || (x < y ? -1 : 1));
    let m = 0;
    for (let i = 0; i < marks.length; i++) {
        if (i > 0 && full("a" + marks[i - 1], "a" + marks[i]) !== 0) m++;
        out[marks[i]] = [0, m + 1, 0, 0];
    }
    // punctuation and spaces, which ignorePunctuation drops
    const variable = bases.filter((e) => punct("a" + e, "a") === 0);
    // primary of Han ideographs: after everything ranked, in code point order (implicit weights)
    const hanAfter = p + 2;
    // Latin letters that compare equal at the primary level to two ASCII letters (ß = ss,
    // æ = ae): expansions
    const ascii = [..."abcdefghijklmnopqrstuvwxyz"];
    const expansions = {};
    for (const e of bases) {
        const cp = e.codePointAt(0);
        if ([...e].length !== 1 || cp < 0xc0 || cp > 0x24f || !/\p{L}/u.test(e)) continue;
        if (ascii.some((l) => base(l, e) === 0)) continue;
        for (const a of ascii)
            for (const b of ascii)
                if (!expansions[e] && base(a + b, e) === 0)
                    // "*": the letters differ from the pair at the secondary level too (æ)
                    expansions[e] = a + b + (accent(a + b, e) === 0 ? "" : "*");
    }
    // compact: the entries joined by U+0000 and their weights flat, [p, s, t, t with caseFirst
    // upper] each (p 0: a combining mark, s its secondary rank)
    const keys = Object.keys(out);
    return { keys: keys.join("\0"), weights: keys.flatMap((k) => out[k]),
        variable: variable.join("\0"), hanAfter, expansions };
}

const tables = [], byLocale = {};
for (const locale of config.collation) {
    const t = JSON.stringify(table(locale));
    let i = tables.indexOf(t);
    if (i < 0) { i = tables.length; tables.push(t); }
    byLocale[locale] = i;
}
process.stdout.write(JSON.stringify({
    generator: `node ${process.versions.node}, ICU ${process.versions.icu}, CLDR ${process.versions.cldr}`,
    locales: byLocale, tables: tables.map((t) => JSON.parse(t)),
}) + "\n");
